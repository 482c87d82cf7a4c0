"""JobService: thin adapters from protobuf to the job domain; errors are mapped by server.errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from celery import Celery
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.ids import new_job_id
from jobcore.operations import pack_numbers, validate_numbers
from jobcore.queue import dispatch
from jobcore.store import JobStore
from server.conversions import job_id_from_proto, job_to_proto, operation_from_proto
from server.watch import JobEventHub, follow_job

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class JobServicer(pb_grpc.JobServiceServicer):
    """Submits jobs to PostgreSQL and Celery, and reads them back."""

    def __init__(
        self, *, store: JobStore, celery_app: Celery, hub: JobEventHub, max_job_numbers: int
    ) -> None:
        self._store = store
        self._celery = celery_app
        self._hub = hub
        self._max_job_numbers = max_job_numbers

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Context) -> pb.Job:
        violations: list[FieldViolation] = []
        try:
            numbers = validate_numbers(request.data, max_count=self._max_job_numbers)
        except InvalidJobError as error:
            violations += error.violations
        try:
            operation = operation_from_proto(request.operation)
        except InvalidJobError as error:
            violations += error.violations
        if violations:
            raise InvalidJobError(violations)
        job = await self._store.create(
            job_id=new_job_id(), operation=operation, numbers=pack_numbers(numbers)
        )
        try:
            await asyncio.to_thread(dispatch, self._celery, job.id)
        except Exception:
            # The job is stored, so the answer is still OK: the re-dispatch sweep sends it later.
            logger.exception(
                "job %s: publishing to the broker failed; the sweep will retry", job.id
            )
            await self._store.mark_undispatched([job.id])
        return job_to_proto(job, with_result=False)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.Job:
        job = await self._store.get(job_id_from_proto(request.job_id))
        return job_to_proto(job, with_result=False)

    async def GetResult(self, request: pb.GetResultRequest, context: Context) -> pb.Job:
        job = await self._store.get(job_id_from_proto(request.job_id))
        return job_to_proto(job, with_result=True)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        job_id = job_id_from_proto(request.job_id)
        async for job in follow_job(self._hub, self._store, job_id):
            yield pb.WatchJobResponse(
                job=job_to_proto(job, with_result=True), sequence=job.sequence
            )
