"""AdminService: thin adapters from protobuf to the API key store (server.interceptor wraps each
call, admits only `admin`-scoped callers and maps domain errors to statuses)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from jobcore.errors import FieldViolation, InvalidJobError
from jobcore.identity import current_principal
from jobcore.keys.records import ApiKeyRecord, parse_key_id
from jobcore.keys.ring import KeyRing
from jobcore.keys.store import KeyStore

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def api_key_to_proto(record: ApiKeyRecord) -> pb.ApiKey:
    """The API's view of a key: everything but its secret."""
    return pb.ApiKey(
        id=str(record.id),
        prefix=record.prefix,
        tenant=record.tenant,
        scopes=sorted(scope.value for scope in record.scopes),
        name=record.name,
        created_at=_timestamp(record.created_at),
        expires_at=_timestamp(record.expires_at),
        revoked_at=_timestamp(record.revoked_at),
    )


def _expires_at(request: pb.CreateApiKeyRequest) -> datetime | None:
    """The requested expiry; None (never) when unset; InvalidJobError if it is no valid time."""
    if not request.HasField("expires_at"):
        return None
    try:
        return request.expires_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidJobError(
            [FieldViolation("expires_at", "must be a valid time (years 1 to 9999)")]
        ) from None


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Makes, lists and revokes API keys; this server's key ring learns each change at once."""

    def __init__(self, *, keys: KeyStore, ring: KeyRing) -> None:
        self._keys = keys
        self._ring = ring

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        record, key = await self._keys.create(
            tenant=request.tenant,
            scopes=request.scopes,
            name=request.name,
            expires_at=_expires_at(request),
        )
        self._ring.remember(record, key=key)
        logger.info(
            "API key %s (%s) made for tenant %s with scopes %s by %s",
            record.prefix,
            record.id,
            record.tenant,
            ",".join(sorted(record.scopes)),
            current_principal().actor,
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(record), key=key)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        records = await self._keys.list(include_inactive=request.include_inactive)
        return pb.ListApiKeysResponse(api_keys=[api_key_to_proto(record) for record in records])

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.ApiKey:
        record = await self._keys.revoke(parse_key_id(request.key_id))
        self._ring.remember(record)
        logger.info(
            "API key %s (%s) of tenant %s revoked by %s",
            record.prefix,
            record.id,
            record.tenant,
            current_principal().actor,
        )
        return api_key_to_proto(record)
