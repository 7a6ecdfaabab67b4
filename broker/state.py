"""Typed keys of application and request state."""

from __future__ import annotations

from aiohttp import web

from broker.guard import BruteForceGuard
from broker.key_admin import KeyAdmin
from broker.key_auth import KeyVerifier
from broker.key_cache import KeyCache
from broker.key_policy import KeyPolicy
from broker.metrics import Metrics
from broker.models import RegistryWatcher
from broker.proxy import CubeAccess
from broker.settings import Settings
from broker.store import Store
from broker.token_auth import TokenVerifier
from broker.tokens import TokenService
from broker.upstream import CubeClient
from broker.usage import UsageRecorder

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", RegistryWatcher)
STORE = web.AppKey("store", Store)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
KEY_ADMIN = web.AppKey("key_admin", KeyAdmin)
KEY_VERIFIER = web.AppKey("key_verifier", KeyVerifier)
TOKENS = web.AppKey("tokens", TokenService)
USAGE = web.AppKey("usage", UsageRecorder)
KEY_POLICY = web.AppKey("key_policy", KeyPolicy)
GUARD = web.AppKey("guard", BruteForceGuard)
TOKEN_VERIFIER = web.AppKey("token_verifier", TokenVerifier)
CUBE = web.AppKey("cube", CubeClient)
CUBE_ACCESS = web.AppKey("cube_access", CubeAccess)

REQUEST_ID = web.RequestKey("request_id", str)
#: The client's address (the socket peer, or from X-Forwarded-For behind a trusted proxy).
CLIENT_IP = web.RequestKey("client_ip", str)
#: ``public_id`` of the key that authenticated the request, for the access log.
KEY_PUBLIC_ID = web.RequestKey("key_public_id", str)
#: Asset ID of the semantic model the request is about, for the access log.
MODEL_ID = web.RequestKey("model_id", str)
