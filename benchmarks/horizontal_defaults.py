"""Horizontal defaults check (issue 17 item 2): FedAvg vs centralized logistic regression and each silo alone.

Synthetic four-site data (non-IID: per-site covariate shift, 300-1500 rows, 12 features with skewed
public bounds), optionally centred on the public typical value. Prints AUC on the pooled held-out
rows and the gap to unregularised scikit-learn logistic regression on the pooled rows.

    .venv/bin/python benchmarks/horizontal_defaults.py '{"default": {}, "fedadam": {"strategy": "fedadam"}}' 1 4
    (args: {name: [training] overrides} as JSON, centre 0/1, seeds)
"""
import sys, json
import numpy as np, torch
from fedsilo.silos.tasks.horizontal import simulate_horizontal, evaluate
from fedsilo.protocols.horizontal.models import build_model, get_flat_params
from fedsilo.protocols.horizontal.training import LocalConfig, train_local
from fedsilo.protocols.spec import TrainingSection, ModelSection
from fedsilo.protocols.scaling import scale_with_bounds
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
torch.set_num_threads(1)
M = ModelSection(kind="logistic")
def data(seed, center):
    rng = np.random.default_rng(seed)
    d = 12; k = 4
    w = rng.normal(0, 0.35, d)
    means = rng.uniform(20, 80, d); sds = rng.uniform(3, 12, d)
    lo = np.floor(means - 3*sds); hi = np.ceil(means + 9*sds)
    silos, tests = {}, {}
    for s in range(k):
        n = int(rng.integers(300, 1500))
        shift = rng.normal(0, 0.5, d)
        z = rng.normal(shift, 1, (n, d))
        logit = z @ w + rng.normal(0, 0.3) - 0.5
        y = (rng.random(n) < 1/(1+np.exp(-logit))).astype(float)
        x = means + sds * z
        xs = scale_with_bounds(x, lo, hi)
        if center:
            c = 2*(np.round(means) - lo)/(hi-lo) - 1
            xs = xs - c
        held = rng.random(n) < 0.2
        silos[f"s{s}"] = (xs[~held], y[~held]); tests[f"s{s}"] = (xs[held], y[held])
    return silos, tests
def trainer(x, y, tr, seed):
    model = build_model(M, n_features=x.shape[1], n_classes=2, seed=seed)
    p0 = get_flat_params(model)
    out = train_local(model, x, y, global_params=p0, config=LocalConfig.from_sections(tr, epochs=tr.rounds*tr.local_epochs), n_classes=2, seed=seed)
    return p0 + out.update
settings = json.loads(sys.argv[1]); center = sys.argv[2] == "1"; nseeds = int(sys.argv[3])
rows = {}
for seed in range(nseeds):
    silos, tests = data(seed, center)
    x = np.vstack([a for a,_ in silos.values()]); y = np.concatenate([b for _,b in silos.values()])
    tx = np.vstack([a for a,_ in tests.values()]); ty = np.concatenate([b for _,b in tests.values()])
    sk = LogisticRegression(C=1e4, max_iter=10000).fit(x, y)
    rows.setdefault("sklearn", []).append(roc_auc_score(ty, sk.predict_proba(tx)[:,1]))
    for name, over in settings.items():
        tr = TrainingSection(**over)
        rows.setdefault(name+"/central", []).append(evaluate(M, trainer(x, y, tr, seed), tx, ty, n_features=x.shape[1], n_classes=2)["auc"])
        rows.setdefault(name+"/alone", []).append(max(evaluate(M, trainer(a, b, tr, seed), tx, ty, n_features=x.shape[1], n_classes=2)["auc"] for a,b in silos.values()))
        res = simulate_horizontal(silos=silos, tests=tests, backend="plain", backend_params={}, model=M, training=tr, privacy=None,
            ledger_dir=None, budgets={}, job="m", seed=seed, min_silos=2, round_timeout=60, insecure=True)
        rows.setdefault(name+"/fed", []).append(res["simulation_metrics"]["auc"])
sk = np.array(rows["sklearn"])
for k, v in rows.items():
    print(f"{k:34s} mean {np.mean(v):.4f}  gap-to-sklearn mean {np.mean(sk-np.array(v)):+.4f} max {np.max(sk-np.array(v)):+.4f}")
