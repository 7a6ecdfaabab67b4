"""Rights: which key may do what on which model (SPEC §4)."""

from __future__ import annotations

from collections.abc import Iterable

TOKEN_CREATE = "semantic_model.token.create"  # noqa: S105 - a right, not a password
META_READ = "semantic_model.meta.read"
QUERY_EXECUTE = "semantic_model.query.execute"
ALL_MODEL_RIGHTS = "semantic_model.*"
KNOWN = frozenset({TOKEN_CREATE, META_READ, QUERY_EXECUTE})


def grants(rights: Iterable[str], needed: str, asset_id: str | None) -> bool:
    """Whether ``rights`` grant ``needed`` on ``asset_id``.

    A right is unscoped (every model) or scoped as ``<right>:<asset_id>``;
    ``semantic_model.*`` (scoped or not) stands for the three model rights. Rights the
    broker does not know are kept on the record and grant nothing. ``asset_id=None`` asks
    for an unscoped grant.
    """
    for right in rights:
        name, _, scope = right.partition(":")
        if scope and scope != asset_id:
            continue
        if name == needed or (name == ALL_MODEL_RIGHTS and needed in KNOWN):
            return True
    return False
