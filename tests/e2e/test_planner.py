"""Auto mode through a real server: the README's SIR model and a held-out 3 → 3000 case are
planned right on their first and every later call, with bounded planning work."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest
import torch

from jacserve.client import Client
from tests.models import MLP, archive_of

_SPEC = importlib.util.spec_from_file_location(
    "sir", pathlib.Path(__file__).parents[2] / "docs" / "examples" / "sir.py"
)
assert _SPEC is not None and _SPEC.loader is not None
_sir = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_sir)
SIR = _sir.SIR  # the guides' example model

F64 = torch.float64


def _probe_passes(reason: str) -> int:
    found = re.search(r"planning: (\d+) probe passes", reason)
    assert found, reason
    return int(found.group(1))


@pytest.mark.parametrize(
    ("name", "module", "x", "expected"),
    [
        ("sir", SIR(), torch.tensor([0.3, 0.1, 0.01], dtype=F64), "reverse"),
        ("3->3000", MLP(3, 16, 3000, F64), torch.randn(3, dtype=F64), "forward"),
        ("3000->3", MLP(3000, 16, 3, F64), torch.randn(3000, dtype=F64), "reverse"),
    ],
)
def test_auto_is_right_on_the_first_and_every_later_call(client: Client, name, module, x, expected):
    model_id = client.upload(archive_of(module, (x,), "torchscript"))
    reference = torch.autograd.functional.jacobian(module, x)
    reasons = []
    for call in range(5):
        result = client.jacobian(model_id, x)
        torch.testing.assert_close(result.jacobian, reference)
        assert result.metrics.mode == expected, (name, call, result.metrics.mode_reason)
        reasons.append(result.metrics.mode_reason)
    assert "first use" in reasons[0] and "no measurements yet" in reasons[0]
    assert _probe_passes(reasons[0]) <= 1  # planning on first use: at most one one-pass probe
    # later calls say what they compared: the estimate of the mode that ran, from its runs
    assert re.search(rf"{expected} [\d.e+-]+ ms from \d+ {expected} run", reasons[-1]), reasons[-1]
    assert result.metrics.timing["plan"] < result.metrics.timing["total"]
