"""The agent's Prometheus metrics (one registry per agent, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.apply_seconds = Histogram(
            "portwall_agent_apply_seconds", "Compile + render + apply of one change",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.rules = Gauge("portwall_agent_rules", "Rules the backend enforces", registry=r)
        self.set_elements = Gauge("portwall_agent_set_elements",
                                  "Address-set elements the backend enforces", registry=r)
        self.ports = Gauge("portwall_agent_ports", "Ports of this host enforced", registry=r)
        self.applied_revision = Gauge("portwall_agent_applied_revision",
                                      "Store revision last enforced", registry=r)
        self.drift_repairs = Counter("portwall_agent_drift_repairs",
                                     "Times the kernel had drifted and was repaired",
                                     registry=r)
        self.errors = Counter("portwall_agent_errors", "Failed applies or feed reads",
                              registry=r)
        self.stale = Gauge("portwall_agent_stale",
                           "1 while the store is unreachable (enforcing the last state)",
                           registry=r)
        self.applies = Counter("portwall_agent_applies", "Applies that wrote something",
                               registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics; returns the port (0 picks a free one)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self.server = server
        return int(server.server_port)

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
