"""Derivative-based global sensitivity: jacserve against SALib's DGSM and a local loop.

Usage:
    python bench/global_sensitivity.py          # full run: writes
                                                # bench/results/global-sensitivity.md and
                                                # regenerates BENCHMARKS.md (a few minutes)
    python bench/global_sensitivity.py --quick  # seconds, writes nothing (CI smoke run)

Issue #15. The Ishigami function (a = 7, b = 0.1, x ~ U(−π, π)³), whose DGSM has a
closed form (ν₁ = ½(1 + 2bπ⁴/5 + b²π⁸/9), ν₂ = a²/2, ν₃ = 8b²π⁶/7):

- **accuracy at equal model evaluations**: SALib's DGSM (``SALib.sample.finite_diff``
  with its default step, then ``SALib.analyze.dgsm``) costs N·(k+1) model runs for N base
  points; jacserve's ``Client.global_sensitivity`` with S = N points costs N Jacobians,
  each one evaluation and k = 3 forward-mode passes, the same count. The figure is the
  largest relative error of ν against the closed form, median over seeds;
- **time per design point**: ``Client.global_sensitivity`` through the SDK against a
  **default** server in its own process, against ``torch.func.vmap(torch.func.jacrev)``
  over the same points in this process (the local optimum, nothing to accumulate
  remotely), and against SALib's sampling + model runs + analysis.

SALib comes with the bench extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time
import warnings

import grpc
import numpy as np
import torch

from jacserve.client import Client, Uniform

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from request_path import start_server

warnings.filterwarnings("ignore")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
A, B = 7.0, 0.1
NU = np.array([0.5 * (1 + 2 * B * math.pi**4 / 5 + B**2 * math.pi**8 / 9), A**2 / 2,
               8 * B**2 * math.pi**6 / 7])  # fmt: skip


class Ishigami(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x[0]) + 7.0 * torch.sin(x[1]) ** 2 + 0.1 * x[2] ** 4 * torch.sin(x[0])


def ishigami_numpy(x: np.ndarray) -> np.ndarray:
    return np.sin(x[:, 0]) + A * np.sin(x[:, 1]) ** 2 + B * x[:, 2] ** 4 * np.sin(x[:, 0])


def salib_dgsm(points: int, seed: int) -> tuple[np.ndarray, float]:
    """SALib's ν (``vi``) from ``points`` base points, and the seconds it took (NaN when
    SALib is not installed: it comes with the bench extra only, not with CI's dev one)."""
    try:
        from SALib.analyze import dgsm
        from SALib.sample import finite_diff
    except ImportError:
        return np.full(3, np.nan), math.nan

    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[-math.pi, math.pi]] * 3}
    started = time.perf_counter()
    design = finite_diff.sample(problem, points, seed=seed)
    values = ishigami_numpy(design)
    found = dgsm.analyze(problem, design, values, seed=seed)
    return np.asarray(found["vi"]), time.perf_counter() - started


def jacserve_dgsm(
    client: Client, model_id: str, points: int, seed: int
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = client.global_sensitivity(
        model_id, torch.zeros(3, dtype=torch.float64), distribution=Uniform(-math.pi, math.pi),
        samples=points, seed=seed, bootstrap=0,
    )  # fmt: skip
    return result.dgsm[0].numpy(), time.perf_counter() - started


def local_loop(points: int, seed: int) -> float:
    """Seconds for vmap(jacrev) of the model over the same number of Sobol' points."""
    model = Ishigami()
    design = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(
        points, dtype=torch.float64
    )
    x = -math.pi + 2 * math.pi * design
    started = time.perf_counter()
    jac = torch.func.vmap(torch.func.jacrev(model))(x)
    (jac**2).mean(0)
    return time.perf_counter() - started


def _error(nu: np.ndarray) -> float:
    return float(np.max(np.abs(nu - NU) / NU))


def measure(target: str, sizes: list[int], seeds: int) -> list[dict[str, float]]:
    rows = []
    with Client(target, timeout=600) as client:
        model_id = client.upload(torch.jit.script(Ishigami()))
        jacserve_dgsm(client, model_id, 64, 0)  # warm the worker, and torch.func here
        local_loop(64, 0)
        for points in sizes:
            errors = {"jacserve": [], "salib": []}
            times = {"jacserve": [], "salib": [], "local": []}
            for seed in range(seeds):
                nu, seconds = jacserve_dgsm(client, model_id, points, seed)
                errors["jacserve"].append(_error(nu))
                times["jacserve"].append(seconds)
                nu, seconds = salib_dgsm(points, seed)
                errors["salib"].append(_error(nu))
                times["salib"].append(seconds)
                times["local"].append(local_loop(points, seed))
            row = {"points": points, "evaluations": points * 4}
            for name, values in errors.items():
                row[f"error {name}"] = statistics.median(values)
            for name, values in times.items():
                row[f"us/point {name}"] = 1e6 * statistics.median(values) / points
            rows.append(row)
    return rows


def report(rows: list[dict[str, float]]) -> str:
    lines = [
        "| points N | model evaluations (N·(k+1)) | max rel. error of ν: jacserve | SALib DGSM "
        "(finite differences) | µs per point: jacserve (SDK → server) | local vmap(jacrev) "
        "| SALib sample + runs + analysis | jacserve / local |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['points']:.0f} | {r['evaluations']:.0f} | {r['error jacserve']:.2e} | "
            f"{r['error salib']:.2e} | {r['us/point jacserve']:.1f} | {r['us/point local']:.1f} | "
            f"{r['us/point salib']:.1f} | {r['us/point jacserve'] / r['us/point local']:.1f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, write nothing")
    args = parser.parse_args()
    sizes, seeds = ([256], 1) if args.quick else ([256, 1024, 4096, 16384], 5)
    with tempfile.TemporaryDirectory() as folder:
        server, target = start_server(folder)
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=120)
            rows = measure(target, sizes, seeds)
        finally:
            server.terminate()
            server.wait(30)
    stamp = time.strftime("%Y-%m-%d")
    text = (
        "## Global sensitivity: DGSM of the Ishigami function "
        "(`python bench/global_sensitivity.py`)\n\n"
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}; {stamp}. jacserve: `Client.global_sensitivity` → a "
        "default server in its own process (scrambled Sobol' points, exact Jacobians); "
        "SALib: `finite_diff.sample` (default step) + `dgsm.analyze`, the model in NumPy; "
        "local: `vmap(jacrev)` over the same number of points in this process. Errors: "
        f"the largest relative error of ν against the closed form, median of {seeds} "
        f"seeds; times: medians.\n\n{report(rows)}\n"
    )
    print(text)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "global-sensitivity.md").write_text(text)
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        write_benchmarks()


if __name__ == "__main__":
    main()
