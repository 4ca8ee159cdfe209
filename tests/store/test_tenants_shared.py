"""Tenants across replicas of one real S3 bucket (SeaweedFS): ownership lives in the
bucket, so what one replica granted or revoked holds on the other."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator

import pytest
import torch

from jacserve.client import Client, NotFound
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig

TTL = 0.3
TOKENS = {"alice": "alice-token", "bob": "bob-token"}
X = torch.tensor([0.5, -1.0, 2.0])


def _archive(seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2))), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def replicas(object_store, tmp_path_factory) -> Iterator[tuple[RunningServer, RunningServer, str]]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("".join(f"{tenant}:{token}\n" for tenant, token in TOKENS.items()))
    prefix = f"tenants-{secrets.token_hex(4)}"
    config = ServerConfig(
        port=0,
        metrics_port=None,
        compile="off",
        workers=1,
        model_store=f"s3://{object_store.bucket}/{prefix}",
        model_store_ttl=TTL,
        auth_token_file=str(tokens),
    )
    first = serve(config, object_store.environ)
    try:
        second = serve(config, object_store.environ)
        try:
            yield first, second, prefix
        finally:
            second.stop(grace=0)
    finally:
        first.stop(grace=0)


def _client(server: RunningServer, tenant: str) -> Client:
    return Client(server.target, token=TOKENS[tenant], timeout=60)


def test_grants_and_deletes_hold_on_every_replica(replicas, object_store):
    a, b, prefix = replicas
    archive = _archive(1)
    with (
        _client(a, "alice") as alice_a,
        _client(b, "alice") as alice_b,
        _client(b, "bob") as bob_b,
    ):
        model_id = alice_a.upload(archive)
        assert alice_b.jacobian(model_id, X).jacobian.shape == (2, 3)  # the other replica
        with pytest.raises(NotFound):
            bob_b.get_model(model_id)
        assert model_id not in {m.model_id for m in bob_b.list_models()}
        assert bob_b.upload(archive) == model_id  # stored once, granted twice
        listed = object_store.client().list_objects_v2(
            Bucket=object_store.bucket, Prefix=f"{prefix}/"
        )
        keys = {o["Key"].removeprefix(f"{prefix}/") for o in listed.get("Contents", [])}
        assert {f"owners/{model_id}/alice", f"owners/{model_id}/bob"} <= keys
        assert sum(k.startswith("archives/") for k in keys) == 1
        alice_a.delete_model(model_id)
        time.sleep(2 * TTL)  # the other replica re-reads the owners
        with pytest.raises(NotFound):
            alice_b.get_model(model_id)
        assert bob_b.jacobian(model_id, X).jacobian.shape == (2, 3)  # bob's grant stays
        bob_b.delete_model(model_id)
        time.sleep(2 * TTL)
        with _client(a, "bob") as bob_a, pytest.raises(NotFound):
            bob_a.get_model(model_id)
