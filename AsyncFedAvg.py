"""Overlap-FedAvg: clients keep training while uploads and downloads run in the background (Zhou, Ye, Lv,
IEEE TPDS 2022). By default each client corrects the one-version staleness itself (the client merge); the
paper's server-side compensation and Nesterov step are --compensation and --mom.

    python AsyncFedAvg.py --world_size 5 --dataset mnist --model mlp --max_epoch 10 --client_epoch 5

--lr, --mom and --lambd take several values and run the grid one run after another; --optuna searches.
Options, defaults and help: Utils/config.py (python AsyncFedAvg.py --help).
"""
import sys

if __name__ == "__main__":
    try:
        from Characters.forkserver import interrupts_held, start_forkserver
        start_forkserver()   # first: the ranks' torch import runs beside this process's own
        with interrupts_held():   # torch's import cannot take a Ctrl-C
            from Characters.sweep import run_grid, run_optuna
            from Utils.cli import build_parser, run_config, search_config

        parser = build_parser("AsyncFedAvg", "Overlap-FedAvg with a server and world_size - 1 clients.")
        args = parser.parse_args()
        cfg, search = run_config(parser, args), search_config(parser, args)
        if search.optuna:
            run_optuna(cfg, search)
        else:
            run_grid(cfg, search.grid)
    except KeyboardInterrupt:   # Ctrl-C before the launcher took over: no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
