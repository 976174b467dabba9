"""Typed model errors.

Every validation failure is one of these, naming the field and the reason, so the CLI can
print it next to a file location and the API can map it to Neutron's error shape
(``{"NeutronError": {"type", "message", "detail"}}``) with the right HTTP status.
"""

from __future__ import annotations


class PortwallError(Exception):
    """Base of every error portwall reports to a user."""

    status: int = 500
    #: Neutron's exception class name, used as ``NeutronError.type``.
    neutron_type: str = "NeutronException"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        resource: str | None = None,
        neutron_type: str | None = None,
        ref: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.resource = resource
        if neutron_type:
            self.neutron_type = neutron_type
        #: Id of another resource the error is about (the rule a duplicate repeats, ...).
        self.ref = ref

    def __str__(self) -> str:
        where = ".".join(p for p in (self.resource, self.field) if p)
        return f"{where}: {self.message}" if where else self.message

    def to_neutron(self) -> dict[str, dict[str, str]]:
        """The body Neutron's API returns for this error."""
        return {"NeutronError": {"type": self.neutron_type, "message": str(self), "detail": ""}}


class InvalidInput(PortwallError):
    """400: the request (or file) is malformed or violates a rule of the API."""

    status = 400
    neutron_type = "InvalidInput"


class NotFound(PortwallError):
    """404: a referenced resource does not exist."""

    status = 404
    neutron_type = "NotFound"


class Conflict(PortwallError):
    """409: the request conflicts with the current state (duplicate, in use, ...)."""

    status = 409
    neutron_type = "Conflict"
