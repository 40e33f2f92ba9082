"""Adaptive clipping (Andrew et al., NeurIPS 2021) against fixed clips, silo-level DP-FedAvg.

breast_cancer split into label-skewed silos as ``fedsilo simulate`` does (alpha 0.5, federation
seed 7), logistic regression, 20 rounds of one local epoch (batch 32, lr 0.5), plain backend,
the production party functions (``simulate_horizontal``). Every row runs at the same ε per silo
(same effective noise multiplier); the fixed-clip rows are the tuning a user would otherwise do,
the adaptive rows start from a clip 100x too small or 100x too large. Noise draws are seeded
(``noise_seed``, a measurement, not a private run) so the rows share them.

    .venv/bin/python benchmarks/adaptive_clipping.py                     # 10 silos, eps 50, 5 draws
    .venv/bin/python benchmarks/adaptive_clipping.py --silos 3 --epsilon 50 --draws 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "protocols" / "horizontal"))
from hz_data import base_kwargs, breast_cancer_silos  # noqa: E402

from fedsilo.silos.tasks.horizontal import simulate_horizontal  # noqa: E402

ROWS = [  # (label, initial clip, adaptive, target quantile)
    ("fixed clip 0.1", 0.1, False, None),
    ("fixed clip 0.3", 0.3, False, None),
    ("fixed clip 1.0", 1.0, False, None),
    ("fixed clip 3.0", 3.0, False, None),
    ("adaptive from 0.01, quantile 0.5", 0.01, True, 0.5),
    ("adaptive from 0.01, quantile 0.9", 0.01, True, 0.9),
    ("adaptive from 100, quantile 0.9", 100.0, True, 0.9),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--silos", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--clip-lr", type=float, default=1.0)
    args = ap.parse_args()
    data = breast_cancer_silos(args.silos, 0.5, 7)
    training = {"rounds": args.rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.5}
    print(f"{args.silos} silos, epsilon {args.epsilon:g} per silo, {args.rounds} rounds, {args.draws} noise draws, "
          f"clip_lr {args.clip_lr:g}")
    print("| clip | accuracy | AUC | final clip (mean) | s/run |\n|---|---|---|---|---|")
    for label, clip, adaptive, quantile in ROWS:
        acc, auc, final, t0 = [], [], [], time.perf_counter()
        for draw in range(args.draws):
            privacy = {"epsilon": args.epsilon, "clip": clip, "level": "silo", "adaptive_clip": adaptive}
            if adaptive:
                privacy.update(target_quantile=quantile, clip_lr=args.clip_lr)
            res = simulate_horizontal(**base_kwargs(data, privacy=privacy, training=training, noise_seed=draw,
                                                    budgets={n: (1e9, 1e-5) for n in data.silos}))
            acc.append(res["simulation_metrics"]["accuracy"])
            auc.append(res["simulation_metrics"]["auc"])
            final.append(res["dp"]["clip"])
        secs = (time.perf_counter() - t0) / args.draws
        print(f"| {label} | {np.mean(acc):.3f} | {np.mean(auc):.4f} | {np.mean(final):.3g} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
