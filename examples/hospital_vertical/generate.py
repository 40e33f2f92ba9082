"""Generate the hospital_vertical example: breast_cancer split by columns across three parties.

Deterministic (seed 11): ``python examples/hospital_vertical/generate.py`` rewrites the three
CSVs next to this file byte for byte.

Story. Three departments of different hospitals saw the same patients (the Wisconsin
Diagnostic Breast Cancer data, 569 patients, 30 features of cell nuclei; Street, Wolberg &
Mangasarian, 1993, shipped with scikit-learn):

* ``oncology.csv`` — the **guest**: the diagnosis (``malignant`` = 1) and the ten *mean*
  measurements;
* ``radiology.csv`` — a **host**: the ten *standard-error* measurements;
* ``pathology.csv`` — a **host**: the ten *worst* (largest) measurements.

Each party holds its own subset of the patients (every party misses about 8 % of them at
random, so the three-way overlap is about 440 patients), keyed by a pseudonymous
``patient_id`` and stored in its own row order. A trust centre without data acts as the
arbiter (key holder).

Public bounds. Under differential privacy every feature is clipped to a *public* range and
mapped to [-1, 1] (``[data] bounds`` in federation.toml; docs/vertical.md). For these
measurements the public ranges are the minimum and maximum published in the data set's
description (scikit-learn's ``DESCR`` summary table, read by the same parser the silos' data
loader uses), not statistics the parties compute on their rows. ``python generate.py`` prints
them as the ``[data.bounds]`` table of federation.toml (a test checks that the two agree).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

SEED = 11
MISSING = 0.08
HERE = Path(__file__).resolve().parent


def _column(name: str) -> str:
    return name.replace(" ", "_")


def generate(seed: int = SEED) -> dict[str, pd.DataFrame]:
    """The three parties' tables."""
    rng = np.random.default_rng(seed)
    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    n = len(frame)
    ids = rng.choice(np.arange(10_000, 100_000), size=n, replace=False)
    patient_id = [f"PT{i}" for i in ids]
    names = list(data.feature_names)
    groups = {
        "oncology": [c for c in names if c.startswith("mean ")],
        "radiology": [c for c in names if c.endswith(" error")],
        "pathology": [c for c in names if c.startswith("worst ")],
    }
    out = {}
    for party, cols in groups.items():
        table = pd.DataFrame({"patient_id": patient_id})
        if party == "oncology":
            table["malignant"] = (frame["target"] == 0).astype(int)  # sklearn: target 0 = malignant
        for c in cols:
            table[_column(c)] = frame[c].round(6)
        keep = np.flatnonzero(rng.random(n) >= MISSING)
        out[party] = table.iloc[rng.permutation(keep)].reset_index(drop=True)
    return out


def bounds() -> dict[str, tuple[float, float]]:
    """Public range of every feature column: the min/max in breast_cancer's published DESCR."""
    from fedsilo.silos.data import _descr_bounds

    data = load_breast_cancer()
    names = list(data.feature_names)
    published = _descr_bounds(data.DESCR, names)
    missing = [c for c in names if c not in published]
    if missing:
        raise RuntimeError(f"the data set's description has no range for {missing}")
    return {_column(c): published[c] for c in names}


def bounds_toml() -> str:
    """The ``[data.bounds]`` table of federation.toml (the same as ``[data] bounds = {...}``)."""
    return "[data.bounds]\n" + "".join(f"{k} = [{lo!r}, {hi!r}]\n" for k, (lo, hi) in bounds().items())


def main(out_dir: Path = HERE) -> None:
    for party, table in generate().items():
        table.to_csv(out_dir / f"{party}.csv", index=False)
        print(f"wrote {len(table)} rows to {out_dir / (party + '.csv')}")
    print("public feature bounds for federation.toml:\n" + bounds_toml())


if __name__ == "__main__":
    main()
