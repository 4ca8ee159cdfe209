"""Real workers turned hostile: forked from the zygote, confined, their archive loaded,
then running attacker code (``tests/e2e/compromised/attacks.py``, injected into the
zygote through ``sitecustomize``). Each attack costs the attacker's own request only: the
frontend keeps serving, other users' models keep answering, nothing of theirs is reached.
The server compiles (``--compile on``, the default): serving workers may not fork or
exec, compile workers may (the C++ toolchain runs there).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, InvalidArgument, JacserveError
from jacserve.server.app import RunningServer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux confinement")

INJECTION = pathlib.Path(__file__).with_name("compromised")
X = torch.randn(3)


@pytest.fixture(scope="module")
def compromised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHON_JACSERVE_COMPROMISED")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(INJECTION), saved["PYTHONPATH"]]))
    os.environ["PYTHON_JACSERVE_COMPROMISED"] = "1"
    try:
        folder = str(tmp_path_factory.mktemp("compromised-models"))
        # Compiling, but never for ordinary traffic: only the attacker's forged request
        # reaches a compile worker (a compile of the victim, asked for by its Jacobians,
        # would hold the one-at-a-time compile queue for many seconds).
        with running_server(folder, workers=2, compile="on", compile_after=1_000_000) as running:
            yield running
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def client(compromised: RunningServer) -> Iterator[Client]:
    with Client(compromised.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def victim(client: Client) -> str:
    """Another user's model, with a live worker of its own."""
    torch.manual_seed(0)
    return client.upload(torch.jit.script(torch.nn.Linear(3, 2)))


@pytest.fixture(scope="module")
def attacker(client: Client) -> str:
    return client.upload(torch.jit.script(torch.nn.Tanh()))


def _attack(client: Client, model: str, *arguments: object) -> str:
    with pytest.raises(JacserveError) as info:
        client.jvp(model, X, X, method="attack:" + ":".join(map(str, arguments)))
    return str(info.value)


def _running(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _victim_is_served(client: Client, victim: str) -> None:
    linear = client.jacobian(victim, X)
    assert linear.jacobian.shape == (2, 3)


def test_a_hostile_worker_reaches_no_other_process_nor_the_store(
    client, compromised, victim, attacker
):
    (victim_pid,) = compromised.pool.pids(victim)
    archive = compromised.store.path(victim)
    message = _attack(client, attacker, "reach", os.getpid(), victim_pid, archive, compromised.port)
    found = json.loads(message[message.index("{") : message.rindex("}") + 1])
    assert not {k: v for k, v in found.items() if v == "allowed"}, found
    _victim_is_served(client, victim)


@pytest.mark.parametrize("attack", ["shrink_arena", "send_file", "nested_header"])
def test_a_malformed_reply_costs_only_the_attackers_request(client, victim, attack):
    attacker = client.upload(torch.jit.script(torch.nn.Sigmoid()))
    message = _attack(client, attacker, attack)
    assert "protocol error" in message, message
    _victim_is_served(client, victim)  # the frontend did not fault, leak or hang


def test_a_serving_worker_cannot_fork(client, victim):
    attacker = client.upload(torch.jit.script(torch.nn.ReLU()))
    with pytest.raises(InvalidArgument) as info:
        client.jvp(attacker, X, X, method="attack:leave_orphan")
    message = str(info.value)
    found = json.loads(message[message.index("{") : message.rindex("}") + 1])
    assert found["fork"].startswith("denied")
    _victim_is_served(client, victim)


def test_a_process_left_behind_by_a_compile_worker_is_killed(client, victim, caplog):
    attacker = client.upload(torch.jit.script(torch.nn.Softplus()))
    with caplog.at_level(logging.WARNING, logger="jacserve.server.compile"):
        with pytest.raises(JacserveError):  # a forged reply: the request itself fails
            client.jvp(attacker, X, X, method="attack:ask_to_compile:leave_orphan")
        deadline = time.monotonic() + 60
        while not any("orphan" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no compile worker ran the recipe"
            time.sleep(0.1)
    message = next(r.getMessage() for r in caplog.records if "orphan" in r.getMessage())
    found = json.loads(message[message.index("{") : message.rindex("}") + 1])
    assert found["fork"] == "allowed"  # a compile worker must be able to run the toolchain
    assert found["setsid"] == "denied"  # its child stays in its group, which dies with it
    deadline = time.monotonic() + 10
    while _running(found["orphan"]):
        assert time.monotonic() < deadline, "the orphan outlived its worker"
        time.sleep(0.1)
    _victim_is_served(client, victim)
