"""Tenants (issue #14): a tenant sees, uses and deletes only its own models.

One server with a token file of three tenants (``alice``, ``bob``, ``carol``) and the
operator's bare token (tenant ``default``), per-tenant quotas, and a model the operator
placed in the model directory. Everything goes through the SDK or the generated stubs.
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.client import Client, NotFound, PermissionDenied, ResourceExhausted
from jacserve.server.app import RunningServer
from jacserve.server.worker.pool import worker_key
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token"}
OPERATOR = "operator-token"
X = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
MAX_MODELS, MAX_BYTES = 2, 200_000


def _script(seed: int, width: int = 3) -> bytes:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh()).double()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _jacobian_here(archive: bytes) -> torch.Tensor:
    module = torch.jit.load(io.BytesIO(archive))
    return torch.func.jacrev(lambda x: module(x))(X)


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, bytes]:
    """A model folder holding one archive the operator put there."""
    folder = tmp_path_factory.mktemp("models")
    archive = _script(100)
    (folder / f"{hashlib.sha256(archive).hexdigest()}.archive").write_bytes(archive)
    return folder, archive


@pytest.fixture(scope="module")
def server(tmp_path_factory, preloaded) -> Iterator[RunningServer]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    lines = [f"{tenant}:{token}" for tenant, token in TOKENS.items()] + [OPERATOR]
    tokens.write_text("\n".join(["# tenant:token", *lines]) + "\n")
    with running_server(
        str(preloaded[0]),
        workers=1,
        auth_token_file=str(tokens),
        tenant_max_models=MAX_MODELS,
        tenant_max_bytes=MAX_BYTES,
        metrics_port=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server) -> Iterator[dict[str, Client]]:
    opened = {name: Client(server.target, token=t, timeout=60) for name, t in TOKENS.items()}
    opened["default"] = Client(server.target, token=OPERATOR, timeout=60)
    yield opened
    for client in opened.values():
        client.close()


def _ids(client: Client) -> set[str]:
    return {m.model_id for m in client.list_models()}


def test_another_tenants_model_is_not_found_like_an_unknown_id(clients):
    alice, bob = clients["alice"], clients["bob"]
    archive = _script(1)
    model_id = alice.upload(archive)
    assert model_id in _ids(alice) and model_id not in _ids(bob)
    torch.testing.assert_close(alice.jacobian(model_id, X).jacobian, _jacobian_here(archive))
    unknown = "0" * 64
    for call in (
        lambda m: bob.get_model(m),
        lambda m: bob.jacobian(m, X),
        lambda m: bob.jvp(m, (X,), (X,)),
        lambda m: bob.delete_model(m),
    ):
        with pytest.raises(NotFound) as hidden:
            call(model_id)
        with pytest.raises(NotFound) as missing:
            call(unknown)
        assert hidden.value.message.replace(model_id, "ID") == missing.value.message.replace(
            unknown, "ID"
        )
        assert hidden.value.reason == missing.value.reason == "MODEL_NOT_FOUND"
    assert model_id in _ids(alice)  # bob's delete removed nothing
    alice.delete_model(model_id)


def test_one_archive_of_two_tenants_is_stored_once_and_kept_for_the_other(server, clients):
    alice, bob = clients["alice"], clients["bob"]
    archive = _script(2)
    model_id = alice.upload(archive)
    assert bob.upload(archive) == model_id
    stored = pathlib.Path(server.store.path(model_id))
    assert stored.exists() and len(list(stored.parent.glob(f"{model_id}*.archive"))) == 1
    alice.delete_model(model_id)
    with pytest.raises(NotFound):
        alice.get_model(model_id)
    assert stored.exists()
    torch.testing.assert_close(bob.jacobian(model_id, X).jacobian, _jacobian_here(archive))
    bob.delete_model(model_id)
    assert not stored.exists()  # the last owner's delete removes the archive


def test_already_present_does_not_reveal_another_tenants_upload(server, clients):
    archive = _script(3)
    model_id = clients["alice"].upload(archive)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        metadata = (("authorization", f"Bearer {TOKENS['bob']}"),)

        def upload() -> pb.UploadModelResponse:
            return stub.UploadModel(iter([pb.UploadModelRequest(chunk=archive)]), metadata=metadata)

        first, second = upload(), upload()
    assert first.model.model_id == model_id
    assert (first.already_present, second.already_present) == (False, True)
    clients["alice"].delete_model(model_id)
    clients["bob"].delete_model(model_id)


def test_each_tenant_computes_in_workers_of_its_own(server, clients):
    alice, bob = clients["alice"], clients["bob"]
    archive = _script(4)
    model_id = alice.upload(archive)
    bob.upload(archive)
    alice.jacobian(model_id, X)
    bob.jacobian(model_id, X)
    alices = set(server.pool.pids(worker_key(model_id, "alice")))
    bobs = set(server.pool.pids(worker_key(model_id, "bob")))
    assert alices and bobs and not alices & bobs
    alice.delete_model(model_id)
    bob.delete_model(model_id)


def test_a_model_the_operator_placed_is_shared_and_only_the_operator_deletes_it(clients, preloaded):
    archive = preloaded[1]
    model_id = hashlib.sha256(archive).hexdigest()
    for name in ("alice", "bob", "default"):
        assert model_id in _ids(clients[name])
        torch.testing.assert_close(
            clients[name].jacobian(model_id, X).jacobian, _jacobian_here(archive)
        )
    with pytest.raises(PermissionDenied, match="operator"):
        clients["bob"].delete_model(model_id)
    clients["default"].delete_model(model_id)
    with pytest.raises(NotFound):
        clients["alice"].get_model(model_id)


def test_quotas_count_a_tenants_own_models(clients):
    carol = clients["carol"]
    first, second = carol.upload(_script(10)), carol.upload(_script(11))
    with pytest.raises(ResourceExhausted, match="tenant-max-models") as refused:
        carol.upload(_script(12))
    assert refused.value.reason == "QUOTA_EXCEEDED"
    assert refused.value.metadata["quota"] == "models"
    assert clients["bob"].upload(_script(12))  # other tenants are not affected
    carol.delete_model(first)
    carol.delete_model(second)
    big = _script(13, width=8000)  # ~390 kB of weights, above MAX_BYTES
    assert len(big) > MAX_BYTES
    with pytest.raises(ResourceExhausted, match="tenant-max-bytes") as refused:
        carol.upload(big)
    assert refused.value.metadata["quota"] == "bytes"
    assert _ids(carol) == set()


def test_requests_are_counted_by_tenant(server, clients):
    clients["alice"].list_models()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    assert 'jacserve_tenant_requests_total{code="OK",tenant="alice"}' in text
    assert 'tenant="carol"' in text  # its refusals were counted too


def test_a_token_file_with_a_bad_tenant_name_stops_the_server(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("team/a:secret\n")
    with (
        pytest.raises(ValueError, match="tenant name"),
        running_server(auth_token_file=str(tokens), workers=1),
    ):
        pass
