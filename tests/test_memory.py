"""Utils/memory.py and the launcher's memory check: a job that cannot fit is refused before any rank starts."""
import pytest

from Utils.config import RunConfig
from Utils.memory import MB, SHARED_IMPORT_BYTES, JobShape, job_memory_bytes, memory_refusal


def test_clients_share_the_training_set_and_forks_share_the_imports():
    base = dict(model_bytes=10 * MB, train_bytes=600 * MB, test_bytes=30 * MB)
    two, sixteen = job_memory_bytes(JobShape(3, **base)), job_memory_bytes(JobShape(17, **base))
    per_rank = (sixteen - two) / 14
    assert per_rank == job_memory_bytes(JobShape(4, **base)) - two   # linear in the ranks
    assert per_rank < 200 * MB   # no rank copies the training set
    spawned = job_memory_bytes(JobShape(17, **base, forked=False))
    assert spawned - sixteen == 16 * SHARED_IMPORT_BYTES   # every spawned rank imports torch itself


def test_text_corpora_are_read_by_every_rank():
    small = job_memory_bytes(JobShape(3, MB, 0, MB, corpus_tokens=1_000))
    large = job_memory_bytes(JobShape(3, MB, 0, MB, corpus_tokens=1_001_000))
    assert large - small == 3 * 1_000_000 * 40


def test_refusal_names_both_figures_in_one_line():
    assert memory_refusal(2**30, 4 * 2**30) is None and memory_refusal(2**30, None) is None
    line = memory_refusal(int(20.5 * 2**30), 8 * 2**30)
    assert "needs about 20.5 GB" in line and "8.0 GB are available" in line and "\n" not in line


def test_the_launcher_refuses_a_job_that_cannot_fit(mnist_root, monkeypatch, tmp_path, caplog):
    import Characters.launch as launch
    monkeypatch.setattr(launch, "available_bytes", lambda: 512 * MB)
    monkeypatch.setattr(launch, "setup_logging", lambda *args: None)   # keep caplog's handler in place
    cfg = RunConfig(script="FedAvg", overlap=False, world_size=3, dataset="mnist", model="mlp",
                    data_dir=str(mnist_root), out_dir=str(tmp_path / "run"), master_port=0)
    with caplog.at_level("INFO", logger=launch.log.name):
        status, summary = launch.launch(cfg)
    assert (status, summary) == (launch.EXIT_USAGE, None)
    assert "0.5 GB are available" in caplog.text and "--max_train_samples" in caplog.text
    assert not (tmp_path / "run").exists()   # refused before anything was written


@pytest.mark.parametrize("dataset, model", [("mnist", "mlp"), ("ptb", "transformer")])
def test_the_estimate_is_logged_for_every_job(dataset, model, mnist_root, ptb_root, monkeypatch, caplog):
    import Characters.launch as launch
    root = mnist_root if dataset == "mnist" else ptb_root
    cfg = RunConfig(script="FedAvg", overlap=False, world_size=5, dataset=dataset, model=model,
                    data_dir=str(root))
    with caplog.at_level("INFO", logger=launch.log.name):
        launch._check_memory(cfg, launch.dataset_size(dataset, root), forked=True)
    assert "memory: about" in caplog.text and "for the job's 5 processes" in caplog.text


def test_the_client_merge_counts_the_uploads_the_server_keeps(mnist_root, monkeypatch):
    """--compensation local: the server keeps every client's last upload and the model under them, up to three
    generations of them while the checkpoint thread writes."""
    import Characters.launch as launch
    shapes = []
    monkeypatch.setattr(launch, "job_memory_bytes", lambda shape: shapes.append(shape) or 0)
    size = launch.dataset_size("mnist", mnist_root)
    for compensation in ("secant", "local"):
        cfg = RunConfig(script="AsyncFedAvg", overlap=True, world_size=5, dataset="mnist", model="mlp",
                        compensation=compensation, data_dir=str(mnist_root))
        launch._check_memory(cfg, size, forked=True)
    secant, local = shapes
    assert secant.merge_state_bytes == 0 and local.merge_state_bytes == 15 * local.model_bytes   # 3 x (4 + 1)
    # secant receives the 4 uploads into 4 reused buffers; the merge into the ones it keeps
    assert secant.receive_buffers == 4 and local.receive_buffers == 1
    assert job_memory_bytes(local) - job_memory_bytes(secant) == (15 - 3) * local.model_bytes


def test_compressed_messages_add_two_model_copies_per_rank():
    base = dict(world_size=3, model_bytes=100 * MB, train_bytes=0, test_bytes=0)
    plain, compressed = job_memory_bytes(JobShape(**base)), job_memory_bytes(JobShape(**base, compressed=True))
    assert compressed - plain == 3 * 2 * 100 * MB


def test_the_servers_upload_buffers_are_counted():
    base = dict(world_size=5, model_bytes=100 * MB, train_bytes=0, test_bytes=0)
    one, four = job_memory_bytes(JobShape(**base)), job_memory_bytes(JobShape(**base, receive_buffers=4))
    assert four - one == 3 * 100 * MB
