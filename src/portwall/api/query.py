"""List queries as Neutron serves them: filters, ``fields``, sorting, limit/marker pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from portwall.api.errors import ApiError

_CONTROL = {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse"}


def _match(value: Any, wanted: list[str]) -> bool:
    if isinstance(value, bool):
        return str(value).lower() in [w.lower() for w in wanted]
    if isinstance(value, list):
        # fixed_ips=ip_address=10.0.0.5 / subnet_id=...; security_groups=<id>
        for w in wanted:
            if "=" in w:
                k, v = w.split("=", 1)
                if any(isinstance(x, dict) and str(x.get(k)) == v for x in value):
                    return True
            elif w in [str(x) for x in value]:
                return True
        return False
    return ("" if value is None else str(value)) in wanted


def _sort_key(k: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    return lambda x: (x.get(k) is not None, str(x.get(k)))


def apply(request: Request, collection: str, items: Sequence[dict[str, Any]]
          ) -> dict[str, Any]:
    """The response body of ``GET /v2.0/<collection>`` for ``items`` (already visible)."""
    params = request.query_params
    filters: dict[str, list[str]] = {}
    for key in params:
        if key not in _CONTROL:
            filters[key] = params.getlist(key)
    out = [d for d in items if all(_match(d.get(k), v) for k, v in filters.items())] \
        if filters else list(items)
    keys = params.getlist("sort_key")
    dirs = params.getlist("sort_dir")
    for i in range(len(keys) - 1, -1, -1):
        k = keys[i]
        d = dirs[i] if i < len(dirs) else "asc"
        if d not in ("asc", "desc"):
            raise ApiError(400, f"Invalid sort_dir '{d}': use asc or desc")
        if items and k not in items[0]:
            raise ApiError(400, f"Invalid sort_key '{k}'")
        out.sort(key=_sort_key(k), reverse=d == "desc")
    limit_text = params.get("limit")
    marker = params.get("marker")
    links: list[dict[str, str]] = []
    if marker:
        idx = next((i for i, d in enumerate(out) if d.get("id") == marker), None)
        if idx is None:
            raise ApiError(404, f"Marker {marker} could not be found.", "NotFound")
        out = out[idx + 1:]
    if limit_text:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ApiError(400, f"Invalid limit '{limit_text}'") from None
        if limit < 0:
            raise ApiError(400, f"Invalid limit '{limit_text}': must be >= 0")
        if 0 < limit < len(out):
            out = out[:limit]
            q = [(k, v) for k, v in params.multi_items() if k != "marker"]
            q.append(("marker", out[-1]["id"]))
            base = str(request.url).split("?", 1)[0]
            links.append({"rel": "next", "href": f"{base}?{urlencode(q)}"})
    fields = params.getlist("fields")
    if fields:
        out = [{k: d[k] for k in fields if k in d} for d in out]
    body: dict[str, Any] = {collection: out}
    if links:
        body[f"{collection}_links"] = links
    return body


def pick_fields(request: Request, item: dict[str, Any]) -> dict[str, Any]:
    fields = request.query_params.getlist("fields")
    return {k: item[k] for k in fields if k in item} if fields else item
