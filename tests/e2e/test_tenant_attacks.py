"""Red-team tests of tenants (issue #14): a tenant tries to reach another tenant's models.

Each test is an attack against a real server (real gRPC through the SDK or the generated
stubs) and passes when the defence holds. Seven of them got through the first version
of tenants (an unused operator archive privatised and deleted, racing deletes and
uploads, a quota overrun by concurrent uploads, upload timing and quarantine answers
telling of another tenant's archive, a stale owner cache publishing an upload); they
now test the fixes (NOTE: [Who owns an archive] in ``jacserve.server.access``).

Races are made deterministic by widening the server's window with a barrier or a pause
(``monkeypatch`` on the in-process server's classes); the attack itself is plain RPCs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.client import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from jacserve.codec import decode_tensor, encode_tensors
from jacserve.server.access import ModelAccess
from jacserve.server.app import RunningServer
from jacserve.server.registry.ownership import FolderObjects, Ownership
from jacserve.server.registry.store import ArchiveStore
from jacserve.server.tenants import TokenTable
from jacserve.server.worker.pool import worker_key
from jacserve.v1 import jacobian_service_pb2 as pb
from tests import hostile

TENANTS = ("alice", "bob", "carol", "dave", "eve", "frank")
TOKENS = {tenant: f"{tenant}-token" for tenant in TENANTS}
FILLERS = {f"t{i:02d}": f"filler-token-{i:02d}" for i in range(36)}  # metrics cardinality
OPERATOR = "operator-token"
X = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
MAX_MODELS, MAX_BYTES = 2, 500_000
SERVICE = pb.DESCRIPTOR.services_by_name["JacobianService"]
UNKNOWN = "0" * 64


def _script(seed: int, width: int = 3) -> bytes:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh()).double()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _id(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


OP_SHARED, OP_HIJACKED = _script(900), _script(901)  # placed in --model-dir by the operator
OPERATORS = {_id(OP_SHARED), _id(OP_HIJACKED)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    models = tmp_path_factory.mktemp("models")
    for archive in (OP_SHARED, OP_HIJACKED):
        (models / f"{_id(archive)}.archive").write_bytes(archive)
    return models


def _token_file(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "tokens"
    lines = [f"{t}:{k}" for t, k in {**TOKENS, **FILLERS}.items()]
    # an empty token must not make an empty bearer token valid for 'mallory'
    path.write_text("\n".join(["# attack fixture", *lines, "mallory:", OPERATOR, ""]))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder) -> Iterator[RunningServer]:
    with running_server(
        str(folder),
        workers=1,
        auth_token_file=str(_token_file(tmp_path_factory.mktemp("auth"))),
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


@pytest.fixture(scope="module")
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as opened:
        yield opened


def _ids(client: Client) -> set[str]:
    return {m.model_id for m in client.list_models()}


def _auth(token: str, request_id: str = "attack") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), ("x-request-id", request_id))


def _method(channel: grpc.Channel, name: str) -> Callable[..., Any]:
    """A callable of RPC ``name`` that takes the request and returns the response (a
    streaming response is read to its end)."""
    method = SERVICE.methods_by_name[name]
    path = f"/{SERVICE.full_name}/{name}"
    response_type = getattr(pb, method.output_type.name)
    if method.client_streaming:
        call = channel.stream_unary(path, lambda m: m.SerializeToString(), response_type.FromString)
        return lambda request, **kw: call(iter([request]), **kw)
    if method.server_streaming:
        stream = channel.unary_stream(
            path, lambda m: m.SerializeToString(), response_type.FromString
        )
        return lambda request, **kw: list(stream(request, **kw))
    return channel.unary_unary(path, lambda m: m.SerializeToString(), response_type.FromString)


def _naming(name: str, model_id: str) -> Any | None:
    """A request of RPC ``name`` that names ``model_id`` (None: the RPC names no model)."""
    request = getattr(pb, SERVICE.methods_by_name[name].input_type.name)()
    fields = request.DESCRIPTOR.fields_by_name
    if "model_id" in fields:
        request.model_id = model_id
    elif "function" in fields:
        request.function.model_id = model_id
    elif "request" in fields and "function" in request.request.DESCRIPTOR.fields_by_name:
        request.request.function.model_id = model_id
    else:
        return None
    return request


def _inline(channel: grpc.Channel, tenant: str, archive: bytes) -> torch.Tensor:
    """The Jacobian at X of an archive sent inline (FunctionRef.archive) by ``tenant``."""
    request = pb.JacobianRequest(
        function=pb.FunctionRef(archive=archive), inputs=encode_tensors([X])
    )
    reply = _method(channel, "Jacobian")(request, metadata=_auth(TOKENS[tenant]), timeout=60)
    return decode_tensor(reply.jacobian[0])


def _upload(channel: grpc.Channel, tenant: str, archive: bytes) -> pb.UploadModelResponse:
    """UploadModel straight away (the SDK asks GetModel first, which adopts an operator
    archive: an attacker does not)."""
    request = pb.UploadModelRequest(chunk=archive)
    return _method(channel, "UploadModel")(request, metadata=_auth(TOKENS[tenant]), timeout=60)


def _refusal(call: Callable[[], Any], model_id: str) -> tuple[Any, ...]:
    """What a refused call reveals: code, message, and every trailer (the rich status
    details included), with ``model_id`` replaced by a placeholder."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = refused.value
    trailers = tuple(
        (key, value.replace(model_id.encode(), b"ID") if isinstance(value, bytes) else value)
        for key, value in error.trailing_metadata() or ()
    )
    return error.code(), error.details().replace(model_id, "ID"), trailers


# -- identities -------------------------------------------------------------------------


def test_every_rpc_answers_another_tenants_id_word_for_word_like_an_unknown_one(channel, clients):
    """GetModel, DeleteModel and every RPC with a FunctionRef (StreamJacobian's nested
    one included): code, message, reason and rich details are the unknown id's."""
    archive = _script(1)
    model_id = clients["alice"].upload(archive)
    tried = []
    for name in SERVICE.methods_by_name:
        if _naming(name, model_id) is None:
            continue
        call = _method(channel, name)
        for attacker in ("bob", "default"):  # the operator's token is no master key

            def attack(target: str, call=call, name=name, attacker=attacker) -> Any:
                return call(_naming(name, target), metadata=_auth(TOKENS.get(attacker, OPERATOR)))

            hidden = _refusal(lambda: attack(model_id), model_id)
            missing = _refusal(lambda: attack(UNKNOWN), UNKNOWN)
            assert hidden == missing, name
            assert hidden[0] == grpc.StatusCode.NOT_FOUND, name
        tried.append(name)
    assert {"GetModel", "DeleteModel", "Jacobian", "StreamJacobian", "Hessian"} <= set(tried)
    assert clients["alice"].get_model(model_id).model_id == model_id  # nothing was deleted
    torch.testing.assert_close(
        clients["alice"].jacobian(model_id, X).jacobian,
        torch.func.jacrev(torch.jit.load(io.BytesIO(archive)))(X),
    )
    clients["alice"].delete_model(model_id)


def test_id_variants_are_malformed_alike_for_owned_and_unowned_ids(channel, clients):
    """Case, whitespace, prefixes, suffixes and paths: never a model, never an oracle."""
    model_id = clients["alice"].upload(_script(2))
    get = _method(channel, "GetModel")
    delete = _method(channel, "DeleteModel")
    variants = [
        model_id.upper(),
        f" {model_id}",
        f"{model_id}\n",
        model_id[:63],
        model_id + "0",
        f"../{model_id}",
        f"owners/{model_id}/alice",
        f"{model_id}/alice",
        f"{model_id}@alice",
        "*",
    ]
    for variant in variants:
        for rpc in (get, delete):
            answers = {
                who: _refusal(
                    lambda rpc=rpc, v=variant, t=token: rpc(
                        pb.GetModelRequest(model_id=v)
                        if rpc is get
                        else pb.DeleteModelRequest(model_id=v),
                        metadata=_auth(t),
                    ),
                    model_id,
                )
                for who, token in (("alice", TOKENS["alice"]), ("bob", TOKENS["bob"]))
            }
            assert answers["alice"] == answers["bob"], variant
            assert answers["bob"][0] == grpc.StatusCode.INVALID_ARGUMENT, variant
    assert _ids(clients["alice"]) >= {model_id}
    clients["alice"].delete_model(model_id)


def test_token_variants_never_reach_another_tenant(channel, clients):
    model_id = clients["alice"].upload(_script(3))
    listing = _method(channel, "ListModels")

    def listed(header: str) -> set[str] | grpc.StatusCode:
        try:
            reply = listing(pb.ListModelsRequest(), metadata=(("authorization", header),))
        except grpc.RpcError as error:
            return error.code()
        return {m.model_id for m in reply.models}

    for header in ("bearer alice-token", "BEARER alice-token", "Bearer   alice-token  "):
        assert model_id in listed(header), header  # the same tenant, spelled loosely
    refused = [
        "Basic alice-token",
        "alice-token",
        "Bearer alice-toke",  # a prefix of a token
        "Bearer alice-token-x",  # a token extended
        "Bearer alice:alice-token",  # the token file's line
        "Bearer alice",  # the tenant's name
        "Bearer ",  # 'mallory:' has an empty token in the file
        "Bearer",
        "Bearer ALICE-TOKEN",
        "",
    ]
    for header in refused:
        assert listed(header) == grpc.StatusCode.UNAUTHENTICATED, repr(header)
    assert model_id not in listed("Bearer bob-token")
    # two authorization headers: the call is one tenant's, never both
    both = listing(
        pb.ListModelsRequest(),
        metadata=(("authorization", "Bearer bob-token"), ("authorization", "Bearer bob-token")),
    )
    assert model_id not in {m.model_id for m in both.models}
    clients["alice"].delete_model(model_id)


@pytest.mark.parametrize(
    "line",
    [
        "../alice:t",
        "a/b:t",
        "*:t",
        ".hidden:t",
        "a\\b:t",
        "-x:t",
        "x" * 64 + ":t",
        "a b:t",
        "alice@x:t",
        "\u00e9:t",
    ],
)
def test_a_tenant_name_cannot_name_a_path_or_the_public_owner(line):
    with pytest.raises(ValueError, match="tenant name"):
        TokenTable.parse([line])


def test_one_token_cannot_belong_to_two_tenants():
    with pytest.raises(ValueError, match="two tenants"):
        TokenTable.parse(["alice:same", "bob:same"])
    with pytest.raises(ValueError, match="two tenants"):
        TokenTable.parse(["same", "bob:same"])  # nor be the operator's and a tenant's


# -- isolation of computation -----------------------------------------------------------


def test_tenants_never_share_a_worker_of_one_archive(server, channel, clients):
    """alice, bob and the operator on one shared archive, and bob's inline copy of
    alice's private archive: disjoint worker processes, and bob's delete keeps alice's."""
    shared = _id(OP_SHARED)
    for name in ("alice", "bob", "default"):
        clients[name].jacobian(shared, X)
    pids = {name: set(server.pool.pids(worker_key(shared, name))) for name in ("alice", "bob")}
    pids["default"] = set(server.pool.pids(shared)) - pids["alice"] - pids["bob"]
    assert all(pids.values()), pids
    assert not (pids["alice"] & pids["bob"] or pids["alice"] & pids["default"])
    assert not pids["bob"] & pids["default"]

    private = _script(4)
    model_id = clients["alice"].upload(private)
    clients["alice"].jacobian(model_id, X)
    alices = set(server.pool.pids(worker_key(model_id, "alice")))
    assert _inline(channel, "bob", private).shape == (3, 3)  # bob has the bytes: his grant
    bobs = set(server.pool.pids(worker_key(model_id, "bob")))
    assert alices and bobs and not alices & bobs
    assert model_id in _ids(clients["bob"])
    clients["bob"].delete_model(model_id)
    assert clients["alice"].jacobian(model_id, X).jacobian.shape == (3, 3)
    assert set(server.pool.pids(worker_key(model_id, "alice"))) & alices  # not stopped
    clients["alice"].delete_model(model_id)


# -- the operator's archives --------------------------------------------------------------


def test_a_tenant_uploading_an_adopted_operator_archive_keeps_it_shared(server, channel, clients):
    shared = _id(OP_SHARED)  # adopted by the previous test's use
    clients["alice"].get_model(shared)
    assert _upload(channel, "bob", OP_SHARED).model.model_id == shared
    clients["bob"].delete_model(shared)  # removes bob's grant only
    with pytest.raises(PermissionDenied):
        clients["bob"].delete_model(shared)
    assert shared in _ids(clients["carol"])
    assert clients["carol"].get_model(shared).model_id == shared
    assert server.store.path(shared).exists()


def test_a_tenant_cannot_privatise_or_delete_an_unused_operator_archive(server, channel, clients):
    hijacked = _id(OP_HIJACKED)
    assert hijacked in _ids(clients["alice"])  # listing does not adopt it
    assert _upload(channel, "bob", OP_HIJACKED).model.model_id == hijacked  # same bytes
    try:
        assert hijacked in _ids(clients["alice"])
        assert clients["alice"].get_model(hijacked).model_id == hijacked
    finally:
        with contextlib.suppress(NotFound, PermissionDenied):
            clients["bob"].delete_model(hijacked)
    assert server.store.path(hijacked).exists(), "bob deleted the operator's archive"
    assert clients["carol"].get_model(hijacked).model_id == hijacked


# -- ownership races ------------------------------------------------------------------------


def test_two_owners_deleting_at_once_do_not_make_their_archive_public(server, clients, monkeypatch):
    archive = _script(5)
    model_id = clients["alice"].upload(archive)
    clients["bob"].upload(archive)
    both = threading.Barrier(2, timeout=10)
    decide = ModelAccess.deletion

    def deletion(self: ModelAccess, model_id: str, tenant: str) -> tuple[str, bool]:
        decided = decide(self, model_id, tenant)
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait()  # both owners have decided before either revokes
        return decided

    monkeypatch.setattr(ModelAccess, "deletion", deletion)
    threads = [
        threading.Thread(target=clients[name].delete_model, args=(model_id,))
        for name in ("alice", "bob")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    try:
        with pytest.raises(NotFound):
            clients["carol"].get_model(model_id)
        assert model_id not in _ids(clients["carol"])
        assert not server.store.path(model_id).exists()
    finally:
        with contextlib.suppress(NotFound):
            clients["default"].delete_model(model_id)  # as the operator, once public


def test_a_delete_racing_another_tenants_upload_keeps_the_uploaded_model(clients, monkeypatch):
    archive = _script(6)
    model_id = clients["alice"].upload(archive)
    uploaded = threading.Event()
    decide = ModelAccess.deletion

    def deletion(self: ModelAccess, model_id: str, tenant: str) -> tuple[str, bool]:
        decided = decide(self, model_id, tenant)
        uploaded.wait(10)  # bob's upload lands between the decision and the removal
        return decided

    monkeypatch.setattr(ModelAccess, "deletion", deletion)
    deleting = threading.Thread(target=clients["alice"].delete_model, args=(model_id,))
    deleting.start()
    time.sleep(0.3)
    try:
        assert clients["bob"].upload(archive) == model_id
    finally:
        uploaded.set()
        deleting.join()
        monkeypatch.undo()
    try:
        assert clients["bob"].get_model(model_id).model_id == model_id
    finally:
        with contextlib.suppress(NotFound):
            clients["bob"].delete_model(model_id)


# -- quotas ----------------------------------------------------------------------------------


def test_quotas_hold_for_inline_archives_and_re_uploads(channel, clients):
    carol = clients["carol"]
    first, second = _script(20), _script(21)
    carol.upload(first)
    _inline(channel, "carol", second)  # an inline archive is an upload too
    assert _ids(carol) - OPERATORS == {_id(first), _id(second)}
    assert carol.upload(first) == _id(first)  # a re-upload costs nothing
    with pytest.raises(grpc.RpcError) as refused:
        _inline(channel, "carol", _script(22))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant-max-models" in refused.value.details()
    upload = _method(channel, "UploadModel")
    with pytest.raises(grpc.RpcError) as again:
        upload(pb.UploadModelRequest(chunk=_script(23)), metadata=_auth(TOKENS["carol"]))
    assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # an operator archive does not count and needs no quota
    assert carol.jacobian(_id(OP_SHARED), X).jacobian.shape == (3, 3)
    # the byte count in bob's refusal is bob's own, not carol's or the store's
    big = _script(24, width=16000)
    assert len(big) > MAX_BYTES
    with pytest.raises(ResourceExhausted, match=r"from 0 bytes") as bytes_refused:
        clients["bob"].upload(big)
    assert "carol" not in bytes_refused.value.message
    for model in (first, second):
        carol.delete_model(_id(model))
    assert _ids(carol) - OPERATORS == set()


def test_concurrent_uploads_do_not_exceed_the_model_quota(server, monkeypatch):
    archives = [_script(30 + i) for i in range(MAX_MODELS + 1)]
    counted = threading.Barrier(len(archives), timeout=5)
    usage = Ownership.usage

    def slow_usage(self: Ownership, tenant: str) -> tuple[int, int]:
        used = usage(self, tenant)
        with contextlib.suppress(threading.BrokenBarrierError):
            counted.wait()  # every upload has counted before any is granted
        return used

    monkeypatch.setattr(Ownership, "usage", slow_usage)
    results: list[object] = []

    def upload(archive: bytes) -> None:
        with Client(server.target, token=TOKENS["dave"], timeout=60) as dave:
            try:
                results.append(dave.upload(archive))
            except ResourceExhausted as refused:
                results.append(refused)

    threads = [threading.Thread(target=upload, args=(a,)) for a in archives]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    with Client(server.target, token=TOKENS["dave"], timeout=60) as dave:
        owned = _ids(dave) - OPERATORS
        for model_id in owned:
            dave.delete_model(model_id)
    assert len(owned) <= MAX_MODELS, results


# -- existence oracles -----------------------------------------------------------------------


def test_an_upload_does_not_tell_that_another_tenant_uploaded_a_crashing_archive(clients):
    crashing = hostile.deeply_nested()
    with pytest.raises(InvalidArgument) as first:
        clients["eve"].upload(crashing)
    try:
        with pytest.raises(NotFound):
            clients["frank"].get_model(_id(crashing))  # not frank's, not revealed here
        with pytest.raises((InvalidArgument, FailedPrecondition)) as second:
            clients["frank"].upload(crashing)
        assert type(second.value) is type(first.value)
        assert second.value.reason == first.value.reason
    finally:
        for name in ("eve", "frank"):
            with contextlib.suppress(NotFound):
                clients[name].delete_model(_id(crashing))


def test_upload_time_does_not_tell_that_another_tenant_has_the_archive(channel, clients):
    seen, fresh = [], []
    for seed in range(40, 45):
        theirs, new = _script(seed), _script(seed + 100)
        clients["alice"].upload(theirs)
        started = time.perf_counter()
        _upload(channel, "bob", theirs)
        seen.append(time.perf_counter() - started)
        started = time.perf_counter()
        _upload(channel, "bob", new)
        fresh.append(time.perf_counter() - started)
        for name, archive in (("alice", theirs), ("bob", theirs), ("bob", new)):
            clients[name].delete_model(_id(archive))
    assert sorted(seen)[2] > sorted(fresh)[2] / 4, (seen, fresh)  # medians


def test_already_present_and_list_are_per_tenant_for_inline_archives(clients):
    archive = _script(7)
    model_id = _id(archive)
    clients["alice"].jacobian(archive, X)  # inline: stored and granted to alice
    assert model_id in _ids(clients["alice"]) and model_id not in _ids(clients["bob"])
    for name in ("bob", "default"):
        with pytest.raises(NotFound):
            clients[name].get_model(model_id)
    clients["alice"].delete_model(model_id)
    with pytest.raises(NotFound):
        clients["alice"].get_model(model_id)


# -- metrics ---------------------------------------------------------------------------------


def test_the_tenant_label_stays_bounded(server):
    for token in FILLERS.values():
        with Client(server.target, token=token, timeout=60) as filler:
            filler.list_models()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    labels = set(re.findall(r'jacserve_tenant_requests_total\{[^}]*tenant="([^"]*)"', text))
    assert "other" in labels
    assert len(labels) <= 33, labels  # 32 tenants, then 'other'
    assert "mallory" not in labels


# -- replicas over one store -------------------------------------------------------------------


def test_a_stale_owner_cache_on_another_replica_does_not_publish_a_private_upload(
    tmp_path, monkeypatch
):
    """Two replicas over one store; the second trusts grants for 30 s like a replica of
    an S3 store with --model-store-ttl 30 (its Ownership gets that TTL)."""
    tokens = _token_file(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    settings = {"workers": 1, "auth_token_file": str(tokens), "warm_workers": 1}
    with running_server(str(store), **settings) as first:
        monkeypatch.setattr(
            ArchiveStore,
            "ownership",
            lambda self: Ownership(FolderObjects(self.directory), ttl_seconds=30),
        )
        with running_server(str(store), **settings) as second:
            monkeypatch.undo()
            archive = _script(8)
            model_id = _id(archive)
            with (
                Client(first.target, token=TOKENS["alice"], timeout=60) as alice_1,
                Client(second.target, token=TOKENS["alice"], timeout=60) as alice_2,
                Client(second.target, token=TOKENS["carol"], timeout=60) as carol_2,
            ):
                with pytest.raises(NotFound):  # the SDK's upload asks first
                    alice_2.get_model(model_id)
                assert alice_1.upload(archive) == model_id  # the balancer picked replica 1
                with pytest.raises(NotFound):
                    carol_2.get_model(model_id)
                assert model_id not in _ids(carol_2)
