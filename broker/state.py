"""Typed keys of application and request state."""

from __future__ import annotations

from aiohttp import web

from broker.cube.access import CubeAccess
from broker.cube.client import CubeClient
from broker.cube.meta_cache import MetaCache
from broker.http.bodies import BodyBudget
from broker.http.context import RequestContext
from broker.http.guard import BruteForceGuard
from broker.http.listeners import Listeners
from broker.keys.admin import KeyAdmin
from broker.keys.cache import KeyCache
from broker.keys.policy import KeyPolicy
from broker.keys.usage import UsageRecorder
from broker.keys.verify import KeyVerifier
from broker.models import RegistryWatcher
from broker.settings import Settings
from broker.store import Store
from broker.support.metrics import Metrics
from broker.support.request_ids import RequestIds
from broker.tokens.issue import TokenService
from broker.tokens.verify import TokenVerifier

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
META_CACHE = web.AppKey("meta_cache", MetaCache)
BODIES = web.AppKey("bodies", BodyBudget)
LISTENERS = web.AppKey("listeners", Listeners)
REQUEST_IDS = web.AppKey("request_ids", RequestIds)

#: What the broker knows of the request (its ID, listener, client address, key, model
#: and rate limit): set by the request context before any handler runs.
CONTEXT = web.RequestKey("context", RequestContext)
