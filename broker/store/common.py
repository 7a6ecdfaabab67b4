"""What both backends share so they behave identically: how records and tokens become
text, and the rule every ``update_key`` applies to the result of ``mutate``."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

from broker.keys.record import KeyRecord
from broker.store.base import MintedToken, RateLimitState


def encode_record(record: KeyRecord) -> str:
    return json.dumps(record.to_doc(), separators=(",", ":"), sort_keys=True)


def decode_record(text: str) -> KeyRecord:
    doc: dict[str, Any] = json.loads(text)
    return KeyRecord.from_doc(doc)


def encode_token(token: MintedToken) -> str:
    return json.dumps(dataclasses.asdict(token), separators=(",", ":"), sort_keys=True)


def decode_token(text: str) -> MintedToken:
    doc: dict[str, Any] = json.loads(text)
    return MintedToken(
        token=doc["token"],
        jti=doc["jti"],
        expires_at=int(doc["expires_at"]),
        public_id=doc["public_id"],
    )


def next_version(current: KeyRecord, mutate: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
    """The record ``update_key`` stores: ``mutate(current)`` with ``version`` one higher.

    Raises ``ValueError`` when ``mutate`` changed ``id``, ``public_id`` or ``created_at``:
    the indexes (and the listing order) are built on them. Exceptions from ``mutate``
    propagate unchanged.
    """
    new = mutate(current)
    for name in ("id", "public_id", "created_at"):
        if getattr(new, name) != getattr(current, name):
            raise ValueError(f"update_key must not change {name}")
    return dataclasses.replace(new, version=current.version + 1)


def gcra(now: float, tat: float | None, limit: int, period: float) -> tuple[float, float]:
    """One step of the generic cell rate algorithm: ``limit`` requests per ``period``
    seconds, bursts of up to ``limit``. ``tat`` is the bucket's theoretical arrival time.
    Returns (seconds to wait, new tat): ``(0.0, new tat)`` when allowed. The Redis
    backend runs the same arithmetic in Lua."""
    interval = period / limit
    tat = now if tat is None or tat < now else tat
    allow_at = tat + interval - period
    if allow_at > now:
        return allow_at - now, tat
    return 0.0, tat + interval


#: Clock slack (seconds) in :func:`limit_state`, so float rounding (and Redis storing the
#: TAT to the microsecond) never costs a whole request or second.
_SLACK = 1e-3


def limit_state(now: float, tat: float, wait: float, limit: int, period: float) -> RateLimitState:
    """What a bucket whose theoretical arrival time is ``tat`` (after the request; ``now``
    for an empty bucket) reports: requests that could be made at once now, and whole
    seconds until it is full again. The Redis backend runs the same arithmetic in Lua."""
    interval = period / limit
    tat = max(tat, now)
    remaining = (
        0 if wait > 0 else min(limit, max(0, int((now + period - tat + _SLACK) // interval)))
    )
    reset = max(0, math.ceil(tat - now - _SLACK))
    return RateLimitState(limit=limit, wait=wait, remaining=remaining, reset=reset)
