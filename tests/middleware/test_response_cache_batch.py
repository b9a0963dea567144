"""Concurrent requests for one page share its read, each from a read sent after it arrived."""

from __future__ import annotations

import asyncio

import pytest

from cachekit import Cache
from cachekit.exceptions import BackendError
from cachekit.middleware.batch import ReadBatches
from tests.support.response_cache_apps import Shop, build_app, client_for


class _Reads:
    """A fetch that answers with its own sequence number when released."""

    def __init__(self) -> None:
        self.sent = 0
        self.gates: list[asyncio.Event] = []
        self.fail = False

    async def fetch(self) -> int:
        self.sent += 1
        number = self.sent
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail:
            raise BackendError("down")
        return number


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_arriving_during_a_read_share_the_next_one() -> None:
    batches: ReadBatches[int] = ReadBatches()
    reads = _Reads()
    first = asyncio.create_task(batches.read("k", reads.fetch))
    await _settle()
    joiners = [asyncio.create_task(batches.read("k", reads.fetch)) for _ in range(3)]
    await _settle()
    assert reads.sent == 1  # the joiners did not take the read sent before they arrived
    reads.gates[0].set()
    assert await first == (1, False)
    await _settle()
    assert reads.sent == 2  # one read for the three of them, sent after they arrived
    reads.gates[1].set()
    assert [await j for j in joiners] == [(2, True)] * 3
    late = asyncio.create_task(batches.read("k", reads.fetch))  # nothing in flight: its own
    await _settle()
    reads.gates[2].set()
    assert await late == (3, False)


async def test_a_failed_shared_read_fails_its_batch_and_a_gone_joiner_cancels_nothing() -> None:
    batches: ReadBatches[int] = ReadBatches()
    reads = _Reads()
    first = asyncio.create_task(batches.read("k", reads.fetch))
    await _settle()
    gone, stays = (asyncio.create_task(batches.read("k", reads.fetch)) for _ in range(2))
    await _settle()
    gone.cancel()
    reads.gates[0].set()
    await first
    await _settle()
    reads.fail = True
    reads.gates[1].set()
    with pytest.raises(BackendError):
        await stays
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_concurrent_hits_of_one_page_share_reads(redis_cache: Cache) -> None:
    shop = Shop()
    async with client_for(build_app(shop, redis_cache, ttl=60)) as client:
        await client.get("/page")
        answers = await asyncio.gather(*(client.get("/page") for _ in range(32)))
    # (A read past its deadline on a loaded machine fails open: BYPASS, the app answers.)
    assert sum(r.headers["x-cache"] == "HIT" for r in answers) >= 28
    assert {r.text for r in answers if r.headers["x-cache"] == "HIT"} == {answers[0].text}
    assert redis_cache.stats()["coalesced"] > 0


async def test_share_reads_off_reads_once_per_request(redis_cache: Cache) -> None:
    shop = Shop()
    async with client_for(build_app(shop, redis_cache, ttl=60, share_reads=False)) as client:
        await client.get("/page")
        await asyncio.gather(*(client.get("/page") for _ in range(16)))
    assert redis_cache.stats()["coalesced"] == 0
