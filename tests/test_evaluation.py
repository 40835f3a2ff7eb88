"""Characters/evaluation.py: the server's background evaluation gives what a blocking one would."""
import pytest
import torch

from Characters.evaluation import BackgroundEvaluator, max_pending_snapshots
from Networks import build_model
from Utils.data.datasets import ImageData
from Utils.flat import flatten_model, load_flat_into_model


def small_data() -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (300,), generator=generator)
    return ImageData("mnist", images[:200], labels[:200], images[200:], labels[200:], 10, False, (0.1307,),
                     (0.3081,))


def test_background_results_equal_blocking_evaluation_and_the_best_model_is_kept(tmp_path):
    torch.manual_seed(0)
    data, model = small_data(), build_model("mlp", 10)
    snapshots = [flatten_model(model) + 0.05 * k for k in range(4)]
    evaluator = BackgroundEvaluator(model, data, "accuracy", tmp_path / "best_model.pt", timeout_s=60)
    for round_index, flat in enumerate(snapshots, start=1):
        evaluator.submit(round_index, flat)
    results = [evaluator.result(r, wait=True) for r in range(1, 5)]
    evaluator.close()
    expected = []
    for flat in snapshots:
        load_flat_into_model(flat, model)
        expected.append(data.evaluate(model))
    assert [{k: v for k, v in r.items() if k != "eval_s"} for r in results] == expected
    assert all(r["eval_s"] > 0 for r in results)
    best = max(range(4), key=lambda k: (expected[k]["accuracy"], -k))   # the first of equal bests
    saved = torch.load(tmp_path / "best_model.pt", weights_only=True)
    load_flat_into_model(snapshots[best], model)
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    assert evaluator.result(1) is None   # a result is handed out once


def test_a_failed_evaluation_reaches_the_server_thread(tmp_path):
    torch.manual_seed(0)
    evaluator = BackgroundEvaluator(build_model("mlp", 10), small_data(), "accuracy", tmp_path / "best.pt",
                                    timeout_s=60)
    evaluator.submit(1, torch.zeros(3))   # the wrong size for the model
    with pytest.raises(RuntimeError, match="evaluation failed"):
        evaluator.result(1, wait=True)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        evaluator.submit(2, torch.zeros(3))


def test_snapshot_budget_bounds_the_queue():
    assert max_pending_snapshots(4 * 2**20) == 128 and max_pending_snapshots(2**30) == 2
