"""gRPC server reflection under both names clients ask for: ``grpc.reflection.v1`` (what
current grpcurl, Postman and gRPC UI try first) and ``grpc.reflection.v1alpha``.

``grpcio-reflection`` serves only v1alpha. The v1 protocol is the same messages with the
same field numbers under a new package name, so v1 is served by the v1alpha servicer:
the bytes of a v1 request parse as a v1alpha request and the reply's bytes are a valid
v1 reply.

>>> from concurrent import futures
>>> server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
>>> enable_reflection(("jacserve.v1.JacobianService",), server)
('jacserve.v1.JacobianService', 'grpc.reflection.v1alpha.ServerReflection', 'grpc.reflection.v1.ServerReflection')
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["V1_SERVICE_NAME", "enable_reflection"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> tuple[str, ...]:
    """Serve reflection (v1 and v1alpha) listing ``service_names`` and both reflection
    services; returns the names listed."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
    return names
