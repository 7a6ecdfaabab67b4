"""cube-token-broker: a sidecar reverse proxy in front of a Cube semantic-layer server."""

from __future__ import annotations

__version__ = "0.1.0"
