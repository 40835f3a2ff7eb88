"""Vanilla FedAvg over torch.distributed: rank 0 averages, ranks 1..N train; communication blocks training.

    python FedAvg.py --world_size 5 --dataset mnist --model mlp --max_epoch 10 --client_epoch 5
"""
from Characters.launch import main
from Utils.cli import check_common, common_options, common_parser, positive_float
from Utils.config import RunConfig

if __name__ == "__main__":
    parser = common_parser("Federated Averaging (McMahan et al.) with a server and world_size - 1 clients.")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="client learning rate")
    args = parser.parse_args()
    check_common(parser, args)
    main(RunConfig(script="FedAvg", overlap=False, lr=args.lr, **common_options(args)))
