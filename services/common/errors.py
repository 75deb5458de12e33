"""Errors a servicer raises to answer a client, mapped to gRPC status by the interceptor.

Each carries the standard rich error details (google.rpc), so clients and grpcurl see *which*
field was wrong or *what* the current version is, not only a message.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "parley.dev"


class ServiceError(Exception):
    """Base: a status code, a message safe for the client, and optional details."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> grpc.Status:
        proto = status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )
        return rpc_status.to_status(proto)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# A status travels in the reply's trailers, which a gRPC client refuses past 16 KiB (and past
# 8 KiB at random), answering RESOURCE_EXHAUSTED that names nothing; its message is sent
# percent-encoded (up to 3 bytes a byte) and its details base64 too. So the violations a
# status carries stay within this many bytes (the first always, cut to its own bounds).
_VIOLATION_BYTES = 1024
_FIELD_BYTES, _DESCRIPTION_BYTES = 256, 512


def _clip(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore") + "…"


def _within_budget(violations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    size = 0
    for field, description in violations:
        field, description = _clip(field, _FIELD_BYTES), _clip(description, _DESCRIPTION_BYTES)
        size += len(field.encode()) + len(description.encode()) + 4
        if kept and size > _VIOLATION_BYTES:
            break
        kept.append((field, description))
    return kept


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT naming each bad field (``google.rpc.BadRequest``), as many as a status
    can carry: the message says how many more there are."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str, *more: tuple[str, str]) -> None:
        self.violations = [(field, description), *more]
        self.reported = _within_budget(self.violations)
        message = "; ".join(f"{f}: {d}" for f, d in self.reported)
        if dropped := len(self.violations) - len(self.reported):
            message += f"; and {dropped} more"
        super().__init__(message)

    def details(self) -> list[any_pb2.Any]:
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.reported
            ]
        )
        return [_pack(request)]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(ServiceError):
    """ABORTED with an ``ErrorInfo`` (reason and metadata) the caller can act on."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, message: str, reason: str, metadata: dict[str, str]) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        return [_pack(info)]


class VersionConflict(Aborted):
    """The stored version is not the expected one; ``current_version`` is in the details."""

    def __init__(self, current_version: int) -> None:
        super().__init__(
            f"version conflict: the current version is {current_version}",
            "VERSION_CONFLICT",
            {"current_version": str(current_version)},
        )
        self.current_version = current_version


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call, if it carries one (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """Field → description of a failed call's BadRequest details (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    violations: dict[str, str] = {}
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations.update({v.field: v.description for v in request.field_violations})
    return violations
