"""The application factory: the only place that wires the broker together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from broker.cube.access import CubeAccess
from broker.cube.client import CubeClient, new_upstream
from broker.cube.meta_cache import MetaCache
from broker.http.answer import every_route_answered
from broker.http.bodies import MAX_BODY, BodyBudget
from broker.http.guard import BruteForceGuard
from broker.http.listeners import Listeners
from broker.keys.admin import KeyAdmin
from broker.keys.cache import KeyCache
from broker.keys.policy import KeyPolicy
from broker.keys.retention import purge_audit
from broker.keys.usage import UsageRecorder
from broker.keys.verify import KeyVerifier
from broker.models import RegistryWatcher, load_registry
from broker.routes import setup_routes
from broker.settings import Settings
from broker.state import (
    BODIES,
    CUBE,
    CUBE_ACCESS,
    GUARD,
    KEY_ADMIN,
    KEY_CACHE,
    KEY_POLICY,
    KEY_VERIFIER,
    LISTENERS,
    META_CACHE,
    METRICS,
    REGISTRY,
    REQUEST_IDS,
    SETTINGS,
    STORE,
    TOKEN_VERIFIER,
    TOKENS,
    USAGE,
)
from broker.store import open_store
from broker.support.metrics import Metrics
from broker.support.request_ids import RequestIds
from broker.tokens.issue import TokenConfig, TokenService
from broker.tokens.signing import SigningSecrets
from broker.tokens.verify import TokenVerifier


def create_app(settings: Settings) -> web.Application:
    """Build the app. Loads the model registry now, so a bad registry fails here with a
    ``ConfigError``; the store and background tasks start with the app."""
    app = web.Application(client_max_size=MAX_BODY)
    app.on_startup.insert(0, every_route_answered)  # before any resource starts
    # The broker writes its own redacted access line; aiohttp's would log raw query
    # strings (and with them any ?api_key=), whoever runs the app.
    logging.getLogger("aiohttp.access").disabled = True
    app[SETTINGS] = settings
    metrics = app[METRICS] = Metrics()
    app[BODIES] = BodyBudget(settings.body_memory, settings.body_timeout)
    app[LISTENERS] = Listeners()
    app[REQUEST_IDS] = RequestIds()
    registry = app[REGISTRY] = RegistryWatcher(load_registry(settings.models_path))
    metrics.follow_reloads(registry)
    app[META_CACHE] = MetaCache(registry, metrics)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(_upstream)
    app.cleanup_ctx.append(_key_change_feed)
    app.cleanup_ctx.append(_usage_flushing)
    app.cleanup_ctx.append(_registry_polling)
    app.cleanup_ctx.append(_audit_retention)
    setup_routes(app)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(settings.store_url, redis_options=settings.redis_options())
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    """The domain services over the store; they hold no resource of their own."""
    wire_services(app)
    yield


def wire_services(app: web.Application) -> None:
    """Build the key, token and proxy services on ``app[STORE]``, each from its parts."""
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    cache = app[KEY_CACHE] = KeyCache(store)
    metrics.follow_key_feed(cache)
    app[KEY_ADMIN] = KeyAdmin(store, cache)
    usage = app[USAGE] = UsageRecorder(store)
    policy = app[KEY_POLICY] = KeyPolicy(store, usage, metrics)
    keys = app[KEY_VERIFIER] = KeyVerifier(cache, policy)
    app[GUARD] = BruteForceGuard(store, settings.brute_force_limit)
    secrets = SigningSecrets(settings.api_secret, settings.api_secrets)
    config = TokenConfig(secrets, settings.token_ttl, settings.token_min_remaining)
    tokens = app[TOKENS] = TokenService(store, config, metrics)
    token_verifier = app[TOKEN_VERIFIER] = TokenVerifier(secrets, store, cache)
    app[CUBE_ACCESS] = CubeAccess(keys, tokens, token_verifier, app[REGISTRY], policy)


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstream = new_upstream(settings)
    app[CUBE] = CubeClient(upstream, app[METRICS], settings.upstream_timeout)
    try:
        yield
    finally:
        await upstream.close()


async def _key_change_feed(app: web.Application) -> AsyncIterator[None]:
    async with _background(app[KEY_CACHE].follow_changes()):
        yield


async def _usage_flushing(app: web.Application) -> AsyncIterator[None]:
    async with _background(app[USAGE].run()):
        yield


async def _registry_polling(app: web.Application) -> AsyncIterator[None]:
    async with _background(app[REGISTRY].run(app[SETTINGS].models_poll_interval)):
        yield


async def _audit_retention(app: web.Application) -> AsyncIterator[None]:
    async with _background(purge_audit(app[STORE], app[SETTINGS].audit_retention_days)):
        yield


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coro`` as a task for the life of the block; cancel and await it after."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
