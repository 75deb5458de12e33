"""Server reflection in both its versions: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection serves only ``grpc.reflection.v1alpha.ServerReflection``, which its own proto
marks deprecated. Newer clients ask ``grpc.reflection.v1.ServerReflection`` first: grpcurl and
``buf curl`` fall back to v1alpha on UNIMPLEMENTED, but a client told to speak v1 (``buf curl
--reflect-protocol grpc-v1``) or knowing no other got UNIMPLEMENTED. The two versions are the
same messages under another package (field for field, number for number), so v1 is served by
the same servicer, and described by v1alpha's descriptor under v1's package and file name.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"  # its name in grpc-proto
_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package


def _add_v1_descriptor() -> None:
    """Put v1's file in the default pool (once), for ``describe grpc.reflection.v1…``."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's: deprecated, and its Java and Go package names

    def v1(type_name: str) -> str:
        return type_name.replace(f".{_V1ALPHA_PACKAGE}.", ".grpc.reflection.v1.")

    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = v1(field.type_name)
    for method in proto.service[0].method:
        method.input_type, method.output_type = v1(method.input_type), v1(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` and of both reflection services, in both versions."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(
        [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    )
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):  # one servicer, the same messages
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
