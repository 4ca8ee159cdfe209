"""Server reflection answers under its v1 name as well as v1alpha, as raw bytes on the
v1 method path (what a v1-only client such as current grpcurl sends), and describes the
service's file."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _ask(target: str, path: str, request: reflection_pb2.ServerReflectionRequest):
    """One request on ``path``; the reply's bytes parsed as a reflection reply."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(path)  # bytes in, bytes out: no v1 stubs needed
        (reply,) = list(call(iter([request.SerializeToString()]), timeout=10))
    return reflection_pb2.ServerReflectionResponse.FromString(reply)


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_reflection_lists_the_services_under_both_names(server, path):
    reply = _ask(server.target, path, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "jacserve.v1.JacobianService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_v1_reflection_describes_the_service_file(server):
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="jacserve.v1.JacobianService"
    )
    reply = _ask(server.target, V1, request)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    service = next(s for f in files for s in f.service if s.name == "JacobianService")
    assert {"Jacobian", "Jvp", "Vjp", "UploadModel"} <= {m.name for m in service.method}


def test_v1_reflection_says_not_found_for_an_unknown_symbol(server):
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service")
    reply = _ask(server.target, V1, request)
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
