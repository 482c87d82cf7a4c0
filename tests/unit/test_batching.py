"""The Coalescer: concurrent single calls share batches, each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from jobcore.batching import Coalescer


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def double(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 2 for item in items]


async def test_calls_made_while_a_batch_runs_go_together_in_the_next() -> None:
    recorder = _Recorder()
    coalesce = Coalescer(recorder.double, max_batch=3, max_in_flight=1)

    calls = [asyncio.create_task(coalesce(item)) for item in (0, 2, 4, 6, 8)]
    await asyncio.sleep(0)
    recorder.release.set()
    results = await asyncio.gather(*calls)

    assert results == [0, 4, 8, 12, 16]
    # The first call found the coalescer idle and ran alone; the rest queued meanwhile.
    assert recorder.batches == [[0], [2, 4, 6], [8]]


async def test_an_error_for_one_item_reaches_only_its_caller() -> None:
    recorder = _Recorder()
    recorder.release.set()
    coalesce = Coalescer(recorder.double, max_batch=10, max_in_flight=1)

    results = await asyncio.gather(*(coalesce(item) for item in (2, 3, 4)), return_exceptions=True)

    assert results[0] == 4
    assert results[2] == 8
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("database gone")

    coalesce = Coalescer(broken, max_batch=10, max_in_flight=2)

    with pytest.raises(ConnectionError):
        await asyncio.gather(coalesce(1), coalesce(2))


async def test_no_more_than_max_in_flight_batches_run_at_once() -> None:
    running = peak = 0

    async def slow(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return items

    coalesce = Coalescer(slow, max_batch=1, max_in_flight=2)

    assert await asyncio.gather(*(coalesce(item) for item in range(6))) == list(range(6))
    assert peak == 2


async def test_once_callers_come_together_a_batch_waits_its_interval_or_a_full_queue() -> None:
    recorder = _Recorder()
    recorder.release.set()
    coalesce = Coalescer(recorder.double, max_batch=3, max_in_flight=1, min_interval=3600)

    first = [asyncio.create_task(coalesce(item)) for item in (0, 2, 4, 6)]
    assert await asyncio.gather(*first) == [0, 4, 8, 12]
    assert recorder.batches == [[0], [2, 4, 6]]

    # The last batch held three calls: the next waits for the interval (an hour here)...
    waiting = asyncio.create_task(coalesce(8))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert recorder.batches == [[0], [2, 4, 6]]

    # ...or until max_batch calls are queued, which go at once.
    more = [asyncio.create_task(coalesce(item)) for item in (10, 12)]
    assert await asyncio.gather(waiting, *more) == [16, 20, 24]
    assert recorder.batches == [[0], [2, 4, 6], [8, 10, 12]]


async def test_a_waiting_batch_starts_when_its_interval_is_over() -> None:
    recorder = _Recorder()
    recorder.release.set()
    coalesce = Coalescer(recorder.double, max_batch=10, max_in_flight=1, min_interval=0.05)

    # [0] alone, [2, 4] together; 6 then waits for the interval with no one else coming.
    await asyncio.gather(*(asyncio.create_task(coalesce(item)) for item in (0, 2, 4)))
    waiting = asyncio.create_task(coalesce(6))
    await asyncio.sleep(0)
    assert not waiting.done()

    assert await asyncio.wait_for(waiting, timeout=30) == 12
    assert recorder.batches == [[0], [2, 4], [6]]


async def test_a_lone_caller_never_waits_for_the_interval() -> None:
    recorder = _Recorder()
    recorder.release.set()
    coalesce = Coalescer(recorder.double, max_batch=10, max_in_flight=1, min_interval=3600)

    # One call at a time: every batch holds one call, so none waits an hour.
    results = [await asyncio.wait_for(coalesce(item), timeout=30) for item in (0, 2, 4, 6)]

    assert results == [0, 4, 8, 12]
    assert recorder.batches == [[0], [2], [4], [6]]


async def test_a_batch_stops_before_its_sizes_pass_the_limit_and_a_big_item_goes_alone() -> None:
    recorder = _Recorder()
    coalesce = Coalescer(
        recorder.double, max_batch=10, max_in_flight=1, size_of=lambda item: item, max_batch_size=10
    )

    calls = [asyncio.create_task(coalesce(item)) for item in (0, 4, 6, 2, 20, 8)]
    await asyncio.sleep(0)
    recorder.release.set()

    assert await asyncio.gather(*calls) == [0, 8, 12, 4, 40, 16]
    # 4 + 6 fit in 10, 2 would pass it; 20 is over the limit on its own and still goes.
    assert recorder.batches == [[0], [4, 6], [2], [20], [8]]


async def test_a_batch_full_by_size_does_not_wait_for_the_interval() -> None:
    recorder = _Recorder()
    recorder.release.set()
    coalesce = Coalescer(
        recorder.double,
        max_batch=10,
        max_in_flight=1,
        min_interval=3600,
        size_of=lambda item: item,
        max_batch_size=10,
    )
    await asyncio.gather(*(asyncio.create_task(coalesce(item)) for item in (0, 2, 4)))
    assert recorder.batches == [[0], [2, 4]]

    # Callers came together, so 6 waits (an hour)... until 6 + 8 would not fit one batch.
    waiting = asyncio.create_task(coalesce(6))
    await asyncio.sleep(0)
    assert not waiting.done()
    results = await asyncio.wait_for(asyncio.gather(waiting, coalesce(8)), timeout=30)
    assert list(results) == [12, 16]
    assert recorder.batches[2] == [6]


async def test_a_caller_gone_before_its_batch_leaves_the_others_their_answers() -> None:
    recorder = _Recorder()
    coalesce = Coalescer(recorder.double, max_batch=3, max_in_flight=1)
    first = asyncio.create_task(coalesce(0))
    await asyncio.sleep(0)
    calls = [asyncio.create_task(coalesce(item)) for item in (2, 4, 6)]
    await asyncio.sleep(0)

    # The caller of 2 goes away while its item waits; the item still goes (its change stands).
    calls[0].cancel()
    await asyncio.sleep(0)
    recorder.release.set()
    results = await asyncio.wait_for(asyncio.gather(*calls[1:]), timeout=5)
    await first

    assert recorder.batches == [[0], [2, 4, 6]]
    assert results == [8, 12]
