"""The internal callback Cube's ``cube.js`` calls (SPEC §7): which model a call is about,
its files and its data sources' driver configs with secrets resolved at call time.

Everything is answered from the registry snapshot, never from the disk, except a
``password_file``, which :meth:`DataSource.resolve` reads on every call so a rotated
secret is served without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from broker.errors import BrokerError, NotFound
from broker.models import CredentialError, Registry

log = logging.getLogger("broker.callback")

#: The header Cube presents ``BROKER_CALLBACK_SECRET`` in.
CALLBACK_SECRET_HEADER = "X-Broker-Callback-Secret"  # noqa: S105 - a header name


class CredentialsUnavailable(BrokerError):
    """A data source's secret cannot be resolved now: a deployment problem, not a bug.

    The caller learns only that; the reason (variable or file name, never a value) goes
    to the broker's log.
    """

    default_message = (
        "The data source's credentials cannot be resolved now; the broker's log says why."
    )


def driver_config(
    registry: Registry, asset_id: str, data_source: str, environ: Mapping[str, str]
) -> dict[str, object]:
    """The driver config of the model's data source, its password resolved from
    ``environ`` (or its ``password_file``) now.

    Raises :class:`NotFound` for an unknown model or data source and
    :class:`CredentialsUnavailable` when the secret cannot be resolved.
    """
    model = registry.require(asset_id)
    source = model.data_source(data_source)
    if source is None:
        raise NotFound("The semantic model has no such data source.")
    try:
        return source.resolve(environ)
    except CredentialError as exc:
        log.error("credentials unavailable: %s", exc)
        raise CredentialsUnavailable() from None
