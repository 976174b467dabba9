"""``portwall agent``: enforce this host's ports, following the store's change feed.

On start it loads everything (a resync) and applies it: the backend's applier writes only
what differs from the kernel, so established connections the policy still allows are not
cut. After that each change is compiled incrementally (only what changed), rendered and
applied; the kernel is compared with the ruleset every ``resync_interval`` seconds and
repaired when it drifted. Status and the last applied revision go to ``/v2.0/agents``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from portwall import backends
from portwall.agent.metrics import Metrics
from portwall.backends.base import ApplyReport
from portwall.bulk import gc_paused
from portwall.ir.compile import PlanCompiler
from portwall.store import Record, Store, agent_record_id, codec
from portwall.store.cache import ModelCache

log = logging.getLogger("portwall.agent")


@dataclass
class AgentOptions:
    host: str | None = None  # None: every port (one-machine setups)
    backend: str | None = None
    netns: str | None = None
    resync_interval: float = 30.0
    heartbeat_interval: float = 10.0
    poll_interval: float = 0.05
    metrics_port: int | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any], **overrides: Any) -> AgentOptions:
        opts = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})
        for k, v in overrides.items():
            if v is not None:
                setattr(opts, k, v)
        return opts


class Agent:
    def __init__(self, store: Store, opts: AgentOptions,
                 wake: threading.Condition | None = None) -> None:
        self.store, self.opts, self.wake = store, opts, wake
        self.backend = backends.get(opts.backend)
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.cache: ModelCache | None = None
        self.compiler = PlanCompiler(opts.host)
        self.renderer = self.backend.renderer()
        self.applier: Any = None
        self.ruleset: Any = None
        self.plan: Any = None
        self.applied_revision = -1
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        self.last_error = ""
        self.drift_repairs = 0
        self.apply_ms = self.resync_ms = 0.0  # last change's / last full resync's duration
        self.last_report: ApplyReport | None = None  # the last apply's report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = 0.0
        self._last_resync = time.monotonic()
        self._guarded: frozenset[str] | None = None  # bridges the host-NAT guard covers

    # ---------------------------------------------------------------- the work
    def resync(self) -> None:
        """Load everything from the store and enforce it (start-up, compaction).

        The full build's objects (model, plan, renderer caches: millions at 10,000 ports)
        are then frozen out of the cyclic GC: they live as long as the agent, and otherwise
        their one-time promotion through the GC generations lands on a later change as a
        0.1-1 s collection (measured: the render p99 of bench/apply.py). The collector is
        paused over the build itself too: its objects are young until frozen, and collecting
        them between compile, render and apply cost 25-70 ms of a 1,000-port resync."""
        gc.unfreeze()  # the previous build's objects may be collected again
        t0 = time.perf_counter()
        self.cache = ModelCache(self.store)
        self.compiler = PlanCompiler(self.opts.host)
        self.renderer = self.backend.renderer()
        if self.applier is None:
            self.applier = self.backend.applier(self.opts.netns)
        self._guarded = None  # re-check the guard: another program may have moved it
        with gc_paused():  # frozen right after: a collection of them in between is waste
            self.enforce()
        self.resync_ms = (time.perf_counter() - t0) * 1000
        gc.freeze()

    def enforce(self) -> None:
        assert self.cache is not None
        t0 = time.perf_counter()
        with self.cache.lock:
            revision = self.cache.revision
            self.plan = self.compiler.compile(self.cache.model)
        self.ruleset = self.renderer.render(self.plan)
        # The guard first: when it writes (iptables-nft's nat table bumps the nf_tables
        # generation), the apply that follows sees it, and the applier's knowledge of the
        # kernel stays valid for the next change (guarded after the apply, the first change
        # after every resync re-read the whole table: ~17 ms at 1,000 ports). A failing
        # guard still lets the filter be enforced, then fails the step.
        guard_error: Exception | None = None
        try:
            self._guard_host_nat()
        except Exception as e:  # re-raised below, after the apply
            guard_error = e
        report = self.last_report = self.applier.apply(self.ruleset, self.plan)
        if guard_error is not None:
            raise guard_error
        self.apply_ms = (time.perf_counter() - t0) * 1000
        self.metrics.apply_seconds.observe(self.apply_ms / 1000)
        counts = self.ruleset.counts()
        self.metrics.rules.set(counts.get("rules", counts.get("flows", 0)))
        self.metrics.set_elements.set(counts.get("set_elements", 0))
        self.metrics.ports.set(len(self.plan.ports))
        if not report.noop:
            self.metrics.applies.inc()
        self.applied_revision = revision
        self.metrics.applied_revision.set(revision)
        self.last_error = ""

    def _guard_host_nat(self) -> None:
        """Seed 003: keep foreign host NAT (docker's MASQUERADE) off bridged tenant traffic.
        Checked when the host's bridges change and on every resync / drift check (one
        ``iptables-save -t nat``), not on every change, so a change costs no extra read."""
        from portwall.lab.enforce import guard_host_nat

        assert self.plan is not None
        bridges = frozenset({p.bridge for p in self.plan.ports} | {
            i.bridge for r in self.plan.routers.values() for i in r.all_interfaces()})
        if bridges != self._guarded:
            for line in guard_host_nat(self.opts.netns, self.plan):
                log.info("%s: %s", self.opts.host, line)
            self._guarded = bridges

    def step(self) -> bool:
        """Follow the feed once; True when something was enforced."""
        self.metrics.stale.set(1 if self.stale() else 0)
        if self.cache is None:
            self.resync()
            self.report(force=True)
            return True
        changed = self.cache.sync()
        relevant = [k for k in changed if k[0] in codec.KINDS]
        if relevant:
            self.enforce()
        elif changed:
            self.applied_revision = self.cache.revision
        if relevant:
            self.report(force=True)
        return bool(relevant)

    def repair_drift(self) -> list[str]:
        """Compare the kernel with the last ruleset (read afresh) and re-apply on drift."""
        if self.ruleset is None:
            return []
        with self.backend.applier(self.opts.netns) as fresh:
            drift = fresh.drift(self.ruleset)
            if drift:
                log.warning("drift on %s: %s", self.opts.host, "; ".join(drift[:5]))
                fresh.apply(self.ruleset, self.plan)
                self.drift_repairs += 1
                self.metrics.drift_repairs.inc()
        self._guarded = None
        self._guard_host_nat()
        # The cached applier's view of the kernel is stale now: start a new one.
        self.applier.close()
        self.applier = self.backend.applier(self.opts.netns)
        return drift

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        counts = self.ruleset.counts() if self.ruleset is not None else {}
        return {"host": self.opts.host or "", "heartbeat": time.time(),
                "started_at": self.started_at, "backend": self.backend.name,
                "applied_revision": self.applied_revision,
                "ports": len(self.plan.ports) if self.plan is not None else 0,
                "rules": counts.get("rules", 0), "set_elements": counts.get("set_elements", 0),
                "drift_repairs": self.drift_repairs, "last_error": self.last_error,
                "netns": self.opts.netns or "", "stale": self.stale(),
                "apply_ms": round(self.apply_ms, 2), "resync_ms": round(self.resync_ms, 1),
                "store": self.store.url.split("://", 1)[0] if hasattr(self.store, "url")
                else ""}

    def stale(self) -> bool:
        """Fail static: the store is out of reach, so the kernel keeps the last state."""
        return bool(getattr(self.store, "stale", False))

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.opts.heartbeat_interval:
            return
        self._last_report = now
        host = self.opts.host or "all"
        body = self.status()
        try:
            reporter = getattr(self.store, "report", None)
            if reporter is not None:
                reporter(host, body)
            else:
                with self.store.transaction() as txn:
                    txn.put(Record("agent", agent_record_id(host), "admin", {**body,
                                                                            "host": host}))
        except Exception as e:  # status is best effort: enforcement goes on
            log.warning("status report failed: %s", e)

    # ----------------------------------------------------------------- loop
    def serve_metrics(self) -> int | None:
        """Start the /metrics endpoint (once) when a metrics port is configured."""
        if self.opts.metrics_port is not None and self.metrics_port is None:
            self.metrics_port = self.metrics.serve(self.opts.metrics_port)
        return self.metrics_port

    def run(self) -> None:
        self.serve_metrics()
        while not self._stop.is_set():
            try:
                did = self.step()
                if time.monotonic() - self._last_resync >= self.opts.resync_interval:
                    self._last_resync = time.monotonic()
                    self.repair_drift()
                self.report()
            except Exception as e:
                # Fail static: keep enforcing the last state, say so, retry.
                stale = self.stale()
                self.metrics.stale.set(1 if stale else 0)
                self.metrics.errors.inc()
                error = f"{type(e).__name__}: {e}"
                if not stale:
                    log.exception("agent step failed")
                elif error != self.last_error:
                    log.warning("%s (kernel state kept)", error)
                self.last_error = error
                did = False
                self._stop.wait(1.0)
            if not did:
                self._wait()

    def _wait(self) -> None:
        waiter = getattr(self.store, "wait", None)
        if callable(waiter) and self.cache is not None:  # a watched store: woken on news
            waiter(self.cache.revision, max(self.opts.poll_interval, 0.5))
            return
        if self.wake is not None:
            with self.wake:
                self.wake.wait(timeout=max(self.opts.poll_interval, 0.5))
        else:
            self._stop.wait(self.opts.poll_interval)

    def start_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="portwall-agent", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self.wake is not None:
            with self.wake:
                self.wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.applier is not None:
            self.applier.close()
        self.metrics.close()
