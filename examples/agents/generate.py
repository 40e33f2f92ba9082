"""Generate the agents walkthrough's data: scikit-learn's breast-cancer table split between two
hospitals, ``st_marys.csv`` and ``city_general.csv`` (deterministic, seed 7). ``job.toml``'s
``[data.bounds]`` are the data set's published ranges (``python generate.py --bounds`` prints
them): under DP a hospital scales its rows with public bounds, never with its own min/max.

    .venv/bin/python examples/agents/generate.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedsilo.silos.data import load_builtin

HERE = Path(__file__).resolve().parent


def main() -> None:
    table = load_builtin("sklearn:breast_cancer", label="target")
    frame = table.frame
    order = np.random.default_rng(7).permutation(len(frame))
    cut = len(frame) // 2
    frame.iloc[np.sort(order[:cut])].to_csv(HERE / "st_marys.csv", index=False)
    frame.iloc[np.sort(order[cut:])].to_csv(HERE / "city_general.csv", index=False)
    if "--bounds" in sys.argv:
        print("[data.bounds]")
        for k, (lo, hi) in table.bounds.items():
            print(f'"{k}" = [{lo!r}, {hi!r}]')


if __name__ == "__main__":
    main()
