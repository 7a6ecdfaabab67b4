"""``/metrics`` (SPEC §9): the metrics an operator alerts on, read through ``/metrics`` of an
app under test after the requests that move them."""

from __future__ import annotations

from broker import __version__
from broker.app import create_app
from broker.settings import Settings
from tests.helpers import AiohttpClient, Client, sample, samples, scrape


async def test_standard_collectors_and_build_info(client: Client) -> None:
    text = await scrape(client)
    assert sample(text, "broker_build_info", version=__version__) == 1
    resident = sample(text, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert samples(text, "process_cpu_seconds_total")
    assert samples(text, "python_info")
    assert samples(text, "python_gc_collections_total")


async def test_two_apps_keep_their_own_registries(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    """Each app has its collectors on its own registry: a second app in the same process
    registers them again without a clash, and counts apart."""
    a: Client = await aiohttp_client(create_app(settings))
    b: Client = await aiohttp_client(create_app(settings))
    await a.get("/healthz")
    count = {"listener": "any", "route": "/healthz", "method": "GET", "status": "200"}
    assert sample(await scrape(a), "broker_requests_total", **count) == 1
    assert sample(await scrape(b), "broker_requests_total", **count) is None
