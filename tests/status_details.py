"""What a refused call's google.rpc.Status details say, read the way a client reads them."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest's field violations (field -> description)."""
    status = rpc_status.from_call(error)
    assert status is not None, "expected google.rpc.Status details"
    violations: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.update({v.field: v.description for v in bad_request.field_violations})
    return violations
