"""The three listeners (SPEC §2) and which paths each serves.

One process serves one app on three sockets (one aiohttp runner, three sites): the public
listener for dashboards and back ends, the admin listener for operators, the internal
listener for Cube's callback. One app rather than three, so every resource, service and
background task exists once and the test client can drive the whole surface; what
separates the listeners is :class:`Listeners`, which tells from the local port a
connection reached which listener it came in on, and :func:`serves`, which says what
that listener answers. A path asked on a listener that does not serve it is 404, exactly
like an unknown path.
"""

from __future__ import annotations

from aiohttp import web

PUBLIC, ADMIN, INTERNAL = "public", "admin", "internal"
#: The app served outside ``cube-broker serve`` (the test client): it answers every path.
ANYWHERE = "any"
#: A connection that reached none of the configured ports: it is served nothing.
NOWHERE = "nowhere"

#: Paths each listener serves: exact paths, and prefixes ending in ``/``.
_SURFACES: dict[str, tuple[str, ...]] = {
    PUBLIC: ("/api/", "/cubejs-api/", "/auth/", "/healthz", "/readyz", "/openapi.json"),
    ADMIN: ("/admin/", "/metrics", "/healthz", "/readyz", "/openapi.json"),
    INTERNAL: ("/internal/", "/healthz"),
}
_EXACT = {
    name: frozenset(p for p in paths if not p.endswith("/")) for name, paths in _SURFACES.items()
}
_PREFIXES = {name: tuple(p for p in paths if p.endswith("/")) for name, paths in _SURFACES.items()}


def serves(listener: str, path: str) -> bool:
    """Whether ``listener`` answers ``path`` (:data:`ANYWHERE` answers every path)."""
    if listener == ANYWHERE:
        return True
    return path in _EXACT.get(listener, ()) or path.startswith(_PREFIXES.get(listener, ("\0",)))


class Listeners:
    """Which listener a connection came in on, by the local port it reached (filled by
    :func:`broker.http.server.start_listeners` once the sockets are bound, so a port 0
    setting works too)."""

    def __init__(self) -> None:
        self._by_port: dict[int, str] = {}

    def bind(self, port: int, listener: str) -> None:
        self._by_port[port] = listener

    def of(self, request: web.Request) -> str:
        """The request's listener; :data:`ANYWHERE` when none is bound (the test client)."""
        if not self._by_port:
            return ANYWHERE
        port = getattr(request.protocol, "local_port", None)  # the broker's handler's
        if port is not None:
            return self._by_port.get(port, NOWHERE)
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if not sockname:
            return NOWHERE
        return self._by_port.get(sockname[1], NOWHERE)
