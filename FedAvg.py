"""Vanilla FedAvg over torch.distributed: rank 0 averages, ranks 1..N train; communication blocks training.

    python FedAvg.py --world_size 5 --dataset mnist --model mlp --max_epoch 10 --client_epoch 5

Options, defaults and help: Utils/config.py (python FedAvg.py --help).
"""
import sys

if __name__ == "__main__":
    try:
        from Characters.forkserver import interrupts_held, start_forkserver
        start_forkserver()   # first: the ranks' torch import runs beside this process's own
        with interrupts_held():   # torch's import cannot take a Ctrl-C
            from Characters.launch import main
            from Utils.cli import build_parser, run_config

        parser = build_parser("FedAvg", "Federated Averaging (McMahan et al.) with a server and world_size - 1 "
                                        "clients.")
        args = parser.parse_args()
        cfg = run_config(parser, args)
        main(cfg)
    except KeyboardInterrupt:   # Ctrl-C before the launcher took over: no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
