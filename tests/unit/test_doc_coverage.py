"""docs/topology.md documents every key the loader accepts.

The accepted keys are introspected (``portwall.topology.loader.accepted_fields``: the model's
pydantic classes, the loader's extensions and the lab's field lists), so a field added to
the loader or the model without a line in the reference fails this test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portwall.topology.loader import SECTIONS, accepted_fields

DOC = Path(__file__).resolve().parents[2] / "docs" / "topology.md"


def chunk_for(section: str, text: str) -> str:
    """The part of the reference that documents ``section``: from its heading to the next
    heading of the same or a higher level."""
    if section == "top":
        start = text.index("## Top level")
    elif section.startswith("lab"):
        start = text.index("## `lab:`")
    else:
        m = re.search(rf"^###[^\n]*`{re.escape(section)}`", text, re.M)
        assert m, f"docs/topology.md has no '### `{section}`' heading"
        start = m.start()
    level = text[start:].split(" ", 1)[0]
    body = text.index("\n", start) + 1
    nxt = re.search(rf"^#{{1,{len(level)}}} ", text[body:], re.M)
    return text[start:body + nxt.start()] if nxt else text[start:]


def undocumented(fields: dict[str, list[str]], text: str) -> list[str]:
    missing = []
    for section, keys in fields.items():
        body = chunk_for(section, text)
        missing += [f"{section}: {k}" for k in keys if f"`{k}`" not in body]
    return missing


def test_every_accepted_field_is_documented() -> None:
    missing = undocumented(accepted_fields(), DOC.read_text())
    assert not missing, "document these in docs/topology.md:\n  " + "\n  ".join(missing)


def test_every_section_is_covered() -> None:
    fields = accepted_fields()
    assert set(SECTIONS) - {"project", "description"} <= set(fields) | {"lab"}
    assert {"lab", "lab.vms.<vm>", "lab.expect[]"} <= set(fields)
    # the introspection reaches nested and extension fields, not only top-level names
    assert "fixed_ips[].ip_address" in fields["ports"]
    assert "allowed_address_pairs[].mac_address" in fields["ports"]
    assert "external_gateway_info.enable_snat" in fields["routers"]
    assert {"subnets"} <= set(fields["networks"]) and "interfaces" in fields["routers"]
    assert "routes[].via" in fields["lab.vms.<vm>"]


def test_the_check_catches_a_new_field() -> None:
    fields = accepted_fields()
    fields["ports"] = [*fields["ports"], "qos_policy_id"]
    assert undocumented(fields, DOC.read_text()) == ["ports: qos_policy_id"]


@pytest.mark.parametrize("doc", ["topology.md", "cli.md", "audit.md", "operations.md",
                                 "neutron-differences.md"])
def test_reference_pages_exist(doc: str) -> None:
    assert (DOC.parent / doc).stat().st_size > 2000


def test_audit_reference_has_every_code() -> None:
    import portwall.analyze.audit as audit

    codes = sorted(set(re.findall(r"PW\d{3}", audit.__doc__ or "")))
    text = (DOC.parent / "audit.md").read_text()
    assert codes and all(f"### {c}:" in text for c in codes)
