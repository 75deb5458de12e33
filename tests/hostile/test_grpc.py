"""Hostile gRPC requests to the three real service processes: every RPC of each service with
boundary and invalid values (messages.py), and bytes that are not the request message at all,
sent through a raw channel. Never INTERNAL (nor UNKNOWN or DATA_LOSS), never a crash, and each
service still answers normally afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from parley.business.v1 import business_pb2
from parley.search.v1 import search_pb2
from parley.session.v1 import session_pb2
from services.common.healthcheck import check
from tests.hostile.messages import messages, wire_bytes
from tests.hostile.profile import hostile
from tests.support.stack import Services

SERVICES = {
    "session": session_pb2.DESCRIPTOR.services_by_name["SessionService"],
    "business": business_pb2.DESCRIPTOR.services_by_name["BusinessService"],
    "search": search_pb2.DESCRIPTOR.services_by_name["SearchService"],
}
# What a client can never be owed: the server failed in a way it did not foresee.
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
METHODS = [(name, method) for name, svc in SERVICES.items() for method in svc.methods]
STRATEGIES = {method.full_name: messages(method.input_type) for _, method in METHODS}


@pytest.fixture(scope="module")
def channels(services: Services) -> Iterator[dict[str, grpc.Channel]]:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    opened = {
        "session": grpc.insecure_channel(services.session, options),
        "business": grpc.insecure_channel(services.business, options),
        "search": grpc.insecure_channel(services.search, options),
    }
    yield opened
    for channel in opened.values():
        channel.close()


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _call(channel: grpc.Channel, method: MethodDescriptor, request: bytes) -> grpc.StatusCode:
    response_class = GetMessageClass(method.output_type)
    call = channel.unary_unary(_path(method), response_deserializer=response_class.FromString)
    try:
        call(request, timeout=20)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@hostile(80)
@given(data=st.data())
def test_boundary_and_invalid_values_are_never_internal(
    data: st.DataObject, channels: dict[str, grpc.Channel]
) -> None:
    name, method = data.draw(st.sampled_from(METHODS), label="method")
    request = data.draw(STRATEGIES[method.full_name], label="request")
    code = _call(channels[name], method, request.SerializeToString())
    assert code not in NEVER, f"{method.full_name} answered {code.name}"


def _parses(method: MethodDescriptor, raw: bytes) -> bool:
    try:
        GetMessageClass(method.input_type).FromString(raw)
    except DecodeError:
        return False
    return True


@hostile(40)
@given(data=st.data())
def test_bytes_that_are_no_message_are_never_internal(
    data: st.DataObject, channels: dict[str, grpc.Channel]
) -> None:
    """Wire data of the wrong shape, and bytes that do not parse at all (INVALID_ARGUMENT)."""
    name, method = data.draw(st.sampled_from(METHODS), label="method")
    garbage = data.draw(wire_bytes() | st.binary(min_size=1, max_size=200), label="bytes")
    code = _call(channels[name], method, garbage)
    assert code not in NEVER, f"{method.full_name} answered {code.name} to {garbage!r}"
    if not _parses(method, garbage):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method.full_name, code.name)


UNPARSABLE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, length past the end


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_a_request_that_does_not_parse_is_invalid_argument(
    name: str, channels: dict[str, grpc.Channel]
) -> None:
    """(Was a bug: gRPC's own deserialization failed and the client got UNKNOWN.)"""
    method = SERVICES[name].methods[0]
    assert not _parses(method, UNPARSABLE)
    call = channels[name].unary_unary(_path(method))
    with pytest.raises(grpc.RpcError) as raised:
        call(UNPARSABLE, timeout=20)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())


def test_every_service_still_answers_normally(
    services: Services, channels: dict[str, grpc.Channel]
) -> None:
    for process in services.processes:
        assert process.process is not None and process.process.poll() is None, process.module
    for address in (services.session, services.business, services.search):
        assert check(address, "", 5) == "SERVING", address
    from parley.business.v1 import business_pb2_grpc
    from parley.search.v1 import search_pb2_grpc
    from parley.session.v1 import session_pb2_grpc

    session = session_pb2_grpc.SessionServiceStub(channels["session"])
    got = session.GetConversation(
        session_pb2.GetConversationRequest(
            key=session_pb2.ConversationKey(
                business_id="b-hostile",
                user_id="15550001111",
                role=session_pb2.CONVERSATION_ROLE_CLIENT,
            ),
            create=True,
        ),
        timeout=10,
    )
    assert got.conversation.id
    business = business_pb2_grpc.BusinessServiceStub(channels["business"])
    assert business.ListBusinesses(business_pb2.ListBusinessesRequest(), timeout=10) is not None
    search = search_pb2_grpc.SearchServiceStub(channels["search"])
    found = search.ResolvePlace(search_pb2.ResolvePlaceRequest(query="London"), timeout=10)
    assert found.candidates and found.candidates[0].place.code in ("LON", "LHR")
