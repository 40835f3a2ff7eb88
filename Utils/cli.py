"""The command lines of FedAvg.py and AsyncFedAvg.py, built from the option fields of Utils.config, and the
checks that span several options.

Bad values stop at the parser with a one-line message and exit status 2 (parser.error).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
from dataclasses import Field, fields
from pathlib import Path

from Networks import check_model_fits
from Utils.checkpoint import PROCESS_OPTIONS, RESUMABLE_CHANGES
from Utils.config import (
    ASYNC,
    FEDAVG,
    PER_CLIENT_RANK_OPTIONS,
    RunConfig,
    SearchConfig,
    client_rank_value,
    nccl_sharing_refusal,
)
from Utils.data.datasets import dataset_is_text, image_shape
from Utils.federation import clients_per_round

EPILOG = """\
several machines: start one process per rank; rank 0 is the server, on the machine HOST.
  With torchrun, once per machine (--node_rank 0 on HOST, 1, 2, ... on the others):
    torchrun --nnodes 2 --nproc_per_node 3 --node_rank 0 --master_addr HOST --master_port 29500 {script}.py ...
  Or by hand, one process per rank r = 0 .. N-1:
    RANK=r WORLD_SIZE=N MASTER_ADDR=HOST MASTER_PORT=29500 python {script}.py ...
  WORLD_SIZE then overrides --world_size, MASTER_ADDR and MASTER_PORT override --master_addr and
  --master_port. Give every rank the same options. More in docs/several-machines.md.
"""


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but an error is one line, without the usage text (30 lines for AsyncFedAvg.py) above it; an
    unknown option gets where the options are listed, and one that only the other entry script takes whose it
    is."""

    def __init__(self, *args, other_script: str, options_elsewhere: set[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.other_script, self.options_elsewhere = other_script, options_elsewhere

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            given = {word.split("=", 1)[0] for word in message.split()}
            theirs = sorted(self.options_elsewhere & given)
            if theirs:
                message += f" ({' and '.join(theirs)} {'is' if len(theirs) == 1 else 'are'} {self.other_script}'s)"
            message += f" ({self.prog} --help lists the options)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(script: str, description: str) -> argparse.ArgumentParser:
    """The parser of one entry script: the RunConfig options it takes, then its SearchConfig options."""
    other = ASYNC if script == FEDAVG else FEDAVG
    own = {f.name for config in (RunConfig, SearchConfig) for f in _options(config, script)}
    elsewhere = {_argument(f, other)[0] for config in (RunConfig, SearchConfig) for f in _options(config, other)
                 if f.name not in own}
    parser = _OneLineErrors(description=description, epilog=EPILOG.format(script=script),
                            formatter_class=argparse.RawDescriptionHelpFormatter, other_script=f"{other}.py",
                            options_elsewhere=elsewhere)
    parser.set_defaults(script=script)
    for option in _options(RunConfig, script):
        flag, settings = _argument(option, script)
        parser.add_argument(flag, **settings)
    search_options = _options(SearchConfig, script)
    if search_options:
        grid = ", ".join(f"--{f.name}" for f in _grid_options(script))
        group = parser.add_argument_group("several runs", f"Several values of {grid} run every combination, one "
                                          "job after another;\n--optuna searches instead.")
        for option in search_options:
            flag, settings = _argument(option, script)
            group.add_argument(flag, **settings)
    return parser


def _options(config: type, script: str) -> list[Field]:
    """The fields of a config dataclass that are command-line options of this script."""
    return [f for f in fields(config) if script in f.metadata.get("scripts", ())]


def _grid_options(script: str) -> list[Field]:
    """The RunConfig options of which this script takes several values, to run each."""
    return [f for f in _options(RunConfig, script) if script in f.metadata["grid"]]


def _argument(option: Field, script: str) -> tuple[str, dict]:
    """The flag and add_argument settings of one option: its help shows exactly one default (none when the
    default is None or the option is a flag)."""
    meta = option.metadata
    default = meta["cli_default"].get(script, option.default)
    settings, help_text = dict(meta["add_argument"]), meta["help"]
    if script in meta["grid"]:
        settings["nargs"], default = "+", [default]
        help_text += "; several values run a grid"
    if default is not None and default is not False and "default" not in help_text:
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_text += f" (default: {shown})"
    return meta["flag"] or f"--{option.name}", {"dest": option.name, "default": default,
                                                "help": help_text.replace("%", "%%"), **settings}


def run_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
               argv: list[str] | None = None) -> RunConfig:
    """The run's options from the parsed command line (argv: None for sys.argv), after the checks that span
    several options; with --resume, the saved options of that run.

    A grid option gives the run its first value (search_config holds them all); options the script does not
    take keep the field defaults (FedAvg: plain averaging).
    """
    if args.resume is not None:
        return _resumed_config(parser, args, argv)
    _check_run(parser, args)
    values = {}
    for option in _options(RunConfig, args.script):
        value = getattr(args, option.name)
        if args.script in option.metadata["grid"]:
            value = value[0]
        values[option.name] = tuple(value) if isinstance(value, list) else value
    if "early_stop" in values:
        values["early_stop"] = _early_stop(parser, args)
    return RunConfig(script=args.script, overlap=args.script == ASYNC, **values)


def search_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SearchConfig:
    """How to run several jobs: every grid option's values, or the optuna search; after its checks.
    A resumed run is one run with its saved options: no grid."""
    values = {f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
              for f in _options(SearchConfig, args.script)}
    if args.resume is not None:
        if values.get("optuna"):
            parser.error("--resume continues one run; it cannot be combined with --optuna")
        return SearchConfig(grid={}, **values)
    search = SearchConfig(grid={f.name: tuple(getattr(args, f.name)) for f in _grid_options(args.script)}, **values)
    _check_search(parser, search)
    return search


def _resumed_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> RunConfig:
    """The saved options of the run in --resume RUN_DIR, with the changes a resume allows (RESUMABLE_CHANGES);
    any other option given with another value than the run's is refused, naming it."""
    run_dir = Path(args.resume)
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        parser.error(f"--resume {run_dir}: no such directory; give a run directory that {args.script}.py wrote")
    if not config_path.is_file():
        parser.error(f"--resume {run_dir}: there is no config.json; give a run directory that {args.script}.py wrote")
    try:
        saved = json.loads(config_path.read_text())
        if not isinstance(saved, dict) or saved.get("script") not in (FEDAVG, ASYNC):
            parser.error(f"--resume {run_dir}: {config_path} is not the config.json of a run of this project; give "
                         f"a run directory that {args.script}.py wrote")
        if saved.get("script") != args.script:
            parser.error(f"--resume {run_dir}: that run was made by {saved.get('script')}.py; resume it with "
                         f"that script")
        given = _given_options(parser, argv)
        changed = [name for name, value in given.items()
                   if name not in RESUMABLE_CHANGES and name in saved and _as_saved(value) != saved[name]]
        if changed:
            shown = ", ".join(f"--{name} {_shown(given[name])} (the run has {_shown(saved[name])})" for name in changed)
            parser.error(f"--resume {run_dir}: {shown} would change the result; a resumed run keeps its options "
                         f"(only --max_epoch, the link, the clients' speeds, where the data is and where or how the "
                         f"processes run may change)")
        if "out_dir" in given and Path(given["out_dir"]).resolve() != run_dir.resolve():
            parser.error(f"--resume {run_dir} continues the run in that directory; drop --out_dir")
        values = {f.name: saved[f.name] for f in fields(RunConfig) if f.name in saved}
        values.update({name: value for name, value in given.items() if name in RESUMABLE_CHANGES})
        # Where and how the processes run is the new job's, as for any job: not the saved port, say.
        values.update({name: getattr(args, name) for name in PROCESS_OPTIONS})
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return RunConfig(**{**values, "out_dir": str(run_dir), "resume": str(run_dir), "launch_time": None})
    except (OSError, ValueError, TypeError) as error:
        parser.error(f"--resume {run_dir}: config.json cannot be used ({error}); is it a run directory of this "
                     f"project?")


def _given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """The options given on the command line (defaults left out), by destination name."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    quiet.set_defaults(script=argparse.SUPPRESS)
    given = vars(quiet.parse_args(argv))
    given.pop("script", None)
    return given


def _as_saved(value):
    """A parsed option as config.json holds it: a grid option's single value, tuples as lists."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return list(value) if isinstance(value, tuple) else value


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.world_size < 2:
        parser.error(f"--world_size {args.world_size}: need the server and at least one client (>= 2)")
    if args.num_clients is not None and args.num_clients < args.world_size - 1:
        parser.error(f"--num_clients {args.num_clients} leaves client ranks without a client: give at least "
                     f"world_size - 1 ({args.world_size - 1}) clients, or --world_size {args.num_clients + 1}")
    try:
        clients_per_round(args.clients_per_round, args.num_clients or args.world_size - 1)
    except ValueError as error:
        parser.error(str(error))
    text = dataset_is_text(args.dataset)
    channels, size, _ = (1, 28, 28) if text else image_shape(args.dataset)   # text: the shape is unused
    try:
        check_model_fits(args.model, text=text, in_channels=channels, image_size=size)
    except ValueError as error:
        parser.error(f"--model {args.model} with --dataset {args.dataset}: {error}")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        parser.error("--tensorboard needs the tensorboard package: pip install -r requirements-tensorboard.txt")
    if text and args.partition == "pathological":
        parser.error("--partition pathological splits by label, and text has none: use iid, noniid or dirichlet")
    if args.backend == "nccl" and args.gpus is None:
        parser.error("--backend nccl needs --gpus (one CUDA device per rank)")
    if args.backend == "nccl" and "RANK" not in os.environ:   # the launcher's ranks: all on this machine
        refusal = nccl_sharing_refusal(args.gpus, range(args.world_size))
        if refusal:
            parser.error(refusal)
    for name in PER_CLIENT_RANK_OPTIONS:
        try:
            client_rank_value(getattr(args, name), 1, args.world_size - 1, args.seed, name)
        except ValueError as error:
            parser.error(str(error))
    moms = args.mom if isinstance(args.mom, list) else [args.mom]   # AsyncFedAvg takes a grid of them
    if any(value >= 1 for value in moms):
        parser.error("--mom must be below 1 (a momentum of 1 or more diverges)")


def _early_stop(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, float] | None:
    """--optuna_early_stop ROUND METRIC as (int, float), ROUND within the run."""
    if args.early_stop is None:
        return None
    try:
        round_number, metric = int(args.early_stop[0]), float(args.early_stop[1])
    except ValueError:
        parser.error("--optuna_early_stop takes ROUND (an integer) and METRIC (a number)")
    if not 1 <= round_number < args.max_epoch:   # at the last round there is nothing left to stop
        parser.error(f"--optuna_early_stop ROUND must be between 1 and --max_epoch - 1 ({args.max_epoch - 1}): "
                     f"a run stopped at its last round would stop nothing")
    return round_number, metric


def _check_search(parser: argparse.ArgumentParser, search: SearchConfig) -> None:
    for name, (low, high) in search.optuna_ranges.items():
        if not low < high:
            parser.error(f"--optuna_{name} LOW HIGH needs LOW < HIGH, got {low} {high}")
    if search.optuna and not search.optuna_ranges:
        parser.error("--optuna needs a search range: --optuna_lr, --optuna_mom and/or --optuna_lambd LOW HIGH")
    if not search.optuna and (search.optuna_ranges or search.optuna_trials != parser.get_default("optuna_trials")):
        parser.error("--optuna_lr/--optuna_mom/--optuna_lambd/--optuna_trials take effect only with --optuna")
    if search.optuna_mom and search.optuna_mom[1] >= 1:
        parser.error("--optuna_mom HIGH must be below 1")
