"""Overlap-FedAvg: clients keep training while uploads and downloads run in the background; the server
compensates the one-version staleness and applies a Nesterov step (Zhou, Qing, Lv, IEEE TPDS 2022).

    python AsyncFedAvg.py --world_size 5 --dataset mnist --model mlp --max_epoch 10 --client_epoch 5

--lr, --mom and --lambd take several values and run the grid one run after another; --optuna searches.
"""
from Characters.sweep import OptunaSpace, run_grid, run_optuna
from Utils.aggregation import COMPENSATIONS
from Utils.cli import check_common, common_options, common_parser, non_negative_float, positive_float, positive_int
from Utils.config import RunConfig

if __name__ == "__main__":
    parser = common_parser("Overlap-FedAvg with a server and world_size - 1 clients.")
    add = parser.add_argument
    add("--lr", type=positive_float, nargs="+", default=[0.01], help="client learning rate(s)")
    add("--mom", type=non_negative_float, nargs="+", default=[0.9], help="server Nesterov momentum(s) mu")
    add("--lambd", type=non_negative_float, nargs="+", default=[0.04],
        help="compensation strength(s) lambda (official and dcasgd forms)")
    add("--server_lr", type=positive_float, default=0.4, help="server learning rate of the Nesterov step")
    add("--compensation", default="full", choices=COMPENSATIONS,
        help="staleness compensation C: official lambda*v*v, dcasgd lambda*v, full 1, none 0")
    add("--optuna", action="store_true", help="search lr/mom/lambd with optuna instead of the grid")
    add("--optuna_lr", type=positive_float, nargs=2, metavar=("LOW", "HIGH"))
    add("--optuna_mom", type=non_negative_float, nargs=2, metavar=("LOW", "HIGH"))
    add("--optuna_lambd", type=non_negative_float, nargs=2, metavar=("LOW", "HIGH"))
    add("--optuna_trials", type=positive_int, default=10)
    add("--optuna_early_stop", nargs=2, metavar=("ROUND", "METRIC"),
        help="stop a trial whose accuracy at ROUND is below METRIC (perplexity: above)")
    args = parser.parse_args()
    check_common(parser, args)
    if any(value >= 1 for value in args.mom):
        parser.error("--mom must be below 1 (a momentum of 1 or more diverges)")
    early_stop = None
    if args.optuna_early_stop:
        try:
            early_stop = (int(args.optuna_early_stop[0]), float(args.optuna_early_stop[1]))
        except ValueError:
            parser.error("--optuna_early_stop takes ROUND (an integer) and METRIC (a number)")
        if not 1 <= early_stop[0] <= args.max_epoch:
            parser.error(f"--optuna_early_stop ROUND must be between 1 and --max_epoch {args.max_epoch}")
    for name in ("optuna_lr", "optuna_mom", "optuna_lambd"):
        bounds = getattr(args, name)
        if bounds and not bounds[0] < bounds[1]:
            parser.error(f"--{name} LOW HIGH needs LOW < HIGH, got {bounds[0]} {bounds[1]}")
    if args.optuna and not (args.optuna_lr or args.optuna_mom or args.optuna_lambd):
        parser.error("--optuna needs a search range: --optuna_lr, --optuna_mom and/or --optuna_lambd LOW HIGH")
    if not args.optuna and (args.optuna_lr or args.optuna_mom or args.optuna_lambd or args.optuna_trials != 10):
        parser.error("--optuna_lr/--optuna_mom/--optuna_lambd/--optuna_trials take effect only with --optuna")
    if args.optuna_mom and args.optuna_mom[1] >= 1:
        parser.error("--optuna_mom HIGH must be below 1")

    base = RunConfig(script="AsyncFedAvg", overlap=True, lr=args.lr[0], mom=args.mom[0], lambd=args.lambd[0],
                     server_lr=args.server_lr, compensation=args.compensation, early_stop=early_stop,
                     **common_options(args))
    if args.optuna:
        space = OptunaSpace(lr=args.optuna_lr, mom=args.optuna_mom, lambd=args.optuna_lambd)
        run_optuna(base, space, trials=args.optuna_trials)
    else:
        run_grid(base, lrs=args.lr, moms=args.mom, lambds=args.lambd)
