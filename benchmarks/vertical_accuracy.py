"""Held-out AUC of the vertical examples without DP and at several epsilons, over seeds.

Runs the same path as `fedsilo simulate` (config loader + simulation glue), each run with a
fresh ledger directory, and writes the "vertical_accuracy" section of docs/benchmarks.md.

    .venv/bin/python benchmarks/vertical_accuracy.py                      # bank, plain, seeds 1-10
    .venv/bin/python benchmarks/vertical_accuracy.py --backend ckks --seeds 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.silos.config import apply_overrides, load_config  # noqa: E402
from fedsilo.silos.runner import run_job  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "bank_vertical" / "federation.toml"))
    ap.add_argument("--backend", default="plain")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    base = load_config(args.config)
    # the plain backend and the no-DP row need the insecure opt-in (benchmarks and tests only)
    base = base.model_copy(update={"crypto": base.crypto.model_copy(update={"insecure": True})})
    t0 = time.time()
    rows = []
    for eps in [0.0, *args.epsilons]:
        aucs, spent = [], []
        for seed in args.seeds:
            cfg = apply_overrides(base, backend=args.backend, epsilon=eps, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                res = run_job(cfg, ledger_dir=Path(tmp))
            # utility of the joint model, computed by the simulation (under DP no held-out score
            # is released to the guest, so it has no metrics of its own)
            aucs.append(res["simulation_metrics"]["auc"])
            if eps:
                spent.append(max(v["epsilon"] for v in res["epsilon"].values()))
        label = "no DP" if eps == 0 else f"ε = {eps:g}"
        sd = statistics.pstdev(aucs) if len(aucs) > 1 else 0.0
        row = (label, statistics.mean(aucs), min(aucs), sd, max(spent) if spent else None)
        rows.append(row)
        print(f"{label:>8}: AUC mean {row[1]:.4f} min {row[2]:.4f} sd {row[3]:.4f}"
              + (f"  max ε spent {row[4]:.3f}" if row[4] else ""), flush=True)
    md = [
        "## Vertical logistic regression: held-out AUC vs ε",
        "",
        f"Config `{Path(args.config).relative_to(ROOT)}`, backend `{args.backend}`, seeds {args.seeds}; "
        "each run through the same glue as `fedsilo simulate` with a fresh ledger. ε is per party for the whole "
        "job (record level, δ from the config); 'max ε spent' is the largest ε any party's ledger reports.",
        "",
        f"Machine: {machine_line()}; whole benchmark {time.time() - t0:.0f} s.",
        "",
        "| setting | AUC mean | AUC min | AUC sd | max ε spent |",
        "|---|---|---|---|---|",
    ]
    for label, mean, lo, sd, sp in rows:
        md.append(f"| {label} | {mean:.4f} | {lo:.4f} | {sd:.4f} | {'' if sp is None else f'{sp:.3f}'} |")
    md += ["", f"Re-run: `.venv/bin/python benchmarks/vertical_accuracy.py --backend {args.backend} --seeds {' '.join(map(str, args.seeds))}`"]
    if not args.no_write:
        write_section("vertical_accuracy", "\n".join(md))


if __name__ == "__main__":
    main()
