"""The parameter count of a built-in model is known without torch (planning, the budget
pre-flight), equals the built model's, and a model past MAX_MODEL_PARAMETERS is refused at
planning naming the key, before any ledger exists (privacy review, session 8: a typo in
``hidden`` failed inside torch's allocator after the ledgers were created)."""
from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.protocols.horizontal.local_plan import (
    MAX_MODEL_PARAMETERS,
    builtin_layer_shapes,
    builtin_parameter_count,
    n_outputs_for,
)
from fedsilo.protocols.horizontal.models import build_model, get_flat_params
from fedsilo.protocols.spec import ModelSection

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"


@pytest.mark.parametrize(("kind", "hidden", "n_features", "n_classes"), [
    ("logistic", [32], 30, 2), ("logistic", [32], 13, 3), ("mlp", [32], 30, 2), ("mlp", [7, 5, 3], 4, 5),
    ("mlp", [1], 1, 2), ("mlp", [64, 64], 20, 10),
])
def test_the_count_equals_the_built_models(kind: str, hidden: list[int], n_features: int, n_classes: int) -> None:
    spec = ModelSection(kind=kind, hidden=hidden) if kind == "mlp" else ModelSection(kind=kind)
    model = build_model(spec, n_features=n_features, n_classes=n_classes, seed=0)
    built = get_flat_params(model).shape[0]
    assert builtin_parameter_count(kind, spec.hidden, n_features=n_features, n_classes=n_classes) == built
    # the torch model's linear layers are the torch-free shapes, in order (so the count is the model's)
    linear = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linear == builtin_layer_shapes(kind, spec.hidden, n_features=n_features, n_outputs=n_outputs_for(n_classes))


@pytest.mark.timeout(120)
def test_a_model_past_the_limit_is_refused_before_any_ledger(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(EXAMPLE.read_text().replace('kind = "logistic"', 'kind = "mlp"\nhidden = [1099511627776]'))
    ledgers = tmp_path / "ledgers"
    res = CliRunner().invoke(app, ["simulate", str(config), "--backend", "plain", "--insecure", "--ledger-dir",
                                   str(ledgers), "-q"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "key 'model.hidden': the mlp model would have 35,184,372,088,833 parameters on 30 features" in res.output
    assert f"at most {MAX_MODEL_PARAMETERS:,} per update" in res.output
    assert not ledgers.exists() or not list(ledgers.iterdir())


def test_an_import_path_kind_has_no_builtin_shapes() -> None:
    """Only the built-in kinds have torch-free shapes; a user class is counted by building it."""
    from fedsilo.errors import ConfigError

    with pytest.raises(ConfigError, match="'mypkg.models:Net' is not a built-in model"):
        builtin_parameter_count("mypkg.models:Net", [], n_features=3, n_classes=2)
