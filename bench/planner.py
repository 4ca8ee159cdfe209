"""Auto mode against the faster forced mode on the first and every later call, end to end.

Usage:
    python bench/planner.py            # n, m in {3, 100, 1000, 3000} and the SIR model:
                                       # writes bench/results/planner.md and BENCHMARKS.md
    python bench/planner.py --quick    # n, m in {3, 100}, once, no SIR (CI smoke run, ~10 s)

Models are exported with torch.export (as the SDK does with a module) and sent through
the SDK to a server with default settings but ``--compile off``: the default, ``on``,
builds compiled programs after two eager Jacobians, which then compete with the measured
calls (``--compile on`` measures that too). Every repeat uploads a fresh archive per
variant (auto, forward, reverse: the same program with another value in a buffer of no
effect), so each variant's first call is a real first call on its own worker, with
nothing measured; the calls of the three variants are interleaved, rotating who goes
first. The figure per call is the server's compute time (timing plan + forward +
derivative: what planning changes; the worker's start and the transport would only
dilute the ratio), the median over repeats; the ratio divides auto's by the faster
forced mode's at the same call number.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import tempfile
import time
import warnings

import torch
from models import Mlp  # bench/ is on sys.path as a script (as bench/suite.py's)

from jacserve.client import Client
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig

warnings.filterwarnings("ignore")
ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VARIANTS = ("auto", "forward", "reverse")


def _sir() -> type[torch.nn.Module]:
    spec = importlib.util.spec_from_file_location("sir", ROOT / "docs" / "examples" / "sir.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SIR


class Fresh(torch.nn.Module):
    """``inner`` with a buffer of no effect, so each copy is a new archive (a new worker)."""

    def __init__(self, inner: torch.nn.Module, tag: int) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("tag", torch.tensor(float(tag)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0 * self.tag  # used, so that no export drops it


def _compute_seconds(
    client: Client, model_id: str, x: torch.Tensor, mode: str
) -> tuple[float, str]:
    metrics = client.jacobian(model_id, x, mode=mode, progress=False).metrics
    timing = metrics.timing
    return timing["plan"] + timing["forward"] + timing["derivative"], metrics.mode


def run_case(
    client: Client, make: callable, x: torch.Tensor, calls: int, repeats: int, tags: list[int]
) -> tuple[dict[str, list[list[float]]], list[str]]:
    """Per variant, per call number, the compute seconds of each repeat; auto's modes."""
    times: dict[str, list[list[float]]] = {v: [[] for _ in range(calls)] for v in VARIANTS}
    chose: list[str] = []
    program = torch.export.export(Fresh(make(), 0), (x,))  # the SDK's way with a module
    for _ in range(repeats):
        ids = {}
        for variant in VARIANTS:
            tags[0] += 1
            program.state_dict["tag"].fill_(tags[0])  # a new archive: a new worker
            ids[variant] = client.upload(program)
        for call in range(calls):
            turn = (call + len(chose)) % len(VARIANTS)  # rotate who goes first
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                seconds, mode = _compute_seconds(client, ids[variant], x, variant)
                times[variant][call].append(seconds)
                if variant == "auto":
                    chose.append(mode[0])
        for model_id in ids.values():
            client.delete_model(model_id)
    return times, chose


def convergence(client: Client, calls: int) -> str:
    """Auto on MLP 3→100 (the prior's one miss here) for many calls: when it switches."""
    x = torch.randn(3)
    model_id = client.upload(torch.export.export(Fresh(Mlp(3, 100), -1), (x,)))
    modes = [client.jacobian(model_id, x, progress=False).metrics for _ in range(calls)]
    switched = next((i + 1 for i, m in enumerate(modes) if m.mode == "reverse"), None)
    last = modes[-1].mode_reason
    return (
        f"Auto on MLP 3→100 for {calls} calls on one archive: "
        + (f"first reverse run at call {switched}" if switched else "never switched to reverse")
        + f"; the last call's reason: “{last}”."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, once; writes nothing")
    parser.add_argument(
        "--compile", default="off", choices=("on", "off"), help="server's --compile"
    )
    args = parser.parse_args()
    sizes = [3, 100] if args.quick else [3, 100, 1000, 3000]
    calls, repeats = (2, 1) if args.quick else (5, 5)
    sir = _sir()
    cases: list[tuple[str, callable, torch.Tensor]] = []
    if not args.quick:  # exporting and loading its 80 RK4 steps takes most of a minute
        sir_x = torch.tensor([0.3, 0.1, 0.01], dtype=torch.float64)
        cases.append(("SIR 3→8 (float64)", lambda: sir(), sir_x))
    for n in sizes:
        for m in sizes:
            cases.append((f"MLP {n}→{m}", lambda n=n, m=m: Mlp(n, m), torch.randn(n)))
    rows, worst_first, worst_later, tags, matched = [], 0.0, 0.0, [0], 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as model_dir:
        running = serve(
            ServerConfig(
                port=0,
                metrics_port=None,
                model_dir=model_dir,
                log_level="WARNING",
                compile=args.compile,
            )
        )
        try:
            with Client(running.target, timeout=600) as client:
                for name, make, x in cases:
                    times, chose = run_case(client, make, x, calls, repeats, tags)
                    median = {v: [statistics.median(c) for c in times[v]] for v in VARIANTS}
                    ratios = [
                        median["auto"][c] / min(median["forward"][c], median["reverse"][c])
                        for c in range(calls)
                    ]
                    worst_first = max(worst_first, ratios[0])
                    worst_later = max(worst_later, max(ratios[1:]))
                    faster = "f" if sum(median["forward"][1:]) < sum(median["reverse"][1:]) else "r"
                    matched += set(chose) == {faster}  # on every call of every repeat
                    rows.append(
                        f"| {name} | {median['forward'][0] * 1e3:.2f} | {median['reverse'][0] * 1e3:.2f} "
                        f"| {median['auto'][0] * 1e3:.2f} | **{ratios[0]:.2f}** "
                        f"| {statistics.median(median['forward'][1:]) * 1e3:.2f} "
                        f"| {statistics.median(median['reverse'][1:]) * 1e3:.2f} "
                        f"| {' '.join(f'{r:.2f}' for r in ratios[1:])} | {''.join(chose[:calls])} ({faster}) |"
                    )
                    print(rows[-1], flush=True)
                tail = "" if args.quick else convergence(client, 120)
        finally:
            running.stop(grace=0)
    lines = [
        f"### Auto mode on first and later calls (SDK → default server, --compile {args.compile}, CPU)\n",
        f"`python bench/planner.py`: {repeats} repeats × {calls} calls per variant, each repeat "
        "on fresh archives (a new worker, nothing measured); figures are the server's compute "
        "time (plan + evaluation + derivative), medians over repeats, in ms; ratios are auto "
        "over the faster forced mode at the same call number. `chose` lists auto's mode per "
        "call of the first repeat (f/r) and, in brackets, the faster forced mode.\n",
        "| case | forward 1st | reverse 1st | auto 1st | auto / best, 1st call "
        "| forward later | reverse later | auto / best, calls 2… | chose |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Auto ran the faster forced mode on every call of {matched} of {len(cases)} cases.** "
        f"Worst first call {worst_first:.2f}×, worst later call {worst_later:.2f}× (target ≤ "
        "1.10× on each); where auto ran the same mode as the faster forced variant, the ratio "
        "compares the same work in two workers, so its spread is this machine's noise on "
        f"single calls. {time.perf_counter() - started:.0f} s.",
        "",
        tail,
        "",
    ]
    print("\n".join(lines))
    if not args.quick:
        sys.path.insert(0, str(ROOT / "bench"))
        from suite import machine, write_benchmarks

        RESULTS.mkdir(exist_ok=True)
        header = f"## Auto mode, first and later calls: {machine(torch.device('cpu'))}\n\n"
        (RESULTS / "planner.md").write_text(header + "\n".join(lines))
        write_benchmarks()


if __name__ == "__main__":
    main()
