"""W3C Trace Context (SPEC §8): the broker does not trace, it hands ``traceparent`` and
``tracestate`` on to Cube unchanged and names the trace in its access log."""

from __future__ import annotations

import re
from collections.abc import Mapping

TRACE_HEADERS = ("traceparent", "tracestate")

_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-[0-9a-f]{2}(?P<rest>-.*)?"
)
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16


def trace_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    """The caller's trace headers, unchanged, for the broker's own calls to Cube."""
    return {name: incoming[name] for name in TRACE_HEADERS if name in incoming}


def trace_id(traceparent: str | None) -> str | None:
    """The trace-id of a valid ``traceparent``, else ``None``. Version ``00`` is exactly
    its four fields; a later version may add fields after them (Trace Context §3.2.4);
    ``ff``, an all-zero trace-id or parent-id are invalid."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if match is None or match["version"] == "ff":
        return None
    if match["version"] == "00" and match["rest"] is not None:
        return None
    if match["trace_id"] == _ZERO_TRACE or match["parent_id"] == _ZERO_PARENT:
        return None
    return match["trace_id"]
