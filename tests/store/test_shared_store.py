"""Two replicas over one real S3 bucket (SeaweedFS) share their models.

An upload to one is served by the other, a delete on one is NOT_FOUND on the other within
``--model-store-ttl``, an archive altered in the bucket is refused, quarantine marks are
shared, and a replica's local copies stay within ``--model-cache-bytes``.
"""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator

import pytest
import torch

from jacserve.client import Client, RetryPolicy
from jacserve.client.errors import FailedPrecondition, NotFound, Unavailable
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig
from jacserve.server.registry.shared_store import SharedArchiveStore

TTL = 0.3


def _module(seed: int) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    return torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()))


def _archive(module: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _expected(module: torch.jit.ScriptModule, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian computed here: torch.func.jacrev of the same (unscripted) network."""
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    plain.load_state_dict(module.state_dict())
    return torch.func.jacrev(plain)(x)


CACHE_BYTES = 2 * len(_archive(_module(0))) + 64  # two archives, not three


def _replica(url: str, environ: dict[str, str], **settings: object) -> RunningServer:
    config = ServerConfig(
        port=0,
        metrics_port=None,
        compile="off",
        workers=1,
        model_store=url,
        model_store_ttl=TTL,
        **settings,  # type: ignore[arg-type]
    )
    return serve(config, environ)


@pytest.fixture(scope="module")
def replicas(object_store) -> Iterator[tuple[RunningServer, RunningServer]]:
    url = f"s3://{object_store.bucket}/test-{secrets.token_hex(4)}"
    a = _replica(url, object_store.environ)
    try:
        b = _replica(url, object_store.environ, model_cache_bytes=CACHE_BYTES)
        try:
            yield a, b
        finally:
            b.stop(grace=0)
    finally:
        a.stop(grace=0)


@pytest.fixture(scope="module")
def clients(replicas) -> Iterator[tuple[Client, Client]]:
    a, b = replicas
    with Client(a.target, timeout=60) as ca, Client(b.target, timeout=60) as cb:
        yield ca, cb


def _shared(running: RunningServer) -> SharedArchiveStore:
    assert isinstance(running.store, SharedArchiveStore)
    return running.store


def test_an_upload_to_one_replica_is_served_by_the_other(replicas, clients) -> None:
    (ca, cb), (_, b) = clients, replicas
    module = _module(1)
    model_id = ca.upload(module)
    x = torch.randn(3)
    result = cb.jacobian(model_id, x)  # B never saw it: it looks in the bucket
    torch.testing.assert_close(result.jacobian, _expected(module, x))
    assert cb.get_model(model_id).model_id == model_id
    assert model_id in {m.model_id for m in cb.list_models()}
    assert _shared(b).fetch_seconds, "B fetched the archive from the store"


def test_a_delete_on_one_replica_is_not_found_on_the_other(clients) -> None:
    ca, cb = clients
    module, x = _module(2), torch.randn(3)
    model_id = ca.upload(module)
    ca.jacobian(model_id, x)  # A knows it and has a warm worker for it
    cb.delete_model(model_id)
    time.sleep(TTL + 0.1)  # --model-store-ttl: how long A may still trust it
    with pytest.raises(NotFound) as caught:
        ca.jacobian(model_id, x)
    assert caught.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(NotFound):
        ca.get_model(model_id)
    assert model_id not in {m.model_id for m in ca.list_models()}


def test_an_archive_altered_in_the_bucket_is_refused(object_store, replicas, clients) -> None:
    (ca, cb), (_, b) = clients, replicas
    module, x = _module(3), torch.randn(3)
    model_id = ca.upload(module)
    data = bytearray(_archive(module))
    data[len(data) // 2] ^= 0xFF
    key = f"{_shared(b).bucket.prefix}archives/{model_id}"
    object_store.client().put_object(Bucket=object_store.bucket, Key=key, Body=bytes(data))
    with pytest.raises(FailedPrecondition) as caught:
        cb.jacobian(model_id, x)
    assert caught.value.reason == "ARCHIVE_CORRUPTED"
    assert "does not hash to its id" in str(caught.value)
    assert _shared(b).cache.get(model_id) is None, "nothing altered is kept or loaded"
    time.sleep(TTL + 0.1)
    with pytest.raises(NotFound):  # set aside (corrupted/ in the bucket): gone everywhere
        ca.get_model(model_id)
    assert cb.upload(_archive(module)) == model_id  # uploading it again repairs it
    torch.testing.assert_close(cb.jacobian(model_id, x).jacobian, _expected(module, x))


def test_a_quarantine_on_one_replica_is_refused_by_the_other(replicas, clients) -> None:
    (ca, cb), (a, _) = clients, replicas
    model_id = ca.upload(_module(4))
    _shared(a).catalog().quarantine(model_id, "its loader crashed (test)")
    time.sleep(TTL + 0.1)
    with pytest.raises(FailedPrecondition) as caught:
        cb.get_model(model_id)
    assert caught.value.reason == "MODEL_QUARANTINED"
    assert "its loader crashed (test)" in str(caught.value)
    cb.delete_model(model_id)  # an operator deletes it: gone for both
    with pytest.raises(NotFound):
        ca.get_model(model_id)


def test_local_copies_stay_within_the_cache_bound(replicas, clients) -> None:
    (ca, cb), (_, b) = clients, replicas
    store = _shared(b)
    modules = [_module(10 + i) for i in range(3)]
    ids = [ca.upload(m) for m in modules]
    x = torch.randn(3)
    for _ in range(2):
        for model_id, module in zip(ids, modules, strict=True):
            torch.testing.assert_close(cb.jacobian(model_id, x).jacobian, _expected(module, x))
            files = sum(p.stat().st_size for p in store.directory.glob("*.archive"))
            assert store.cache.size_bytes <= CACHE_BYTES and files <= CACHE_BYTES
    assert len(store.cache.ids()) == 2


def test_an_unreachable_store_is_unavailable_and_retryable(object_store):
    """A replica whose object store does not answer says so: UNAVAILABLE, reason
    MODEL_STORE_UNAVAILABLE, with a retry delay (not INTERNAL, which reads as a bug)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    environ = {**object_store.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}
    replica = _replica(f"s3://{object_store.bucket}/unreachable", environ)
    try:
        client = Client(replica.target, timeout=60, retry=RetryPolicy(max_attempts=1))
        with client, pytest.raises(Unavailable) as refused:
            client.get_model("0" * 64)
    finally:
        replica.stop(grace=0)
    assert refused.value.reason == "MODEL_STORE_UNAVAILABLE"
    assert refused.value.retry_delay is not None and refused.value.retry_delay > 0
