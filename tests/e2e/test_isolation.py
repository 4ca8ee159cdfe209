"""A compromised worker reaches nothing but itself.

The attacker here is a process confined exactly as every worker confines itself before
its archive arrives (``process._confine`` with the running server's worker settings),
then running Python of its choosing — what a worker is once an archive has found a way
to run code. Its targets are real: the frontend (this test process, which serves), a
live worker of another user's model, the model store, the gRPC port.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.client import Client
from jacserve.server.app import RunningServer
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux confinement")

ATTACKER = textwrap.dedent(
    """
    import ctypes, json, os, resource, signal, socket, sys, threading
    from jacserve.server.worker.process import _confine
    from jacserve.server.worker.settings import WorkerSettings
    settings = WorkerSettings.from_json(sys.argv[1])
    frontend, victim, archive, port = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    os.makedirs(settings.scratch_dir, exist_ok=True)
    _confine(settings, slot=1, own_uid=False)
    libc = ctypes.CDLL(None, use_errno=True)
    found = {}

    def attempt(name, action):
        try:
            result = action()
            found[name] = "allowed" if result is None or result is not False else "denied"
        except OSError as exc:
            found[name] = f"denied: {exc.errno}"

    def syscall_ok(value):
        if value != 0:
            raise OSError(ctypes.get_errno(), "refused")

    for pid, who in ((frontend, "frontend"), (victim, "victim")):
        attempt(f"{who}_environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
        attempt(f"{who}_maps", lambda: open(f"/proc/{pid}/maps").read())
        attempt(f"{who}_mem", lambda: open(f"/proc/{pid}/mem", "rb").read(1))
        attempt(f"{who}_fds", lambda: os.listdir(f"/proc/{pid}/fd"))
        attempt(f"{who}_signal", lambda: os.kill(pid, 0))
        attempt(f"{who}_ptrace", lambda: syscall_ok(libc.ptrace(16, pid, 0, 0)))
        attempt(f"{who}_pidfd", lambda: os.pidfd_open(pid))
        attempt(f"{who}_prlimit", lambda: resource.prlimit(pid, resource.RLIMIT_CPU))
        attempt(f"{who}_scheduler", lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)))
        attempt(f"{who}_priority", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
    attempt("fork", lambda: os.fork() or os._exit(0))
    attempt("renice_my_uid", lambda: os.setpriority(os.PRIO_USER, 0, 19))
    attempt("renice_my_group", lambda: os.setpriority(os.PRIO_PGRP, 0, 19))
    attempt("datagram_pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    attempt("memfd_secret", lambda: syscall_ok(min(0, libc.syscall(447, 0))))
    attempt("sysv_shared_memory", lambda: syscall_ok(min(0, libc.shmget(0, 1 << 20, 0o1600))))
    attempt("signal_everyone", lambda: os.kill(-1, 0))
    attempt("signal_group", lambda: os.kill(0, 0))
    attempt("read_archive", lambda: open(archive, "rb").read(1))
    attempt("list_store", lambda: os.listdir(os.path.dirname(archive)))
    attempt("tcp_to_server", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
    attempt("exec", lambda: os.execv("/bin/sh", ["sh", "-c", "true"]))
    attempt("new_user_namespace", lambda: syscall_ok(libc.unshare(0x10000000)))
    attempt("write_outside_scratch", lambda: open("/tmp/jacserve-escaped", "w").write("x"))
    attempt("write_scratch", lambda: open(os.path.join(settings.scratch_dir, "ok"), "w").write("x"))
    attempt("signal_itself", lambda: os.kill(os.getpid(), 0))
    attempt("own_limits", lambda: resource.prlimit(0, resource.RLIMIT_CPU))
    attempt("renice_itself", lambda: os.setpriority(os.PRIO_PROCESS, 0, 1))
    attempt("stream_pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    thread = threading.Thread(target=lambda: None)
    attempt("threads", lambda: (thread.start(), thread.join()) and None)
    print(json.dumps(found))
    """
)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = str(tmp_path_factory.mktemp("isolated-models"))
    with running_server(folder, workers=2) as running:
        yield running


def test_a_compromised_worker_reaches_nothing_but_itself(isolated, tmp_path):
    with Client(isolated.target, timeout=60) as client:
        other_user = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
    (victim,) = isolated.pool.pids(other_user)
    settings = dataclasses.replace(isolated.pool.settings, scratch_dir=str(tmp_path / "scratch"))
    archive = isolated.store.path(other_user)
    targets = [str(os.getpid()), str(victim), str(archive), str(isolated.port)]
    out = subprocess.run(
        [sys.executable, "-P", "-c", ATTACKER, settings.to_json(), *targets],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    reached = {k: v for k, v in found.items() if v == "allowed"}
    mine = {"write_scratch", "signal_itself", "own_limits", "threads", "renice_itself"}
    assert set(reached) == mine | {"stream_pair"}, found
    assert not pathlib.Path("/tmp/jacserve-escaped").exists()


def test_workers_get_no_secret_of_the_frontend_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-workers")
    monkeypatch.setenv("JACSERVE_AUTH_TOKEN", "not-for-workers-either")
    with (
        running_server(str(tmp_path)) as running,
        Client(running.target, token="not-for-workers-either", timeout=60) as client,
    ):
        model = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        (worker,) = running.pool.pids(model)
        zygote = int(pathlib.Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
        environment = pathlib.Path(f"/proc/{zygote}/environ").read_bytes()
    assert b"not-for-workers" not in environment and b"PATH=" in environment


def test_workers_serve_one_archive_each_and_never_read_the_store(isolated):
    with Client(isolated.target, timeout=60) as client:
        first = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        second = client.upload(torch.jit.script(torch.nn.Linear(3, 4)))
        x = torch.randn(3)
        assert client.jacobian(first, x).jacobian.shape == (2, 3)
        assert client.jacobian(second, x).jacobian.shape == (4, 3)
    first_pids, second_pids = set(isolated.pool.pids(first)), set(isolated.pool.pids(second))
    assert first_pids and second_pids and not first_pids & second_pids
    for pid in first_pids | second_pids:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
        assert "CapEff:\t0000000000000000" in status
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [p for p in held if p.endswith(".archive")], held  # its archive was read


def test_a_long_error_message_is_cut_and_the_worker_survives(isolated):
    with Client(isolated.target, timeout=60) as client:
        model = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        pids = set(isolated.pool.pids(model))
        with pytest.raises(Exception, match="has no method") as info:
            client.jacobian(model, torch.randn(3), method="m" * 70_000)
        assert len(str(info.value)) < 10_000
        assert set(isolated.pool.pids(model)) == pids  # the same worker, still alive
        assert client.jacobian(model, torch.randn(3)).jacobian.shape == (2, 3)


def test_a_tensor_of_100k_dimensions_is_refused_before_decoding(isolated):
    with Client(isolated.target, timeout=60) as client:
        model = client.upload(torch.jit.script(torch.nn.Tanh()))
    deep = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * 100_000, data=b"\0" * 4)
    request = pb.JvpRequest(
        function=pb.FunctionRef(model_id=model), primals=[deep], tangents=[deep]
    )
    with grpc.insecure_channel(isolated.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Jvp(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dimensions" in info.value.details()
    assert set(isolated.pool.pids(model))  # its worker is alive and well
