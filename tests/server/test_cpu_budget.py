"""The per-request CPU limit stops a request's own work, never background work."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

BURN = textwrap.dedent(
    """
    import os, sys, threading, time
    from jacserve.server.worker.cpu_budget import CpuBudget

    clocks = []

    def burn(seconds, background=False):
        if background:  # like the compile thread: lowest priority, its CPU clock watched
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            clocks.append(time.pthread_getcpuclockid(threading.get_ident()))
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def background():
        return time.clock_gettime(clocks[0]) if clocks else 0.0

    budget = CpuBudget(1, background_seconds=background, interval=0.05)
    case = sys.argv[1]
    if case == "request":
        with budget.request():
            burn(3)
    elif case == "background":
        compiling = threading.Thread(target=burn, args=(3, True))
        with budget.request():
            compiling.start()
            compiling.join()
    elif case == "between":
        with budget.request():
            pass
        burn(3)
    print("finished")
    """
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_CPU and thread clocks")


def _run(case: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BURN, case], capture_output=True, text=True, timeout=60
    )


def test_a_request_that_burns_past_its_budget_is_stopped():
    done = _run("request")
    assert done.returncode == -signal.SIGXCPU, (done.returncode, done.stderr)
    assert "finished" not in done.stdout


@pytest.mark.parametrize("case", ["background", "between"])
def test_background_work_is_not_charged_to_the_request(case):
    done = _run(case)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "finished" in done.stdout
