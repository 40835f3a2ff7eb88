"""How much can a server-side compensation recover? Why it leaves Overlap-FedAvg above 0.7x FedAvg's time on MNIST.

Two measurements, written to docs/compensation-limits.md:

1. Theory. On one direction of a quadratic where a local round contracts the error by (1 - a) (FedAvg:
   e -> (1 - a) e per round), the stale update with a scalar C, momentum mu and server lr is a linear map of
   (e_w, e_prev, buf). Its spectral radius rho is the contraction per Overlap round, so Overlap takes
   log(1 - a) / (2 log rho) of FedAvg's time there (an Overlap round costs T, a FedAvg round 2T when upload
   + download take T: ablation.round_time). The script searches a grid of (C, mu, server_lr) for the setting
   whose slowest direction is fastest, over a from 0.01 (flat) to 0.9 (stiff).
2. The real MNIST jobs, replayed in one process (Utils.tools.replay, the same numbers as FedAvg.py /
   AsyncFedAvg.py), with server updates that know g(w): the pseudo-gradient the uploads would have had had
   they started from w, obtained by training the clients from w a second time. A server cannot do that (it
   holds no data); these rows bound what any estimate of C from the server's information can reach:
   the best scalar C in hindsight, the best C per tensor, the best C per coordinate (each least squares,
   clipped to [0, 1]), next to FedAvg, `secant` (the previous default) and a per-coordinate secant the server could run.

Time to a target is modelled by ablation.modelled_time (bench_time_to_accuracy.py's regime 1): G_n of
Overlap-FedAvg arrives after (n + 1) T, FedAvg's after 2n T.

    python benchmarks/compensation_limits.py --data_dir ./data
    python benchmarks/compensation_limits.py --data_dir ./data --settings mnist-e1 --out /tmp/limits.md

Time: about 15 minutes on one core (the hindsight rows train every round twice).
Figures: docs/compensation-limits.md (docs/defaults.md and docs/benchmarks.md cite them).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from ablation import modelled_ratio, round_time, rounds_to  # noqa: E402
from bench_time_to_accuracy import NUM_CLIENTS, SETTINGS  # noqa: E402

from Utils.aggregation import compensated_gradient, secant_coefficient  # noqa: E402
from Utils.tools.replay import ScheduleReplay, ServerStep, Uploads, server_update_step, uploads_average  # noqa: E402

CONTRACTIONS = (0.01, 0.03, 0.1, 0.3, 0.6, 0.9)   # a: flat ... stiff directions


def pipeline_matrix(a: float, coef: float, momentum: float = 0.0, server_lr: float = 1.0) -> np.ndarray:
    """One Overlap update on a direction where FedAvg's round maps the error e to (1 - a) e, as the linear map
    of (e_w, e_prev, buf): g = a e_prev (the uploads' pseudo-gradient), g_c = g + C (e_w - e_prev),
    buf = mu buf + g_c, e_w = e_w - lr (g_c + mu buf), e_prev = the old e_w."""
    compensated = np.array([coef, a - coef, 0.0])               # g_c as a row over (e_w, e_prev, buf)
    buffer = compensated + momentum * np.array([0.0, 0.0, 1.0])
    step = np.array([1.0, 0.0, 0.0]) - server_lr * (compensated + momentum * buffer)
    return np.stack([step, [1.0, 0.0, 0.0], buffer])


def pipeline_rate(a: float, coef: float, momentum: float = 0.0, server_lr: float = 1.0) -> float:
    """The error's contraction per Overlap update (spectral radius of pipeline_matrix). With C = a, mu 0 and
    server_lr 1 it is FedAvg's 1 - a."""
    return float(max(abs(np.linalg.eigvals(pipeline_matrix(a, coef, momentum, server_lr)))))


def time_ratio(a: float, rate: float) -> float:
    """Overlap's time over FedAvg's to shrink the error of that direction equally (inf: it never does): the
    rounds each needs, log(1 - a) / log(rate) of FedAvg's, times what a round costs in ablation's time model."""
    if rate >= 1.0:
        return math.inf
    if rate == 0.0:
        return 0.0
    return round_time("AsyncFedAvg.py") * math.log(1.0 - a) / (round_time("FedAvg.py") * math.log(rate))


def best_scalar_setting(coefs: Sequence[float], momenta: Sequence[float], server_lrs: Sequence[float]):
    """(worst-case time ratio over CONTRACTIONS, C, mu, server_lr) of the grid point whose worst is least."""
    return min((max(time_ratio(a, pipeline_rate(a, c, mu, lr)) for a in CONTRACTIONS), c, mu, lr)
               for c, mu, lr in itertools.product(coefs, momenta, server_lrs))


def hindsight_coefficient(pseudo_grad: Tensor, pseudo_grad_at_current: Tensor, step: Tensor,
                          groups: Sequence[slice] | None = None, *, per_coordinate: bool = False) -> Tensor:
    """The C, clipped to [0, 1], that makes g + C (w - prev) closest to g(w): least squares over the whole
    model (groups None), over each slice of `groups`, or for every coordinate alone (C_i = y_i / step_i)."""
    wanted = pseudo_grad_at_current - pseudo_grad
    if per_coordinate:
        coef = torch.where(step != 0, wanted / torch.where(step != 0, step, 1.0), 0.0)
        return coef.clamp(0.0, 1.0)
    coef = torch.zeros_like(step)
    for part in groups or [slice(0, step.numel())]:
        norm2 = torch.dot(step[part], step[part])
        if norm2 > 0:
            coef[part] = (torch.dot(wanted[part], step[part]) / norm2).clamp(0.0, 1.0)
    return coef


def hindsight_step(replay: ScheduleReplay, groups: Sequence[slice] | None, *,
                   per_coordinate: bool = False) -> ServerStep:
    """mu 0, server_lr 1, with the hindsight C; g(w) from training every client from w in the same round."""
    def step(u: int, prev: Tensor, uploads: Uploads, w: Tensor) -> Tensor:
        avg = uploads_average(prev, uploads)
        if torch.equal(w, prev):
            return avg
        at_current = w - uploads_average(w, replay.uploads(w, u))
        coef = hindsight_coefficient(prev - avg, at_current, w - prev, groups, per_coordinate=per_coordinate)
        return w - compensated_gradient(prev, avg, w, coef)
    return step


def coordinate_secant_step(decay: float = 0.5, shrink: float = 0.1, first: float = 0.5) -> ServerStep:
    """A per-coordinate secant a server could run: C_i = sum_t decay^t dg_i dp_i / sum_t decay^t dp_i^2 over
    the pairs of successive updates, shrunk toward the scalar secant, clipped to [0, 1]."""
    state: dict = {}

    def step(_u: int, prev: Tensor, uploads: Uploads, w: Tensor) -> Tensor:
        avg = uploads_average(prev, uploads)
        pseudo_grad = prev - avg
        if "last" in state and not torch.equal(prev, state["last"][1]):
            moved, changed = prev - state["last"][1], pseudo_grad - state["last"][0]
            state["num"] = changed * moved + decay * state.get("num", 0.0)
            state["den"] = moved * moved + decay * state.get("den", 0.0)
            state["scalar"] = secant_coefficient(pseudo_grad, state["last"][0], prev, state["last"][1])
        state["last"] = (pseudo_grad, prev.clone())
        if torch.equal(w, prev):
            return avg
        if "num" not in state:
            coef = first
        else:
            prior = shrink * state["den"].mean()
            coef = ((state["num"] + prior * state["scalar"]) / (state["den"] + prior)).clamp(0.0, 1.0)
        return w - compensated_gradient(prev, avg, w, coef)
    return step


def parameter_slices(replay: ScheduleReplay) -> list[slice]:
    slices, begin = [], 0
    for parameter in replay.model.parameters():
        slices.append(slice(begin, begin + parameter.numel()))
        begin += parameter.numel()
    return slices


def replay_rows(setting_name: str, args) -> tuple[dict[str, list[float]], str]:
    setting = SETTINGS[setting_name]
    subset = args.max_train_samples or setting.subset
    rounds = args.rounds or setting.rounds
    replay = ScheduleReplay(args.data_dir, dataset=setting.dataset, model=setting.model, num_clients=NUM_CLIENTS,
                            epochs=setting.epochs, max_train_samples=subset, seed=args.seed)
    steps = {
        "FedAvg": (False, server_update_step(replay.initial, overlap=False)),
        "secant (the previous default)": (True, server_update_step(replay.initial, overlap=True,
                                                                   compensation="secant")),
        "per-coordinate secant": (True, coordinate_secant_step()),
        "best scalar C in hindsight": (True, hindsight_step(replay, None)),
        "best C per tensor in hindsight": (True, hindsight_step(replay, parameter_slices(replay))),
        "best C per coordinate in hindsight": (True, hindsight_step(replay, None, per_coordinate=True)),
    }
    curves = {}
    for name, (overlap, step) in steps.items():
        curves[name] = replay.run(step, rounds, overlap=overlap)
        print(f"{setting_name} seed {args.seed} {name:36s} " + " ".join(f"{a:.4f}" for a in curves[name]),
              flush=True)
    size = f"{subset:,}-sample subset" if subset else "full training set"
    title = (f"{setting.dataset}/{setting.model}, {NUM_CLIENTS} non-IID clients, {setting.epochs} local epoch(s) x "
             f"{rounds} rounds, {size}, seed {args.seed}")
    return curves, title


def replay_table(curves: dict[str, list[float]], targets: Sequence[float]) -> str:
    lines = ["| server update | " + " | ".join(f"to {100 * t:g} %: round, time / FedAvg" for t in targets)
             + " | final | accuracy per round |", "|---|" + "---|" * len(targets) + "---|---|"]
    for name, curve in curves.items():
        cells = []
        for target in targets:
            ours, theirs = rounds_to(curve, target), rounds_to(curves["FedAvg"], target)
            if name == "FedAvg" or theirs is None:
                cells.append("-" if ours is None else str(ours))
                continue
            ratio = modelled_ratio(ours, theirs)
            cells.append("never" if ours is None else f"{ours}, {ratio:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {curve[-1]:.4f} | "
                     + " ".join(f"{a:.4f}" for a in curve) + " |")
    return "\n".join(lines)


def theory_section() -> str:
    coefs, momenta, lrs = np.linspace(0, 1, 21), np.linspace(0, 0.9, 10), np.linspace(0.2, 2.0, 19)
    worst, c, mu, lr = best_scalar_setting(coefs, momenta, lrs)
    shown = [(1.0, 0.0, 1.0, "`full`"), (0.5, 0.0, 1.0, "C = 0.5"), (0.15, 0.0, 1.0, "C = 0.15 (secant's late value)"),
             (0.0, 0.0, 1.0, "`none`"), (1.0, 0.9, 0.4, "`full`, mu 0.9, server_lr 0.4"),
             (0.5, 0.5, 0.5, "C = 0.5, mu 0.5, server_lr 0.5")]
    lines = ["| server update (mu 0, server_lr 1 unless stated) | " + " | ".join(f"a = {a:g}" for a in CONTRACTIONS)
             + " |", "|---|" + "---|" * len(CONTRACTIONS)]
    for coef, momentum, server_lr, name in shown:
        ratios = [time_ratio(a, pipeline_rate(a, coef, momentum, server_lr)) for a in CONTRACTIONS]
        lines.append(f"| {name} | " + " | ".join("never" if math.isinf(r) else f"{r:.2f}x" for r in ratios) + " |")
    exact = [time_ratio(a, pipeline_rate(a, a)) for a in CONTRACTIONS]
    lines.append("| C = a, the exact compensation (a different C per direction) | "
                 + " | ".join(f"{r:.2f}x" for r in exact) + " |")
    grid = (f"Searching C in 0..1 (step 0.05), mu in 0..0.9 (step 0.1) and server_lr in 0.2..2 (step 0.1), the "
            f"best worst case over these directions is **{worst:.2f}x** (C = {c:.2f}, mu = {mu:.1f}, "
            f"server_lr = {lr:.1f}): one scalar setting cannot be fast in flat and stiff directions at once, "
            f"while the exact compensation, a different C per direction, takes 0.50x in every one.")
    return "\n\n".join(["## 1. Theory: one C for every direction", "Overlap's time over FedAvg's to shrink the "
                        "error of a direction whose FedAvg round contracts it by 1 - a:", "\n".join(lines), grid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=["mnist-e1", "mnist-e5"])
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--max_train_samples", type=int, help="override the setting's training subset")
    parser.add_argument("--rounds", type=int, help="override the setting's number of rounds")
    parser.add_argument("--out", default="docs/compensation-limits.md", help="markdown report to write")
    args = parser.parse_args()

    sections = [theory_section(), "## 2. The MNIST jobs, replayed with updates that know g(w)"]
    for setting_name in args.settings:
        curves, title = replay_rows(setting_name, args)
        sections += [f"### {setting_name}: {title}", replay_table(curves, SETTINGS[setting_name].targets)]
    sizes = [*(["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []),
             *(["--rounds", str(args.rounds)] if args.rounds else [])]
    command = " ".join(["python benchmarks/compensation_limits.py", "--settings", *args.settings,
                        "--seed", str(args.seed), *sizes])
    header = (f"# How much a compensation can recover\n\nGenerated by `{command}`. Time is modelled for a link on "
              "which upload + download take one round's training T: Overlap's G_n arrives after (n + 1) T, "
              "FedAvg's after 2n T. What they show: [defaults.md]"
              "(defaults.md#why-no-server-side-compensation-is-enough-the-previous-defaults).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n\n".join([header, *sections]) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
