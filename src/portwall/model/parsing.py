"""Request bodies -> resources, with Neutron's API-layer errors.

pydantic checks the shape; this module turns its first error into the :class:`InvalidInput`
Neutron's API layer would return (same message style, same exception name), naming the
field as a path (``fixed_ips[0].ip_address``) that a topology file can be located by.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from portwall.model.errors import InvalidInput

R = TypeVar("R", bound=BaseModel)


def _field_path(loc: Iterable[int | str]) -> str:
    """pydantic's location (``("fixed_ips", 0, "ip_address")``) as ``fixed_ips[0].ip_address``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(cls: type[R], data: Mapping[str, Any], resource: str) -> R:
    """Validate ``data`` as ``cls``; pydantic's errors become :class:`InvalidInput`
    naming the first offending field.

    The Neutron type is what Neutron's API layer would report: ``HTTPBadRequest`` for
    unknown or missing attributes, the exception named by a validator's
    ``PydanticCustomError`` type (CamelCase), else ``InvalidInput``."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as e:
        err = e.errors()[0]
        field = _field_path(err["loc"]) or None
        msg, kind = err["msg"], err["type"]
        neutron_type = kind if kind[:1].isupper() else None
        if kind == "extra_forbidden":
            msg, neutron_type = f"Unrecognized attribute(s) '{field}'", "HTTPBadRequest"
        elif kind == "missing":
            msg = f"Failed to parse request. Required attribute '{field}' not specified"
            neutron_type = "HTTPBadRequest"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif neutron_type is None:
            got = repr(err["input"])
            got = got if len(got) <= 60 else got[:57] + "..."
            msg = f"Invalid input for {field}: {msg[:1].lower()}{msg[1:]} (got {got})"
        raise InvalidInput(msg, field=field, resource=resource,
                           neutron_type=neutron_type) from None


def required(field: str, resource: str) -> InvalidInput:
    """Neutron's error for a required attribute left out of a request."""
    return InvalidInput(f"Failed to parse request. Required attribute '{field}' not specified",
                        field=field, resource=resource, neutron_type="HTTPBadRequest")
