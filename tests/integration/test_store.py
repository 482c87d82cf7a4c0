"""JobStore against a real PostgreSQL database of its own: claims, fencing, leases, cancel,
idempotency keys, retention, and the events and notifications every change produces."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from jobcore.database import asyncpg_dsn
from jobcore.errors import (
    IdempotencyKeyReusedError,
    JobAlreadyFinishedError,
    JobNotFoundError,
    StoreConflictError,
)
from jobcore.ids import new_job_id
from jobcore.listing import Condition, PageCursor
from jobcore.models import Claim, Job, JobStatus, Outcome
from jobcore.operations import Operation, pack_numbers
from jobcore.schema import JOB_EVENTS_CHANNEL
from jobcore.store import CANCELLED_ERROR, JobStore
from tests.owners import TEST_OWNER

LEASE = timedelta(minutes=5)


@pytest.fixture(scope="module")
async def store(isolated_database_url: str) -> AsyncIterator[JobStore]:
    store = await JobStore.connect(isolated_database_url, pool_size=4)
    yield store
    await store.close()


async def _new_job(store: JobStore, numbers: list[float] | None = None) -> Job:
    job, created = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers(numbers or [3.0]),
    )
    assert created
    return job


async def test_only_one_of_many_concurrent_claims_wins(store: JobStore) -> None:
    job = await _new_job(store)

    # Five at once: the first runs alone, the others share batched statements.
    claims = await asyncio.gather(*(store.claim(job.id, lease=LEASE) for _ in range(5)))

    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 1
    assert (await store.get(job.id, tenant=None)).status == JobStatus.IN_PROGRESS


async def test_concurrent_changes_of_many_jobs_each_get_their_own_answer(store: JobStore) -> None:
    jobs = await asyncio.gather(*(_new_job(store, [float(n)]) for n in range(30)))
    claims = await asyncio.gather(*(store.claim(job.id, lease=LEASE) for job in jobs))
    assert all(claim is not None for claim in claims)

    finished = await asyncio.gather(
        *(
            store.finish(claim, Outcome(result=float(n) ** 2))
            for n, claim in enumerate(claims)
            if claim is not None
        ),
        # A duplicate finish of the first attempt, racing the original.
        store.finish(claims[0], Outcome(error="duplicate")) if claims[0] else asyncio.sleep(0),
    )

    assert finished[:30] == [True] * 30
    assert finished[30] is False
    for n, job in enumerate(jobs):
        final = await store.get(job.id, tenant=None)
        assert final.status == JobStatus.SUCCESS
        assert final.outcome == Outcome(result=float(n) ** 2)
        assert [
            event.status for event in await store.events_after(job.id, 0, tenant=TEST_OWNER.tenant)
        ] == [
            JobStatus.PENDING,
            JobStatus.IN_PROGRESS,
            JobStatus.SUCCESS,
        ]


async def test_a_stale_attempt_cannot_overwrite_the_outcome(store: JobStore) -> None:
    job = await _new_job(store)
    claim = await store.claim(job.id, lease=LEASE)
    assert claim is not None

    assert await store.finish(claim, Outcome(result=9.0)) is True
    assert await store.finish(claim, Outcome(error="late duplicate")) is False

    finished = await store.get(job.id, tenant=None)
    assert finished.status == JobStatus.SUCCESS
    assert finished.outcome == Outcome(result=9.0, error=None)
    assert await store.claim(job.id, lease=LEASE) is None


async def test_every_change_is_an_event_and_a_notification_on_commit(
    store: JobStore, isolated_database_url: str
) -> None:
    listener = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await listener.add_listener(
        JOB_EVENTS_CHANNEL, lambda *args: received.put_nowait(json.loads(args[3]))
    )
    try:
        job = await _new_job(store, [1.0, 2.0])
        claim = await store.claim(job.id, lease=LEASE)
        assert claim is not None
        await store.finish(claim, Outcome(result=5.0))

        notified: list[tuple[object, object, object]] = []
        while len(notified) < 3:
            payload = await asyncio.wait_for(received.get(), timeout=10)
            if payload["job_id"] == str(job.id):
                notified.append((payload["sequence"], payload["status"], payload["result"]))
    finally:
        await listener.close()

    events = await store.events_after(job.id, 0, tenant=TEST_OWNER.tenant)
    assert [(e.sequence, e.status, e.attempts) for e in events] == [
        (1, JobStatus.PENDING, 0),
        (2, JobStatus.IN_PROGRESS, 1),
        (3, JobStatus.SUCCESS, 1),
    ]
    assert events[-1].outcome == Outcome(result=5.0)
    assert notified == [(1, "PENDING", None), (2, "IN_PROGRESS", None), (3, "SUCCESS", 5.0)]
    assert (await store.get(job.id, tenant=None)).sequence == 3


async def test_a_stale_and_a_current_attempt_finishing_together_get_their_own_answers(
    store: JobStore,
) -> None:
    job = await _new_job(store)
    stale = await store.claim(job.id, lease=timedelta(milliseconds=1))
    assert stale is not None
    await asyncio.sleep(0.01)
    await store.requeue_expired(max_attempts=3, limit=10_000)
    current = await store.claim(job.id, lease=LEASE)
    assert current is not None
    others = await asyncio.gather(*(_new_job(store) for _ in range(2)))
    other_claims = await asyncio.gather(*(store.claim(o.id, lease=LEASE) for o in others))

    # The first two finishes run alone; the stale and the current attempt share a statement.
    finished = await asyncio.gather(
        *(store.finish(claim, Outcome(result=1.0)) for claim in other_claims if claim),
        store.finish(stale, Outcome(result=2.0)),
        store.finish(current, Outcome(result=9.0)),
    )

    assert finished == [True, True, False, True]
    assert (await store.get(job.id, tenant=None)).outcome == Outcome(result=9.0, error=None)


async def _lost_then_claimed_again(
    store: JobStore, *, lease: timedelta = LEASE
) -> tuple[Job, Claim, Claim]:
    """A job whose first attempt lost its lease and whose second attempt now holds it."""
    job = await _new_job(store)
    lost = await store.claim(job.id, lease=timedelta(milliseconds=1))
    assert lost is not None
    await asyncio.sleep(0.01)
    assert job.id in {j.id for j in await store.requeue_expired(max_attempts=3, limit=10_000)}
    current = await store.claim(job.id, lease=lease)
    assert current is not None
    assert (lost.attempt, current.attempt) == (1, 2)
    return job, lost, current


async def test_a_lost_attempt_cannot_finish_the_attempt_that_holds_the_job(
    store: JobStore,
) -> None:
    job, lost, current = await _lost_then_claimed_again(store)

    assert await store.finish(lost, Outcome(result=1.0)) is False

    running = await store.get(job.id, tenant=None)
    assert (running.status, running.attempts, running.outcome) == (JobStatus.IN_PROGRESS, 2, None)
    assert await store.finish(current, Outcome(result=9.0)) is True
    done = await store.get(job.id, tenant=None)
    assert (done.status, done.attempts, done.outcome) == (
        JobStatus.SUCCESS,
        2,
        Outcome(result=9.0),
    )


@pytest.mark.parametrize("lost_first", [True, False], ids=["lost-first", "current-first"])
async def test_a_lost_and_the_current_attempt_finishing_in_one_statement(
    store: JobStore, lost_first: bool
) -> None:
    job, lost, current = await _lost_then_claimed_again(store)
    other = await _new_job(store)
    other_claim = await store.claim(other.id, lease=LEASE)
    assert other_claim is not None
    finishes = [(lost, Outcome(result=1.0)), (current, Outcome(result=9.0))]
    if not lost_first:
        finishes.reverse()

    # The first finish runs alone; the lost and the current attempt share the next statement.
    answers = await asyncio.gather(
        store.finish(other_claim, Outcome(result=4.0)),
        *(store.finish(claim, outcome) for claim, outcome in finishes),
    )

    by_attempt = dict(zip((claim.attempt for claim, _ in finishes), answers[1:], strict=True))
    assert by_attempt == {1: False, 2: True}
    done = await store.get(job.id, tenant=None)
    assert (done.status, done.attempts, done.outcome) == (
        JobStatus.SUCCESS,
        2,
        Outcome(result=9.0),
    )
    assert [
        (e.status, e.attempts, e.outcome)
        for e in await store.events_after(job.id, 0, tenant=TEST_OWNER.tenant)
    ][-1] == (
        JobStatus.SUCCESS,
        2,
        Outcome(result=9.0),
    )


async def test_a_lost_attempt_cannot_renew_the_lease_of_the_attempt_that_holds_the_job(
    store: JobStore,
) -> None:
    job, lost, _ = await _lost_then_claimed_again(store, lease=timedelta(milliseconds=1))
    other = await _new_job(store)
    other_claim = await store.claim(other.id, lease=LEASE)
    assert other_claim is not None

    held = await store.renew([lost, other_claim], lease=LEASE)

    assert held == {(other.id, other_claim.attempt)}
    # The current attempt's short lease was not extended by the lost one's renewal.
    await asyncio.sleep(0.01)
    requeued = await store.requeue_expired(max_attempts=3, limit=10_000)
    assert [(j.id, j.status) for j in requeued if j.id == job.id] == [(job.id, JobStatus.PENDING)]


async def test_expired_lease_requeues_the_job_then_gives_up_after_max_attempts(
    store: JobStore,
) -> None:
    job = await _new_job(store)
    short = timedelta(milliseconds=1)

    for attempt in (1, 2):
        claim = await store.claim(job.id, lease=short)
        assert claim is not None
        assert claim.attempt == attempt
        await asyncio.sleep(0.01)
        requeued = await store.requeue_expired(max_attempts=3, limit=10_000)
        assert [(j.id, j.status) for j in requeued if j.id == job.id] == [
            (job.id, JobStatus.PENDING)
        ]
        # The lost attempt can no longer record anything.
        assert await store.finish(claim, Outcome(result=1.0)) is False

    claim = await store.claim(job.id, lease=short)
    assert claim is not None
    await asyncio.sleep(0.01)
    await store.requeue_expired(max_attempts=3, limit=10_000)

    failed = await store.get(job.id, tenant=None)
    assert failed.status == JobStatus.FAILED
    assert failed.attempts == 3
    assert failed.outcome is not None
    assert "lost 3 times" in (failed.outcome.error or "")


async def test_renewal_keeps_a_lease_and_reports_claims_that_are_gone(store: JobStore) -> None:
    kept, cancelled = await _new_job(store), await _new_job(store)
    claims = [await store.claim(job.id, lease=timedelta(seconds=1)) for job in (kept, cancelled)]
    assert claims[0] is not None
    assert claims[1] is not None
    await store.cancel(cancelled.id, by=TEST_OWNER)

    held = await store.renew([claims[0], claims[1]], lease=LEASE)
    await asyncio.sleep(1.1)
    requeued = await store.requeue_expired(max_attempts=3, limit=10_000)

    assert held == {(kept.id, claims[0].attempt)}
    assert kept.id not in {job.id for job in requeued}
    assert (await store.get(kept.id, tenant=None)).status == JobStatus.IN_PROGRESS


async def test_cancel_is_final_idempotent_and_refused_after_success(store: JobStore) -> None:
    pending = await _new_job(store)

    cancelled = await store.cancel(pending.id, by=TEST_OWNER)
    again = await store.cancel(pending.id, by=TEST_OWNER)

    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.outcome == Outcome(error=CANCELLED_ERROR)
    assert again == cancelled
    assert await store.claim(pending.id, lease=LEASE) is None

    done = await _new_job(store)
    claim = await store.claim(done.id, lease=LEASE)
    assert claim is not None
    await store.finish(claim, Outcome(result=9.0))
    with pytest.raises(JobAlreadyFinishedError, match="SUCCESS"):
        await store.cancel(done.id, by=TEST_OWNER)
    with pytest.raises(JobNotFoundError):
        await store.cancel(new_job_id(), by=TEST_OWNER)


async def test_idempotency_key_returns_the_original_job_for_the_same_request(
    store: JobStore,
) -> None:
    key = f"key-{new_job_id()}"
    numbers = pack_numbers([1.0, 2.0])

    first, created = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=numbers,
        request_id=key,
    )
    retried, created_again = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=numbers,
        request_id=key,
    )

    assert created
    assert not created_again
    assert retried.id == first.id
    with pytest.raises(IdempotencyKeyReusedError, match=key):
        await store.create(
            owner=TEST_OWNER,
            job_id=new_job_id(),
            operation=Operation.SQUARE_SUM,
            numbers=numbers,
            request_id=key,
        )


async def test_a_key_whose_job_is_purged_during_a_submit_is_used_anew_and_fails_no_one(
    store: JobStore, isolated_database_url: str
) -> None:
    key = f"purged-{new_job_id()}"
    companion_key = f"{key}-companion"
    numbers = pack_numbers([2.0])
    old, _ = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=numbers,
        request_id=key,
    )
    await store.cancel(old.id, by=TEST_OWNER)
    # Retention purges the old job in the very statement whose insert found its key
    # taken (the one that also inserts the companion), so the lookup after it finds nothing.
    trigger = f"purge_during_submit_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    await admin.execute(
        f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM inserted WHERE request_id = '{companion_key}') THEN
                DELETE FROM jobs WHERE request_id = '{key}' AND status = 'CANCELLED';
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER {trigger} AFTER INSERT ON jobs REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION {trigger}();
        """
    )
    try:
        resubmitted_id, companion_id = new_job_id(), new_job_id()
        # The first create runs alone; the other two share the next statement.
        _, (resubmitted, created), (companion, companion_created) = await asyncio.gather(
            _new_job(store),
            store.create(
                owner=TEST_OWNER,
                job_id=resubmitted_id,
                operation=Operation.SQUARE_SUM,
                numbers=numbers,
                request_id=key,
            ),
            store.create(
                owner=TEST_OWNER,
                job_id=companion_id,
                operation=Operation.SQUARE_SUM,
                numbers=numbers,
                request_id=companion_key,
            ),
        )
    finally:
        await admin.execute(f"DROP TRIGGER {trigger} ON jobs; DROP FUNCTION {trigger}()")
        await admin.close()

    assert (resubmitted.id, resubmitted.status, created) == (
        resubmitted_id,
        JobStatus.PENDING,
        True,
    )
    assert (companion.id, companion_created) == (companion_id, True)
    with pytest.raises(JobNotFoundError):
        await store.get(old.id, tenant=None)
    again, created_again = await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=numbers,
        request_id=key,
    )
    assert (again.id, created_again) == (resubmitted_id, False)


async def test_a_key_freed_again_after_every_insert_fails_only_its_own_submit(
    store: JobStore, isolated_database_url: str
) -> None:
    key = f"always-purged-{new_job_id()}"
    numbers = pack_numbers([2.0])
    # Every insert of the key meets a finished job holding it, which retention purges
    # before the lookup: the submit is retried a bounded number of times, then refused.
    trigger = f"purge_every_time_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    await admin.execute(
        f"""
        CREATE FUNCTION {trigger}_take() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.request_id = '{key}' AND NEW.status = 'PENDING' THEN
                INSERT INTO jobs (id, tenant, operation, status, numbers, number_count,
                                  last_sequence, created_at, updated_at, request_id,
                                  request_hash)
                VALUES (gen_random_uuid(), NEW.tenant, NEW.operation, 'CANCELLED', NEW.numbers,
                        NEW.number_count, 1, now(), now(), NEW.request_id, NEW.request_hash);
            END IF;
            RETURN NEW;
        END $$;
        CREATE FUNCTION {trigger}_purge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_trigger_depth() = 1 THEN
                DELETE FROM jobs WHERE request_id = '{key}' AND status = 'CANCELLED';
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER {trigger}_take BEFORE INSERT ON jobs
            FOR EACH ROW EXECUTE FUNCTION {trigger}_take();
        CREATE TRIGGER {trigger}_purge AFTER INSERT ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION {trigger}_purge();
        """
    )
    try:
        companion_id = new_job_id()
        # The first create runs alone; the other two share the next statement.
        _, refused, companion = await asyncio.gather(
            _new_job(store),
            store.create(
                owner=TEST_OWNER,
                job_id=new_job_id(),
                operation=Operation.SQUARE_SUM,
                numbers=numbers,
                request_id=key,
            ),
            store.create(
                owner=TEST_OWNER,
                job_id=companion_id,
                operation=Operation.SQUARE_SUM,
                numbers=numbers,
                request_id=f"{key}-companion",
            ),
            return_exceptions=True,
        )
    finally:
        await admin.execute(
            f"DROP TRIGGER {trigger}_take ON jobs; DROP TRIGGER {trigger}_purge ON jobs;"
            f"DROP FUNCTION {trigger}_take(); DROP FUNCTION {trigger}_purge()"
        )
        await admin.close()

    assert isinstance(refused, StoreConflictError)
    assert not isinstance(companion, BaseException)
    assert (companion[0].id, companion[1]) == (companion_id, True)


async def test_concurrent_submissions_with_one_key_make_one_job(store: JobStore) -> None:
    key = f"race-{new_job_id()}"

    results = await asyncio.gather(
        *(
            store.create(
                owner=TEST_OWNER,
                job_id=new_job_id(),
                operation=Operation.SQUARE_SUM,
                numbers=pack_numbers([4.0]),
                request_id=key,
            )
            for _ in range(8)
        )
    )

    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_jobs_whose_publish_failed_are_taken_for_redispatch_once(store: JobStore) -> None:
    job = await _new_job(store)
    await store.mark_undispatched([job.id])

    first = await store.take_undispatched(older_than=timedelta(hours=1), limit=1000)
    second = await store.take_undispatched(older_than=timedelta(hours=1), limit=1000)

    assert job.id in {job_id for job_id, _ in first}
    assert job.id not in {job_id for job_id, _ in second}
    # With its tenant's unfinished jobs, which the wake-up's priority is chosen by.
    assert dict(first)[job.id] >= 1


async def test_retention_deletes_finished_jobs_with_their_events(store: JobStore) -> None:
    finished, pending = await _new_job(store), await _new_job(store)
    await store.cancel(finished.id, by=TEST_OWNER)

    await asyncio.sleep(0.01)
    purged = await store.purge_finished(older_than=timedelta(milliseconds=5), limit=10_000)

    assert purged >= 1
    with pytest.raises(JobNotFoundError):
        await store.get(finished.id, tenant=None)
    assert await store.events_after(finished.id, 0, tenant=TEST_OWNER.tenant) == []
    assert (await store.get(pending.id, tenant=None)).status == JobStatus.PENDING


async def test_a_filtered_listing_pages_through_its_jobs_newest_first(store: JobStore) -> None:
    first = await _new_job(store)
    created = [first, *[await _new_job(store) for _ in range(3)]]
    await store.cancel(created[1].id, by=TEST_OWNER)
    conditions = [
        Condition("create_time", ">=", first.created_at),
        Condition("status", "!=", "CANCELLED"),
        Condition("operation", "=", Operation.SQUARE_SUM.value),
    ]

    listed: list[Job] = []
    cursor: PageCursor | None = None
    while True:
        page, cursor = await store.list_jobs(
            conditions, page_size=1, after=cursor, tenant=TEST_OWNER.tenant
        )
        listed += page
        if cursor is None:
            break

    assert [job.id for job in listed] == [job.id for job in reversed(created) if job != created[1]]


async def test_a_filter_value_is_compared_as_a_value_never_run_as_sql(store: JobStore) -> None:
    await _new_job(store)

    page, cursor = await store.list_jobs(
        [Condition("operation", "=", "square_sum' OR 'x' = 'x")],
        page_size=10,
        after=None,
        tenant=TEST_OWNER.tenant,
    )

    assert (page, cursor) == ([], None)


async def test_pages_never_repeat_a_job_and_a_full_last_page_has_no_next_one(
    store: JobStore,
) -> None:
    first = await _new_job(store)
    created = [first, *[await _new_job(store) for _ in range(4)]]
    newest_first = [job.id for job in reversed(created)]
    since_first = [Condition("create_time", ">=", first.created_at)]

    whole, after_whole = await store.list_jobs(
        since_first, page_size=5, after=None, tenant=TEST_OWNER.tenant
    )
    listed: list[Job] = []
    cursor: PageCursor | None = None
    while True:
        page, cursor = await store.list_jobs(
            since_first, page_size=2, after=cursor, tenant=TEST_OWNER.tenant
        )
        listed += page
        if cursor is None:
            break

    assert [job.id for job in whole] == newest_first
    assert after_whole is None
    assert [job.id for job in listed] == newest_first


async def test_every_other_request_under_a_used_key_is_refused(store: JobStore) -> None:
    """Whichever way the two requests' digests compare: only equal ones are the same request."""
    key = f"key-{new_job_id()}"
    original = [1.0, 2.0]
    await store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers(original),
        request_id=key,
    )
    others = [
        (Operation.CUBE_SUM, original),
        *((Operation.SQUARE_SUM, numbers) for numbers in ([1.0], [2.0, 1.0], [1.0, 2.0, 0.0])),
        *((Operation.SQUARE_SUM, [float(n)]) for n in range(3, 11)),
    ]

    for operation, numbers in others:
        with pytest.raises(IdempotencyKeyReusedError):
            await store.create(
                owner=TEST_OWNER,
                job_id=new_job_id(),
                operation=operation,
                numbers=pack_numbers(numbers),
                request_id=key,
            )


async def test_a_job_records_how_many_numbers_it_holds(
    store: JobStore, isolated_database_url: str
) -> None:
    job = await _new_job(store, [float(n) for n in range(8)])

    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    try:
        count = await connection.fetchval("SELECT number_count FROM jobs WHERE id = $1", job.id)
    finally:
        await connection.close()

    assert count == 8


async def test_events_after_a_sequence_start_right_after_it(store: JobStore) -> None:
    job = await _new_job(store)
    claim = await store.claim(job.id, lease=LEASE)
    assert claim is not None
    await store.finish(claim, Outcome(result=9.0))

    assert [
        event.sequence for event in await store.events_after(job.id, 0, tenant=TEST_OWNER.tenant)
    ] == [1, 2, 3]
    assert [
        event.sequence for event in await store.events_after(job.id, 1, tenant=TEST_OWNER.tenant)
    ] == [2, 3]
    assert await store.events_after(job.id, 3, tenant=TEST_OWNER.tenant) == []
