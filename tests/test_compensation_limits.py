"""benchmarks/compensation_limits.py: the pipeline's rate on one quadratic direction, the hindsight C, the
modelled time, and the script end to end on a small replay."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from Utils.aggregation import ServerUpdate

sys.path.insert(0, str(ROOT / "benchmarks"))
from compensation_limits import (  # noqa: E402
    hindsight_coefficient,
    modelled_ratio,
    pipeline_matrix,
    pipeline_rate,
    time_ratio,
)


@pytest.mark.parametrize("a", [0.01, 0.3, 0.9])
def test_the_exact_coefficient_gives_fedavgs_rate_and_half_its_time(a):
    assert pipeline_rate(a, a) == pytest.approx(1 - a)
    assert time_ratio(a, pipeline_rate(a, a)) == pytest.approx(0.5)


@pytest.mark.parametrize("a", [0.1, 0.6])
def test_full_and_none_have_their_closed_form_rates(a):
    # full: e_w' = (1 - a) e_prev, so z^2 = 1 - a. none: z^2 - z + a = 0.
    assert pipeline_rate(a, 1.0) == pytest.approx(math.sqrt(1 - a))
    roots = [abs(z) for z in [(1 + complex(1 - 4 * a) ** 0.5) / 2, (1 - complex(1 - 4 * a) ** 0.5) / 2]]
    assert pipeline_rate(a, 0.0) == pytest.approx(max(roots))
    assert time_ratio(a, pipeline_rate(a, 1.0)) == pytest.approx(1.0)   # two interleaved FedAvg chains


def test_the_matrix_is_the_server_update_the_jobs_run():
    # One quadratic direction, optimum 0: the uploads move their start x to (1 - a) x. The real ServerUpdate,
    # fed through the one-version-stale schedule, gives the iterates of the matrix from (1, 1, 0).
    a, coef, momentum, server_lr = 0.3, 0.4, 0.5, 0.7
    update = ServerUpdate(torch.tensor([1.0], dtype=torch.float64), stale=True, momentum=momentum,
                          server_lr=server_lr, compensation="constant", comp_coef=coef)
    matrix, state = pipeline_matrix(a, coef, momentum, server_lr), np.array([1.0, 1.0, 0.0])
    for _ in range(50):
        moments = update.new_round()
        moments.add(update.upload_start * (1 - a), 1.0)
        state = matrix @ state
        assert update.apply(moments).item() == pytest.approx(state[0], rel=1e-9, abs=1e-12)
    assert time_ratio(a, 1.0) == math.inf


def test_the_hindsight_coefficient_is_the_least_squares_c_clipped_to_0_1():
    step = torch.tensor([1.0, -2.0, 0.5, 3.0])
    pseudo_grad = torch.tensor([0.2, 0.1, -0.3, 0.0])
    per_coordinate = torch.tensor([0.3, 0.8, 1.7, -0.4])
    at_current = pseudo_grad + per_coordinate * step
    assert torch.allclose(hindsight_coefficient(pseudo_grad, pseudo_grad + 0.3 * step, step), torch.full((4,), 0.3))
    assert torch.allclose(hindsight_coefficient(pseudo_grad, at_current, step, per_coordinate=True),
                          torch.tensor([0.3, 0.8, 1.0, 0.0]))
    groups = [slice(0, 2), slice(2, 4)]
    # first group: (0.3*1 + 0.8*4) / 5 = 0.7; second: (1.7*0.25 - 0.4*9) / 9.25 < 0, clipped to 0
    assert torch.allclose(hindsight_coefficient(pseudo_grad, at_current, step, groups),
                          torch.tensor([0.7, 0.7, 0.0, 0.0]))
    assert torch.equal(hindsight_coefficient(pseudo_grad, at_current, torch.zeros(4), per_coordinate=True),
                       torch.zeros(4))


def test_modelled_time_counts_overlaps_first_round_twice():
    assert modelled_ratio(12, 9) == pytest.approx(13 / 18)
    assert modelled_ratio(None, 9) == math.inf and modelled_ratio(3, None) is None


@pytest.mark.slow
def test_the_script_replays_every_row_and_writes_its_report(mnist_root, tmp_path):
    out = tmp_path / "limits.md"
    done = subprocess.run([sys.executable, "benchmarks/compensation_limits.py", "--data_dir", str(mnist_root),
                           "--settings", "mnist-e1", "--max_train_samples", "2000", "--rounds", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for row in ("| FedAvg |", "| secant (the previous default) |", "| best C per coordinate in hindsight |",
                "| `full` |"):
        assert row in text
    fedavg = next(line for line in text.splitlines() if line.startswith("| FedAvg |"))
    assert len(fedavg.split("|")[-2].split()) == 2   # an accuracy for each of the 2 rounds
