"""Blocking HTTP to the server processes of the harness (the broker, Cube, the bench's
upstreams). Blocking is harmless where it is used: the servers are other processes."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: object = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request, ``body`` (when not ``None``) sent as JSON; the status and raw answer.
    ``url`` is sent as it is (path and query already percent-encoded). Raises ``OSError``
    or ``http.client.HTTPException`` when no answer comes."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(
            method, target or "/", body=payload, headers=all_headers | (headers or {})
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def request_json(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """:func:`request`, the answer parsed as JSON (an empty answer is ``None``)."""
    status, raw = request(method, url, headers=headers, body=body)
    return status, json.loads(raw or b"null")


def status_of(url: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or ``None`` while nothing answers there."""
    try:
        return request("GET", url, timeout=timeout)[0]
    except (OSError, http.client.HTTPException):
        return None
