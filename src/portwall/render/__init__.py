"""Renderers: one module per backend; IR in, backend rules out, no semantics decided here."""

from portwall.render.iptables import (
    IptablesRenderer,
    ipset_restore_text,
    render_iptables,
    restore_text,
)

__all__ = ["IptablesRenderer", "ipset_restore_text", "render_iptables", "restore_text"]
