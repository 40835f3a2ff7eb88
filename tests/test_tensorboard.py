"""--tensorboard: each round's figures as TensorBoard scalars, read back and compared with metrics.csv."""
import math

import pytest
from helpers_e2e import QUICK_MNIST, read_metrics, run_job

pytestmark = pytest.mark.slow


def test_the_event_file_holds_the_rows_of_metrics_csv(mnist_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "3", "--tensorboard", out_dir=tmp_path / "run",
                   data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path / "run")
    for column in ("accuracy", "test_loss", "train_loss", "round_s", "comm_s", "bytes_up", "bytes_down"):
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == [1, 2, 3], column
        assert all(math.isclose(s.value, float(r[column]), rel_tol=1e-5)   # metrics.csv keeps 6 digits
                   for s, r in zip(scalars, rows, strict=True)), column
    assert "comp_coef" not in events.Tags()["scalars"]   # the client merge has none: nothing is invented
