"""Test clients that present an API key: every gRPC channel and HTTP client the tests open.

A channel made here adds `authorization: Bearer <key>` to every call it carries, unless the
call names its own `authorization` (a test acting as another caller passes it per call). An
empty key adds nothing: the stack then runs with AUTH_MODE=none.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

ChannelOptions = Sequence[tuple[str, Any]]


def bearer(api_key: str) -> str:
    """The `authorization` value that presents `api_key`."""
    return f"Bearer {api_key}"


def auth_headers(api_key: str) -> dict[str, str]:
    """HTTP headers that present `api_key` (none for an empty key)."""
    return {"authorization": bearer(api_key)} if api_key else {}


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that presents `api_key` (none for an empty key)."""
    return (("authorization", bearer(api_key)),) if api_key else ()


def _names_authorization(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    return any(name == "authorization" for name, _ in metadata or ())


# --- grpc.aio ------------------------------------------------------------------------------


def _aio_details(details: grpc.aio.ClientCallDetails, api_key: str) -> grpc.aio.ClientCallDetails:
    if _names_authorization(details.metadata):
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *auth_metadata(api_key))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Request],
            Awaitable[grpc.aio.UnaryUnaryCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Request,
    ) -> grpc.aio.UnaryUnaryCall[_Request, _Response]:
        return await continuation(_aio_details(client_call_details, self._api_key), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Request],
            Awaitable[grpc.aio.UnaryStreamCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Request,
    ) -> grpc.aio.UnaryStreamCall[_Request, _Response]:
        return await continuation(_aio_details(client_call_details, self._api_key), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Request] | Iterable[_Request]],
            Awaitable[grpc.aio.StreamUnaryCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Request] | Iterable[_Request],
    ) -> grpc.aio.StreamUnaryCall[_Request, _Response]:
        return await continuation(
            _aio_details(client_call_details, self._api_key), request_iterator
        )


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Request] | Iterable[_Request]],
            Awaitable[grpc.aio.StreamStreamCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Request] | Iterable[_Request],
    ) -> grpc.aio.StreamStreamCall[_Request, _Response]:
        return await continuation(
            _aio_details(client_call_details, self._api_key), request_iterator
        )


def aio_interceptors(api_key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add the key to every kind of call (grpc.aio files each under one kind)."""
    if not api_key:
        return []
    return [
        _AioUnaryUnary(api_key),
        _AioUnaryStream(api_key),
        _AioStreamUnary(api_key),
        _AioStreamStream(api_key),
    ]


def aio_channel(
    target: str,
    api_key: str,
    *,
    options: ChannelOptions | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` whose calls present `api_key` (TLS with `credentials`)."""
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=aio_interceptors(api_key)
        )
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=aio_interceptors(api_key)
    )


# --- blocking grpc -------------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A call's details with other metadata (grpc.ClientCallDetails has no constructor)."""


def _blocking_details(details: grpc.ClientCallDetails, api_key: str) -> grpc.ClientCallDetails:
    if _names_authorization(details.metadata):
        return details
    return _CallDetails(
        details.method,
        details.timeout,
        (*(details.metadata or ()), *auth_metadata(api_key)),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the key to every call of a blocking channel (grpc.intercept_channel)."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(_blocking_details(client_call_details, self._api_key), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(_blocking_details(client_call_details, self._api_key), request)

    def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(_blocking_details(client_call_details, self._api_key), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(_blocking_details(client_call_details, self._api_key), request_iterator)


def with_api_key(channel: grpc.Channel, api_key: str) -> grpc.Channel:
    """`channel`, adding the key to every call (closing the result closes `channel`)."""
    if not api_key:
        return channel
    return grpc.intercept_channel(channel, _Bearer(api_key))


def blocking_channel(
    target: str,
    api_key: str,
    *,
    options: ChannelOptions | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A blocking channel to `target` whose calls present `api_key` (TLS with `credentials`)."""
    if credentials is not None:
        opened = grpc.secure_channel(target, credentials, options=options)
    else:
        opened = grpc.insecure_channel(target, options=options)
    return with_api_key(opened, api_key)
