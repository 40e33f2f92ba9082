"""Generate the bank_vertical example data: a credit-scoring table split across two companies.

Deterministic (seed 7): ``python examples/bank_vertical/generate.py`` rewrites ``bank.csv`` and
``partner.csv`` next to this file byte for byte.

Story. A bank (the **guest**) wants to predict which customers will ``default`` within a
year. It knows each customer's age, income, debt ratio, number of credit lines, recent late
payments and how long they have banked there. A partner company (the **host**, e.g. a retailer
or telecom with a credit-card product) knows, for its own customers, their revolving credit
utilization, recent credit inquiries, serious (90-day) delinquencies, contract tenure and
monthly spend. The two share some customers, identified by a common ``customer_id``
(in practice a salted hash of a national ID both hold). Neither may show the other its table.

The data are synthetic. Features are drawn with realistic marginals and correlations (a latent
"financial stress" factor drives debt, utilization and late payments), and ``default`` follows
a logistic model that uses *both* companies' features, so the partner's columns add real
predictive power (a latent "card habits" factor shows mostly in the partner's columns; the
AUC with the bank's columns alone is clearly lower):

* 2,400 bank customers, 2,300 partner customers, 2,000 shared (aligned by PSI);
* a default rate of about 16 %;
* published as a scorecard team would feed a linear model: income and spend in log scale,
  counts of late payments and inquiries capped ("4 means 4 or more"). Heavy tails hurt the
  Taylor-approximated logistic regression of vertical FL (a least-squares fit in disguise)
  more than exact logistic regression.

Public bounds. Under differential privacy every feature is clipped to a *public* range and
mapped to [-1, 1] (``[data] bounds`` in federation.toml; docs/vertical.md): scaling with the
data's own mean or min/max would let one customer move how every other customer is scaled.
``BOUNDS`` below is the data dictionary the two companies would publish: product rules and the
caps of the published columns, never statistics of the rows. ``python generate.py`` prints them
as the ``[data.bounds]`` table of federation.toml (a test checks that the two agree).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 7
N_SHARED, N_BANK_ONLY, N_PARTNER_ONLY = 2000, 400, 300
HERE = Path(__file__).resolve().parent

#: Public range of every feature (column -> (lo, hi)), chosen from the data dictionary, not the data.
BOUNDS: dict[str, tuple[float, float]] = {
    # bank
    "age": (18.0, 85.0),  # lending policy: applicants aged 18 to 85 (the generator clips to it)
    "log_income": (round(math.log(5_000), 4), round(math.log(250_000), 4)),  # annual income 5k-250k
    "debt_ratio": (0.0, 1.5),  # debt / income, reported capped at 150 %
    "credit_lines": (0.0, 20.0),  # open credit lines; credit-bureau reports cap the count at 20
    "late_payments_30d": (0.0, 4.0),  # published capped: 4 means 4 or more
    "months_customer": (0.0, 480.0),  # relationship length, capped at 40 years
    # partner
    "utilization": (0.0, 1.2),  # revolving utilization, over-limit reported as 120 %
    "inquiries_6m": (0.0, 6.0),  # published capped: 6 means 6 or more
    "late_payments_90d": (0.0, 4.0),  # published capped: 4 means 4 or more
    "tenure_months": (0.0, 300.0),  # contract tenure, capped at 25 years
    "log_monthly_spend": (round(math.log(20), 4), round(math.log(10_000), 4)),  # monthly spend 20-10k
}


def generate(seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bank's and the partner's tables (rows in each company's own, unrelated order)."""
    rng = np.random.default_rng(seed)
    n = N_SHARED + N_BANK_ONLY + N_PARTNER_ONLY
    ids = rng.choice(np.arange(100_000, 1_000_000), size=n, replace=False)
    customer_id = np.array([f"C{i}" for i in ids])

    stress = rng.normal(size=n)  # latent financial stress, visible in both companies' data
    habits = rng.normal(size=n)  # latent card-usage habits, visible mostly in the partner's data
    age = np.clip(rng.normal(42, 12, size=n), 18, 85).round()
    income = np.exp(rng.normal(10.6 - 0.15 * stress + 0.01 * (age - 42), 0.45, size=n)).round(-2)
    debt_ratio = np.clip(rng.beta(2, 5, size=n) + 0.08 * stress, 0, 1.5).round(3)
    credit_lines = rng.poisson(np.clip(4 + 0.06 * (age - 42), 0.5, None)).astype(int)
    late_30d = rng.poisson(np.exp(-1.6 + 0.7 * stress)).astype(int)
    months_customer = np.clip(rng.gamma(2.0, 30.0, size=n), 1, 480).round().astype(int)

    utilization = np.clip(rng.beta(2, 3, size=n) + 0.06 * stress + 0.15 * habits, 0, 1.2).round(3)
    inquiries = rng.poisson(np.exp(-0.3 + 0.2 * stress + 0.5 * habits)).astype(int)
    late_90d = rng.poisson(np.exp(-2.4 + 0.4 * stress + 0.8 * habits)).astype(int)
    tenure_months = np.clip(rng.gamma(2.5, 18.0, size=n), 1, 300).round().astype(int)
    monthly_spend = np.exp(rng.normal(6.0 + 0.3 * np.log(income / 40_000), 0.5, size=n)).round(2)

    # The label model is logistic in the published (log-scale, capped) columns.
    late_30d, inquiries, late_90d = np.minimum(late_30d, 4), np.minimum(inquiries, 6), np.minimum(late_90d, 4)
    log_income, log_spend = np.log(income), np.log(monthly_spend)
    logit = (
        -2.1
        - 1.2 * (log_income - 10.6)
        + 1.6 * (debt_ratio - 0.3)
        + 0.35 * late_30d
        - 0.012 * (age - 42)
        - 0.003 * months_customer
        + 3.0 * (utilization - 0.4)
        + 0.3 * inquiries
        + 0.9 * late_90d
        - 0.006 * tenure_months
        - 0.2 * (log_spend - 6.0)
    )
    default = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)

    bank_rows = np.arange(N_SHARED + N_BANK_ONLY)
    partner_rows = np.r_[np.arange(N_SHARED), np.arange(N_SHARED + N_BANK_ONLY, n)]
    bank = pd.DataFrame(
        {
            "customer_id": customer_id,
            "default": default,
            "age": age.astype(int),
            "log_income": log_income.round(4),
            "debt_ratio": debt_ratio,
            "credit_lines": credit_lines,
            "late_payments_30d": late_30d,
            "months_customer": months_customer,
        }
    ).iloc[rng.permutation(bank_rows)]
    partner = pd.DataFrame(
        {
            "customer_id": customer_id,
            "utilization": utilization,
            "inquiries_6m": inquiries,
            "late_payments_90d": late_90d,
            "tenure_months": tenure_months,
            "log_monthly_spend": log_spend.round(4),
        }
    ).iloc[rng.permutation(partner_rows)]
    return bank.reset_index(drop=True), partner.reset_index(drop=True)


def bounds_toml(bounds: dict[str, tuple[float, float]] = BOUNDS) -> str:
    """The ``[data.bounds]`` table of federation.toml (the same as ``[data] bounds = {...}``)."""
    return "[data.bounds]\n" + "".join(f"{k} = [{lo!r}, {hi!r}]\n" for k, (lo, hi) in bounds.items())


def main(out_dir: Path = HERE) -> None:
    bank, partner = generate()
    bank.to_csv(out_dir / "bank.csv", index=False)
    partner.to_csv(out_dir / "partner.csv", index=False)
    print(f"wrote {len(bank)} bank rows and {len(partner)} partner rows to {out_dir}")
    print("public feature bounds for federation.toml:\n" + bounds_toml())


if __name__ == "__main__":
    main()
