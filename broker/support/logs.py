"""Logging: one JSON (or text) line per event, with secrets redacted from paths."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

#: Query parameters whose values never reach a log line, by name as a server decodes it
#: (percent-decoded, any case, ``-``/``_``/``.`` ignored: ``api%5Fkey``, ``%61pi_key``,
#: ``API-KEY``).
_SECRET_NAMES = frozenset({"apikey", "key", "token", "accesstoken", "secret", "password"})
_PARAM = re.compile(r"([?&;])([^=&#;]*)=([^&#;]*)")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_KEY_SHAPED = re.compile(r"ath_([a-z0-9]{16})\.[A-Za-z0-9_-]+")
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask secret query values, Athena key secrets and JWTs anywhere in ``text``."""
    text = _PARAM.sub(_redact_param, text)
    text = _KEY_SHAPED.sub(r"ath_\1.***", text)
    return _JWT_SHAPED.sub("***jwt***", text)


def _redact_param(match: re.Match[str]) -> str:
    name = match.group(2)
    for _ in range(3):  # a name encoded twice or thrice is decoded as far as it goes
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    if _NOT_ALNUM.sub("", name.lower()) in _SECRET_NAMES:
        return f"{match.group(1)}{match.group(2)}=***"
    return match.group(0)


class JsonFormatter(logging.Formatter):
    """A JSON object per line: time, level, logger, message, the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                doc[name] = value
        if record.exc_info:
            doc["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        line = redact(super().format(record))
        return f"{line} {extras}" if extras else line


def configure_logging(fmt: str, level: str) -> None:
    """Send the broker's and aiohttp's logs to stderr in ``fmt`` (``json`` or ``text``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
