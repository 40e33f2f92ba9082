"""Accuracy of horizontal FL on the hospitals example: central vs FedAvg vs record- vs silo-level DP.

Every row uses the data ``fedsilo simulate examples/hospitals_horizontal/federation.toml --seed S``
prepares (``load_config`` + ``prepare_horizontal``: breast_cancer, 3 label-skewed hospitals,
features clipped to the published bounds and mapped to [-1, 1], each hospital's own 20 % test
rows pooled for evaluation) and, for the federated rows, the production party functions
(``simulate_horizontal``, one thread per party). The federation seed changes the split and the
initial model; the DP noise and the DP-SGD sampling come from the OS CSPRNG in every run (never
from the seed), so the spread over seeds is the spread a user sees. Accuracy and AUC are those of
the final model on every hospital's held-out rows pooled by the benchmark (the results'
``simulation_metrics``: a measurement, not a release).

Rows:

* **central**: the same logistic regression and local trainer on the pooled training rows,
  ``rounds × local_epochs`` epochs of ``federation.toml`` (no DP);
* **FedAvg, no DP**: ``federation.toml`` without ``[privacy]``;
* **record level**: ``federation.toml`` as shipped (DP-SGD, ε = 8 per hospital);
* **silo level, federation.toml training**: the same file with ``level = "silo"`` (what switching
  the level alone gives);
* **silo level, silo_level.toml**: ``examples/hospitals_horizontal/silo_level.toml``, with
  ``colluders = 1`` (the default; 0 is refused at every layer: a silo knows its own share);
* **diagnostic**: ``silo_level.toml`` with features centred on the pooled training mean. Not a
  private pipeline (the mean is not released with DP); it shows how much of the gap comes from
  the features' offset (mean about −0.5 after the [-1, 1] map).

The ``plain`` backend is used for speed; CKKS and Paillier give the same model up to ~1e-8
(``tests/protocols/horizontal``). The split is seeded; the noise is not (it is private), so a
re-run reproduces the table up to the noise's spread.

    .venv/bin/python benchmarks/horizontal_accuracy.py              # 20 seeds, writes docs/benchmarks.md
    .venv/bin/python benchmarks/horizontal_accuracy.py --seeds 3 --no-write
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.silos.tasks.horizontal import simulate_horizontal  # noqa: E402
from fedsilo.protocols.horizontal.models import build_model, get_flat_params  # noqa: E402
from fedsilo.silos.tasks.horizontal import evaluate  # noqa: E402
from fedsilo.protocols.horizontal.training import LocalConfig, train_local  # noqa: E402
from fedsilo.silos.config import JobConfig, apply_overrides, load_config  # noqa: E402
from fedsilo.silos.runner import budgets_for
from fedsilo.silos.tasks.horizontal import HorizontalData, baselines, prepare_horizontal  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hospitals_horizontal"
RECORD_TOML = EXAMPLE / "federation.toml"
SILO_TOML = EXAMPLE / "silo_level.toml"
COMMAND = ".venv/bin/python benchmarks/horizontal_accuracy.py"


def _config(path: Path, seed: int) -> JobConfig:
    cfg = load_config(path)
    cfg = cfg.model_copy(update={"crypto": cfg.crypto.model_copy(update={"insecure": True})})  # plain backend
    return apply_overrides(cfg, backend="plain", seed=seed)


def _federated(cfg: JobConfig, data: HorizontalData, *, privacy: dict[str, Any] | None) -> dict[str, float]:
    res = simulate_horizontal(
        silos=data.silos,
        tests=data.tests,
        backend="plain",
        backend_params={},
        model=cfg.model,
        training=cfg.training.model_dump(),
        privacy=privacy,
        ledger_dir=None,  # a fresh temporary ledger per run: runs do not compose
        budgets=budgets_for(cfg),
        job=f"bench-{cfg.federation.name}-{cfg.federation.seed}",
        seed=cfg.federation.seed,
        min_silos=min(cfg.federation.min_silos, len(data.silos)),
        round_timeout=cfg.federation.round_timeout,
        insecure=True,  # the plain backend: same model as CKKS/Paillier, measured faster
    )
    eps = [v["epsilon"] for v in res["epsilon"].values() if v["epsilon"] is not None]
    # utility of the final model on the pooled held-out rows (simulation only, not a release)
    return {
        "accuracy": res["simulation_metrics"]["accuracy"],
        "auc": res["simulation_metrics"]["auc"],
        "epsilon": max(eps) if eps else float("nan"),
    }


def _central(cfg: JobConfig, data: HorizontalData) -> dict[str, float]:
    """The same model and trainer on the pooled training rows (rounds × local_epochs epochs):
    the ``central`` row of ``fedsilo simulate``'s baselines block."""
    m = baselines(cfg.model, cfg.training, data.silos, data.tests, n_classes=2, seed=cfg.federation.seed)["central"]
    return {"accuracy": m["accuracy"], "auc": m["auc"], "epsilon": float("nan")}


def _centred(data: HorizontalData) -> HorizontalData:
    """Diagnostic only: features minus the pooled training mean (a non-private statistic)."""
    mu = np.vstack([x for x, _ in data.silos.values()]).mean(axis=0)
    return HorizontalData(
        {n: (x - mu, y) for n, (x, y) in data.silos.items()}, {n: (x - mu, y) for n, (x, y) in data.tests.items()},
        data.features, []
    )


Row = tuple[str, Callable[[int], dict[str, float]]]


def rows() -> list[Row]:
    def record_cfg(seed: int) -> tuple[JobConfig, HorizontalData]:
        cfg = _config(RECORD_TOML, seed)
        return cfg, prepare_horizontal(cfg)

    def silo_cfg(seed: int) -> tuple[JobConfig, HorizontalData]:
        cfg = _config(SILO_TOML, seed)
        return cfg, prepare_horizontal(cfg)

    def privacy(cfg: JobConfig, **over: Any) -> dict[str, Any]:
        assert cfg.privacy is not None
        return {**cfg.privacy.model_dump(exclude_unset=True), **over}  # keys the file set (unset ones may be refused)

    def central(seed: int) -> dict[str, float]:
        return _central(*record_cfg(seed))

    def fedavg(seed: int) -> dict[str, float]:
        cfg, data = record_cfg(seed)
        return _federated(cfg, data, privacy=None)

    def record(seed: int) -> dict[str, float]:
        cfg, data = record_cfg(seed)
        assert cfg.privacy is not None and cfg.privacy.level == "record"
        return _federated(cfg, data, privacy=privacy(cfg))

    def silo_untuned(seed: int) -> dict[str, float]:
        cfg, data = record_cfg(seed)
        return _federated(cfg, data, privacy=privacy(cfg, level="silo"))

    def silo(colluders: int, centred: bool = False) -> Callable[[int], dict[str, float]]:
        def run(seed: int) -> dict[str, float]:
            cfg, data = silo_cfg(seed)
            assert cfg.privacy is not None and cfg.privacy.level == "silo"
            return _federated(cfg, _centred(data) if centred else data, privacy=privacy(cfg, colluders=colluders))

        return run

    return [
        ("central logistic regression, no DP (pooled rows, 20 epochs)", central),
        ("FedAvg, no DP (federation.toml)", fedavg),
        ("record level ε = 8, DP-SGD (federation.toml)", record),
        ("silo level ε = 8, federation.toml training (R 10, C 1.0), colluders 1", silo_untuned),
        ("silo level ε = 8, silo_level.toml, colluders 1 (default)", silo(1)),
        ("diagnostic, not private: silo_level.toml, colluders 1, features centred on the pooled mean", silo(1, True)),
    ]


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seeds", type=int, default=20, help="federation seeds 0..N-1 (default 20)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    t_all = time.perf_counter()
    table: list[tuple[str, list[dict[str, float]], float]] = []
    for label, fn in rows():
        t0 = time.perf_counter()
        results = [fn(s) for s in seeds]
        secs = (time.perf_counter() - t0) / len(seeds)
        table.append((label, results, secs))
        acc = [r["accuracy"] for r in results]
        print(f"{label}: mean {np.mean(acc):.3f} min {np.min(acc):.3f} ({secs:.1f} s/run)", flush=True)
    total = time.perf_counter() - t_all
    cmd = COMMAND + ("" if args.seeds == 20 else f" --seeds {args.seeds}")
    lines = [
        "## Horizontal accuracy: central vs FedAvg vs record- and silo-level DP",
        "",
        "The hospitals example's data (`examples/hospitals_horizontal/`: breast_cancer, 3 label-skewed "
        "hospitals, features clipped to the published bounds and mapped to [-1, 1], each hospital's 20 % "
        f"test rows pooled), federation seeds 0–{seeds[-1]} (the seed changes the split and the initial model; "
        "the DP noise and sampling come from the OS CSPRNG in every run); `simulate_horizontal` with the `plain` backend (CKKS/Paillier give the same model). "
        "ε per hospital, δ = 1e-5, each file's accountant (federation.toml: RDP, silo_level.toml: PLD); "
        "ε column: largest reported ε over hospitals and seeds. "
        "Silo-level DP-FedAvg: every hospital every round (q = 1), update clipped to C, "
        "z from the accountant for R rounds; `colluders = 1` sizes each noise share so any 2 of the 3 "
        "shares carry the target noise (1.5× the variance on the sum). "
        "The last row is a diagnostic, not a private pipeline: it centres the features on "
        "the pooled training mean, which is not released with DP, to show how much of the silo-level "
        "gap comes from the features' offset (about −0.5 after the [-1, 1] map).",
        "",
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s.",
        "",
        "| setting | accuracy mean | accuracy min | AUC mean | ε (max) | s/run |",
        "|---|---|---|---|---|---|",
    ]
    for label, results, secs in table:
        acc = [r["accuracy"] for r in results]
        auc = [r["auc"] for r in results]
        eps = [r["epsilon"] for r in results]
        e = max(eps) if not all(v != v for v in eps) else float("nan")
        lines.append(
            f"| {label} | {np.mean(acc):.3f} | {np.min(acc):.3f} | {np.nanmean(auc):.3f} | {_fmt(e, 2)} | {secs:.1f} |"
        )
    lines += ["", f"Re-run: `{cmd}`"]
    md = "\n".join(lines)
    print()
    print(md)
    if not args.no_write:
        print(f"\nwrote {write_section('horizontal_accuracy', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
