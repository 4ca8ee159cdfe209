"""Bearer tokens, TLS and mutual TLS, and a server whose models are fixed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jacserve.client import Client, PermissionDenied, Unauthenticated
from jacserve.client.errors import JacserveError
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig
from tests import hostile

X = torch.randn(3)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("tokens")
    (folder / "tokens").write_text("# rotated tokens\nold-token\nnew-token\n")
    running = serve(
        ServerConfig(
            port=0, metrics_port=None, workers=1, compile="off",
            auth_token_file=str(folder / "tokens"),
        ),
        environ={"JACSERVE_AUTH_TOKEN": "env-token"},
    )  # fmt: skip
    yield running
    running.stop(grace=0)


@pytest.mark.parametrize("token", ["old-token", "new-token", "env-token"])
def test_every_configured_token_is_accepted(guarded, token):
    with Client(guarded.target, timeout=60, token=token) as client:
        assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)


@pytest.mark.parametrize("token", [None, "wrong", "new-token-but-longer"])
def test_missing_or_wrong_token_is_unauthenticated(guarded, token):
    with Client(guarded.target, timeout=60, token=token) as client:
        with pytest.raises(Unauthenticated, match="bearer token"):
            client.list_models()
        with pytest.raises(Unauthenticated):
            client.upload(hostile.good_script())


def test_health_needs_no_token(guarded):
    with grpc.insecure_channel(guarded.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem",
                 cwd=folder)  # fmt: skip
    return folder


def _tls_server(pki: Path, mutual: bool) -> RunningServer:
    return serve(
        ServerConfig(
            port=0, metrics_port=None, workers=1, compile="off",
            tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key"),
            tls_client_ca_file=str(pki / "ca.pem") if mutual else None,
        )
    )  # fmt: skip


def test_tls_serves_clients_that_trust_the_ca(pki):
    running = _tls_server(pki, mutual=False)
    try:
        ca = (pki / "ca.pem").read_bytes()
        with Client(running.target, timeout=60, root_certificates=ca) as client:
            assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)
        with Client(running.target, timeout=5) as plaintext, pytest.raises(JacserveError):
            plaintext.list_models()
    finally:
        running.stop(grace=0)


def test_mutual_tls_requires_a_client_certificate(pki):
    running = _tls_server(pki, mutual=True)
    try:
        ca = (pki / "ca.pem").read_bytes()
        key, cert = (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
        with Client(running.target, timeout=60, root_certificates=ca, private_key=key,
                    certificate_chain=cert) as client:  # fmt: skip
            assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)
        anonymous = Client(running.target, timeout=5, root_certificates=ca)
        with anonymous, pytest.raises(JacserveError):
            anonymous.list_models()
    finally:
        running.stop(grace=0)


def test_uploads_off_serves_only_preloaded_models(tmp_path):
    archive = hostile.good_script()
    model_id = __import__("hashlib").sha256(archive).hexdigest()
    (tmp_path / f"{model_id}.archive").write_bytes(archive)
    (tmp_path / f"{'0' * 64}.archive").write_bytes(b"not a model")  # logged and skipped
    running = serve(
        ServerConfig(port=0, metrics_port=None, workers=1, compile="off",
                     model_dir=str(tmp_path), allow_uploads=False)
    )  # fmt: skip
    try:
        with Client(running.target, timeout=60) as client:
            assert [m.model_id for m in client.list_models()] == [model_id]
            assert client.jacobian(model_id, X).jacobian.shape == (2, 3)
            with pytest.raises(PermissionDenied, match="uploads are off"):
                client.upload(hostile.out_of_bounds_writer())
            with pytest.raises(PermissionDenied):
                client.delete_model(model_id)
    finally:
        running.stop(grace=0)
