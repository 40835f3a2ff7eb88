"""Bad command lines stop at the parser: exit status 2 and one line naming what was wrong."""
import runpy
import sys
from dataclasses import asdict

import pytest
from conftest import ROOT

from Utils.cli import build_parser, run_config, search_config
from Utils.config import RunConfig, SearchConfig


def run_entry(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run an entry script in this process (torch is already imported: fast); returns (status, out, err)."""
    script, *args = argv
    old_argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return status, captured.out, captured.err

CASES = [
    (["FedAvg.py", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["FedAvg.py", "--model", "lenet"], "invalid choice: 'lenet'"),
    (["FedAvg.py", "--world_size", "1"], "need the server and at least one client"),
    (["FedAvg.py", "--lr", "-0.1"], "must be a positive number"),
    (["FedAvg.py", "--lr", "inf"], "must be a finite number, got inf"),
    (["AsyncFedAvg.py", "--lambd", "nan"], "must be a finite number, got nan"),
    (["FedAvg.py", "--max_epoch", "0"], "must be a positive integer"),
    (["FedAvg.py", "--dataset", "cifar10", "--model", "mnistnet"], "--model mnistnet with --dataset cifar10"),
    (["FedAvg.py", "--dataset", "wikitext2", "--model", "mlp"], "cannot train on text data"),
    (["FedAvg.py", "--gpus", "0,x"], "comma list of CUDA device numbers"),
    (["FedAvg.py", "--partition", "skewed"], "invalid choice: 'skewed'"),
    (["FedAvg.py", "--dataset", "ptb", "--model", "transformer", "--partition", "pathological"],
     "--partition pathological splits by label, and text has none"),
    (["FedAvg.py", "--master_port", "70000"], "must be a port between"),
    (["AsyncFedAvg.py", "--compensation", "taylor"], "invalid choice: 'taylor'"),
    (["FedAvg.py", "--compress", "int4"], "invalid choice: 'int4'"),
    (["FedAvg.py", "--world_size", "3", "--bandwidth", "20,5,20"], "--bandwidth lists 3 values for 2 client ranks"),
    (["FedAvg.py", "--world_size", "5", "--num_clients", "3"], "--num_clients 3 leaves client ranks without a client"),
    (["FedAvg.py", "--num_clients", "100", "--clients_per_round", "2.5"], "must be a whole number of clients"),
    (["FedAvg.py", "--num_clients", "100", "--clients_per_round", "101"], "up to --num_clients (100)"),
    (["FedAvg.py", "--clients_per_round", "0"], "must be a positive number"),
    (["FedAvg.py", "--latency", "lognormal:30"], "a spread is lognormal:MEDIAN:SIGMA, got lognormal:30"),
    (["FedAvg.py", "--sampling", "even"], "argument --sampling: invalid choice: 'even'"),
    (["FedAvg.py", "--slowdown", "0.5"], "must be 1 or more, got 0.5"),
    (["FedAvg.py", "--bandwidth", "20,-1,3,4"], "must be a positive number, got -1"),
    (["FedAvg.py", "--topk_ratio", "0"], "must be above 0 and at most 1, got 0"),
    (["AsyncFedAvg.py", "--topk_ratio", "1.5"], "must be above 0 and at most 1, got 1.5"),
    (["AsyncFedAvg.py", "--mom", "1.2"], "--mom must be below 1"),
    (["AsyncFedAvg.py", "--optuna", "--optuna_lr", "0.1", "0.01"], "needs LOW < HIGH"),
    (["AsyncFedAvg.py", "--optuna_early_stop", "x", "0.9"], "ROUND (an integer)"),
    (["AsyncFedAvg.py", "--optuna"], "--optuna needs a search range"),
    (["AsyncFedAvg.py", "--optuna_lr", "0.01", "0.1"], "take effect only with --optuna"),
    (["FedAvg.py", "--seed", "-1"], "must be between 0 and 2**32 - 1"),
    (["FedAvg.py", "--mom", "1"], "--mom must be below 1"),
    (["AsyncFedAvg.py", "--comp_coef", "1.5"], "must be between 0 and 1"),
    (["AsyncFedAvg.py", "--max_epoch", "3", "--optuna_early_stop", "5", "0.9"], "between 1 and --max_epoch - 1 (2)"),
    (["AsyncFedAvg.py", "--max_epoch", "3", "--optuna_early_stop", "3", "0.9"], "would stop nothing"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(c[0][1:]) for c in CASES])
def test_bad_input_is_a_one_line_usage_error(argv, message, capsys):
    status, _, err = run_entry(argv, capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], err   # no usage text above it


def test_an_option_of_the_other_script_says_whose_it_is(capsys):
    status, _, err = run_entry(["FedAvg.py", "--lambd", "0.1", "--compensation=local", "--optuna"], capsys)
    assert status == 2
    assert err.strip().splitlines() == ["FedAvg.py: error: unrecognized arguments: --lambd 0.1 --compensation=local "
                                        "--optuna (--compensation and --lambd and --optuna are AsyncFedAvg.py's) "
                                        "(FedAvg.py --help lists the options)"]


def test_help_lists_the_official_flags(capsys):
    status, out, _ = run_entry(["AsyncFedAvg.py", "--help"], capsys)
    assert status == 0
    for flag in ("--world_size", "--dataset", "--batch_size", "--max_epoch", "--client_epoch", "--lr", "--mom",
                 "--lambd", "--gpus", "--master_addr", "--master_port", "--seed", "--optuna", "--optuna_trials",
                 "--optuna_early_stop", "--bandwidth", "--latency", "--compensation", "--server_lr"):
        assert flag in out


@pytest.mark.parametrize("script", ["FedAvg", "AsyncFedAvg"])
def test_every_option_has_help_and_shows_one_default(script):
    parser = build_parser(script, "")
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help and action.help.strip(), f"{flag} has no help"
        shown = action.help.count("default")
        assert shown <= 1, f"{flag} shows {shown} defaults: {action.help}"
        if action.default not in (None, False):   # None and flags: the help says what absence means, if anything
            assert shown == 1, f"{flag} does not show its default {action.default}: {action.help}"
    assert "(default: None)" not in parser.format_help()


FEDAVG_DEFAULTS = dict(script="FedAvg", overlap=False, world_size=5, num_clients=None, clients_per_round=None,
                       sampling="uniform", dataset="mnist", model="mnistnet",
                       batch_size=32, max_epoch=10, client_epoch=5, lr=0.01, seed=2020, partition="noniid",
                       alpha=0.5, shards_per_client=2, data_dir="./data", out_dir=None, gpus=None, backend="gloo",
                       master_addr="localhost", master_port=29500, bandwidth=None, latency=0.0, slowdown=1.0,
                       compress="none", topk_ratio=0.05, receive_window=8, tensorboard=False, eval_every=1,
                       max_train_samples=None, resume=None, test_samples=None, timeout=1800.0, threads=1, mom=0.0,
                       server_lr=1.0, lambd=0.0, compensation="none", comp_coef=0.5, merge_weight=1.0, early_stop=None,
                       launch_time=None)
ASYNC_DEFAULTS = {**FEDAVG_DEFAULTS, "script": "AsyncFedAvg", "overlap": True, "lambd": 0.04,
                  "compensation": "local"}


def test_the_scripts_resolve_the_same_defaults_as_before():
    fedavg = build_parser("FedAvg", "")
    assert asdict(run_config(fedavg, fedavg.parse_args([]))) == FEDAVG_DEFAULTS
    overlap = build_parser("AsyncFedAvg", "")
    args = overlap.parse_args([])
    assert asdict(run_config(overlap, args)) == ASYNC_DEFAULTS
    assert search_config(overlap, args) == SearchConfig(grid={"lr": (0.01,), "mom": (0.0,), "lambd": (0.04,)},
                                                        optuna=False, optuna_lr=None, optuna_mom=None,
                                                        optuna_lambd=None, optuna_trials=10)


def test_fedavg_takes_the_server_step_of_overlap():
    """FedAvgM: FedAvg.py with the same Nesterov server step, so a comparison isolates the overlap."""
    parser = build_parser("FedAvg", "")
    cfg = run_config(parser, parser.parse_args(["--mom", "0.9", "--server_lr", "0.4"]))
    assert (cfg.overlap, cfg.mom, cfg.server_lr, cfg.compensation) == (False, 0.9, 0.4, "none")


def test_grid_and_search_options_build_the_configs():
    parser = build_parser("AsyncFedAvg", "")
    args = parser.parse_args(["--lr", "0.02", "0.05", "--mom", "0.5", "--gpus", "0,1", "--optuna",
                              "--optuna_lambd", "0.01", "0.1", "--optuna_early_stop", "2", "0.5"])
    cfg, search = run_config(parser, args), search_config(parser, args)
    assert (cfg.lr, cfg.mom, cfg.gpus, cfg.early_stop) == (0.02, 0.5, (0, 1), (2, 0.5))
    assert search.grid == {"lr": (0.02, 0.05), "mom": (0.5,), "lambd": (0.04,)}
    assert search.optuna and search.optuna_ranges == {"lambd": (0.01, 0.1)}


@pytest.mark.parametrize("script", ["FedAvg.py", "AsyncFedAvg.py"])
def test_help_explains_launching_across_machines(script, capsys):
    status, out, _ = run_entry([script, "--help"], capsys)
    assert status == 0
    assert (f"torchrun --nnodes 2 --nproc_per_node 3 --node_rank 0 --master_addr HOST --master_port 29500 "
            f"{script} ...") in out
    assert f"RANK=r WORLD_SIZE=N MASTER_ADDR=HOST MASTER_PORT=29500 python {script}" in out
    assert "one process per rank" in out and "WORLD_SIZE then overrides --world_size" in out


@pytest.mark.parametrize(("rank", "said"), [(0, True), (2, False)])
def test_the_world_size_override_is_said_by_rank_0_only(rank, said, monkeypatch, caplog, tmp_path):
    import Characters.launch as launch
    started = []
    monkeypatch.setattr(launch, "run_rank", lambda rank, cfg, rendezvous_from_env: started.append(cfg))
    monkeypatch.setattr(launch, "ensure_dataset", lambda *args, **kwargs: None)   # no data needed to start a rank here
    monkeypatch.setattr(launch, "setup_logging", lambda *args: None)   # keep caplog's handler in place
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    cfg = RunConfig(script="FedAvg", overlap=False, world_size=5, out_dir=str(tmp_path))
    with caplog.at_level("INFO", logger=launch.log.name):
        launch._run_one_rank(cfg, rank, 3)
    assert ("overrides --world_size 5" in caplog.text) == said
    assert started[0].world_size == 3 and started[0].launch_time is not None   # the launch time travels in cfg


def test_resuming_a_directory_that_does_not_exist_says_so(tmp_path, capsys):
    status, _, err = run_entry(["FedAvg.py", "--resume", str(tmp_path / "nowhere")], capsys)
    assert status == 2 and err.strip().endswith("nowhere: no such directory; give a run directory that FedAvg.py "
                                                "wrote"), err


@pytest.mark.parametrize("content", ['{"lr": 0.01}', '[1, 2]', '{"script": "train"}'])
def test_resuming_a_directory_whose_config_is_not_a_runs_says_so(content, tmp_path, capsys):
    (tmp_path / "config.json").write_text(content)
    status, _, err = run_entry(["FedAvg.py", "--resume", str(tmp_path)], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1].endswith(f"{tmp_path / 'config.json'} is not the config.json of a run of "
                                                 f"this project; give a run directory that FedAvg.py wrote")
    assert "None.py" not in err



def test_per_client_options_give_each_client_its_value():
    parser = build_parser("FedAvg", "")
    cfg = run_config(parser, parser.parse_args(["--bandwidth", "20,5,20,20", "--latency", "30",
                                                "--slowdown", "lognormal:2:0.5"]))
    assert cfg.bandwidth == (20.0, 5.0, 20.0, 20.0) and cfg.slowdown == "lognormal:2:0.5"
    assert [cfg.client_link(k) for k in (1, 2)] == [(20.0, 30.0), (5.0, 30.0)]
    slowdowns = [cfg.client_slowdown(k) for k in range(1, 5)]
    assert all(s >= 1 for s in slowdowns) and len(set(slowdowns)) > 1   # a spread, floored at 1
    again = run_config(parser, parser.parse_args(["--slowdown", "lognormal:2:0.5"]))
    assert [again.client_slowdown(k) for k in range(1, 5)] == slowdowns   # seeded: every rank derives the same
    other_seed = run_config(parser, parser.parse_args(["--slowdown", "lognormal:2:0.5", "--seed", "7"]))
    assert [other_seed.client_slowdown(k) for k in range(1, 5)] != slowdowns


def test_the_prune_line_says_which_side_of_the_bar():
    from Characters.sweep import prune_reason
    assert prune_reason("accuracy") == "accuracy below the --optuna_early_stop bar"
    assert prune_reason("perplexity") == "perplexity above the --optuna_early_stop bar"


def test_tensorboard_without_its_package_says_what_to_install(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    status, _, err = run_entry(["FedAvg.py", "--tensorboard"], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1].endswith("--tensorboard needs the tensorboard package: pip install -r "
                                                 "requirements-tensorboard.txt")
