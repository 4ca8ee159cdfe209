"""The compile queue and the pool's slot bookkeeping against a compromised worker's
replies (red-team findings), with socket pairs standing in for compile workers."""

from __future__ import annotations

import socket
import threading
import time

from jacserve.server.worker.compiling import _MAX_RUNS, CompileQueue, _Archive
from jacserve.server.worker.pool import WorkerPool
from jacserve.server.worker.protocol import Channel
from jacserve.server.worker.settings import WorkerSettings


class _Process:
    pid = 4242

    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int:
        return -9

    def poll(self) -> None: ...
    def close(self) -> None: ...


class _Worker:
    """What the pool reads of a worker: serial, slot, model, stop()."""

    def __init__(self, serial: int, slot: int) -> None:
        self.serial, self.slot, self.model_id, self.process = serial, slot, "A", _Process()

    def stop(self) -> int:
        return -9


def test_a_replaced_worker_that_dies_busy_gives_its_slot_back_once(tmp_path):
    pool = WorkerPool(
        WorkerSettings(scratch_dir=str(tmp_path)), 2, max_queue=8,
        archive_path=lambda model_id: "/nonexistent", max_warm=4,
    )  # fmt: skip
    old = _Worker(1, pool._free_slots.pop(0))
    pool._live[old.serial], pool._busy, pool._compiling = old, 1, 1
    pool.promote(_Worker(2, pool._free_slots.pop(0)), replaces=old.serial)
    pool._retire(old, "crash")  # its request crashed: retired by _died ...
    pool._release(old)  # ... and released by _run's finally
    assert pool._free_slots.count(old.slot) == 1


def _compile_worker(replies: list[dict]) -> tuple[object, list, list]:
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel, worker_end = Channel(front), Channel(back)

    class Worker:
        serial, slot, model_id = 7, 0, "A"

    Worker.channel = channel
    promoted: list = []
    discarded: list = []

    class Workers:
        def fork_compile_worker(self, model_id: str, directory: str) -> object:
            return Worker()

        def promote(self, worker: object, replaces: int | None) -> None:
            promoted.append(worker)

        def discard(self, worker: object) -> None:
            discarded.append(worker)

    def hostile() -> None:
        for reply in replies:
            worker_end.receive(max_payload_bytes=1 << 20)
            worker_end.send(reply)
        time.sleep(30)

    threading.Thread(target=hostile, daemon=True).start()
    return Workers(), promoted, discarded


def test_a_compile_worker_that_does_not_confirm_promotion_is_discarded(tmp_path):
    workers, promoted, discarded = _compile_worker(
        [{"ok": True, "outcomes": []}, {"ok": False, "message": "did not drop exec"}]
    )
    queue = CompileQueue(workers, str(tmp_path), timeout=5)
    queue._archives["A"] = _Archive()
    assert queue._run("A", [("k", ("Jvp", b"x"))], replaces=3) is True
    assert not promoted and discarded


def test_an_archive_gets_a_bounded_number_of_compile_workers(tmp_path):
    queue = CompileQueue(None, str(tmp_path), timeout=5)
    queue._thread = object()  # no thread: only the bookkeeping is looked at
    queued = 0
    for _ in range(100):  # a compromised worker repeating a key that is ready
        queue.requested("A", ["k"], "Jvp", b"x", worker=1)
        archive = queue._archives["A"]
        if archive.queued:
            queued += 1
            queue._order.clear()
            archive.queued, archive.runs = False, archive.runs + 1
            archive.settled["k"] = "ready"
    assert queued == _MAX_RUNS


def test_unserved_keys_stay_small_in_bytes(tmp_path):
    queue = CompileQueue(None, str(tmp_path), timeout=5)
    queue._archives["A"] = _Archive()
    queue._unserved("A", ["\u2603" * 900 + str(i) for i in range(40)], "timeout")  # 6 B a char
    queue._unserved("A", [f"k{i}" for i in range(40)], "timeout")
    unserved = queue.unserved("A")
    assert len(unserved) <= 16 and all(not k.startswith("\u2603") for k in unserved)
