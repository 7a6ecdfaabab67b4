"""The secrets and settings of the broker under test (the app of the ``client`` fixture,
the CLI and the end-to-end broker process)."""

from __future__ import annotations

from broker.settings import Settings
from tests.harness import DATA

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"
API_SECRET = "test-api-secret-that-is-long-enough-0123456789"
CALLBACK_SECRET = "callback-secret-for-tests-0123"


def make_settings(**overrides: str) -> Settings:
    """Settings of a broker with the test secrets and the sample registry, ``overrides``
    (environment variable names) on top; the store is the default unless overridden. Cube
    is a closed port unless overridden, so no Cube (or anything else) that happens to run
    on the default 127.0.0.1:4000 answers a test."""
    env = {
        "BROKER_CUBE_URL": "http://127.0.0.1:9",
        "CUBEJS_API_SECRET": API_SECRET,
        "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
        "ATHENA_KEY_12": ADMIN_KEY,
        "BROKER_LOG_FORMAT": "json",
        "BROKER_MODELS": str(DATA / "models.yaml"),
    }
    env.update(overrides)
    return Settings.load(env)
