"""(ε, δ) releases (:class:`ApproxDpEvent`) and the releases they pay for (:class:`CoveredEvent`):
their ε against dp-accounting (PLD) and against basic composition by hand (RDP), mixed
compositions, relation conversion, the ledger, and bad parameters (issue 17: distributed DP-SGD's
sound ledger ε)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.privacy_accountant import NeighboringRelation
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import BudgetExceededError, PrivacyError, PrivacyParameterError
from fedsilo.privacy import ApproxDpEvent, ComposedEvent, CoveredEvent, GaussianEvent, LaplaceEvent, epsilon
from fedsilo.privacy.events import event_from_json
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO, convert

DELTA = 1e-5
INTERVAL = 1e-4  # fedsilo's PLD discretization (dp-accounting's default)

eps_st = st.floats(min_value=0.01, max_value=20.0, allow_nan=False)
delta_st = st.floats(min_value=1e-9, max_value=0.5, allow_nan=False)
label_st = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


# --------------------------------------------------------------------------------- JSON
@settings(max_examples=60, deadline=None)
@given(e=eps_st, d=delta_st, t=st.integers(1, 50), label=label_st, z=st.floats(0.3, 50.0), q=st.floats(1e-3, 1.0))
def test_json_round_trip(e: float, d: float, t: int, label: str, z: float, q: float) -> None:
    cover = ApproxDpEvent(e, d, t, label, covers=t)
    covered = CoveredEvent(GaussianEvent(z, q, 1), label)
    for ev in (cover, ApproxDpEvent(e, d), covered, ComposedEvent((GaussianEvent(z), cover, covered))):
        assert event_from_json(ev.to_json()) == ev
        assert type(ev).from_json(ev.to_json()) == ev
    assert "cover" not in ApproxDpEvent(e, d).to_json()  # the optional key is written only when set


def test_json_refuses_unknown_and_missing_keys() -> None:
    with pytest.raises(PrivacyError, match=r"'approx_dp' lacks delta"):
        event_from_json({"kind": "approx_dp", "epsilon": 1.0})
    with pytest.raises(PrivacyError, match=r"'approx_dp' has unknown keys sigma"):
        event_from_json({"kind": "approx_dp", "epsilon": 1.0, "delta": 1e-6, "sigma": 2})
    with pytest.raises(PrivacyError, match=r"'approx_dp' has a cover but lacks covers"):
        event_from_json({"kind": "approx_dp", "epsilon": 1.0, "delta": 1e-6, "cover": "c"})
    with pytest.raises(PrivacyError, match=r"'covered' lacks cover"):
        event_from_json({"kind": "covered", "event": GaussianEvent(1.0).to_json()})
    with pytest.raises(PrivacyError, match=r"must be a JSON object"):
        event_from_json({"kind": "covered", "event": 3, "cover": "x"})


# --------------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"epsilon": 0.0, "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a finite number > 0, got 0\.0"),
    ({"epsilon": -1.0, "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a finite number > 0"),
    ({"epsilon": math.nan, "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a finite number > 0, got nan"),
    ({"epsilon": math.inf, "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a finite number > 0, got inf"),
    ({"epsilon": True, "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a number, got True"),
    ({"epsilon": "1", "delta": 1e-6}, r"ApproxDpEvent: epsilon must be a number, got '1'"),
    ({"epsilon": 1.0, "delta": 0.0}, r"ApproxDpEvent: delta must be a finite number > 0, got 0\.0"),
    ({"epsilon": 1.0, "delta": 1.0}, r"ApproxDpEvent: delta must be in \(0, 1\), got 1\.0"),
    ({"epsilon": 1.0, "delta": 2.0}, r"ApproxDpEvent: delta must be in \(0, 1\), got 2\.0"),
    ({"epsilon": 1.0, "delta": math.nan}, r"ApproxDpEvent: delta must be a finite number > 0, got nan"),
    ({"epsilon": 1.0, "delta": 1e-6, "steps": 0}, r"ApproxDpEvent: steps must be an integer >= 1, got 0"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": 7}, r"ApproxDpEvent: cover must be a string label, got 7"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": "a\nb"}, r"ApproxDpEvent: cover must be at most 128 printable"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": "x" * 129}, r"ApproxDpEvent: cover must be at most 128 printable"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": "x"}, r"ApproxDpEvent: covers must be an integer >= 1, got 0|"
                                           r"'approx_dp' has a cover but lacks covers"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": "x", "covers": -3}, r"ApproxDpEvent: covers must be an integer >= 1"),
    ({"epsilon": 1.0, "delta": 1e-6, "cover": "x", "covers": 2.0}, r"ApproxDpEvent: covers must be an integer >= 1"),
    ({"epsilon": 1.0, "delta": 1e-6, "covers": 4}, r"ApproxDpEvent: covers counts the releases a cover pays for; "
                                                   r"without a cover it must be 0, got 4"),
    ({"epsilon": 1.0, "delta": 1e-6, "covers": False}, r"without a cover it must be 0, got False"),
])
def test_bad_approx_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(PrivacyParameterError, match=match):
        ApproxDpEvent(**kwargs)
    # the same from JSON (a ledger row): one line, the same message
    with pytest.raises(PrivacyParameterError, match=match):
        event_from_json({"kind": "approx_dp", **kwargs})


def test_bad_covered_parameters_are_refused() -> None:
    with pytest.raises(PrivacyParameterError, match=r"CoveredEvent: cover must name the ApproxDpEvent"):
        CoveredEvent(GaussianEvent(1.0), "")
    with pytest.raises(PrivacyError, match=r"CoveredEvent: not a fedsilo DP event: 3"):
        CoveredEvent(3, "x")  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match=r"CoveredEvent: the covered event must be the release's own mechanism"):
        CoveredEvent(ApproxDpEvent(1.0, 1e-6, cover="x", covers=1), "x")


# --------------------------------------------------------------------------------- accounting
@settings(max_examples=30, deadline=None)
@given(e=eps_st, d=st.floats(1e-9, 0.9e-5), t=st.integers(1, 4))
def test_approx_alone_is_basic_composition(e: float, d: float, t: int) -> None:
    ev = ApproxDpEvent(e, d, t)
    if t * d <= DELTA:
        assert epsilon(ev, delta=DELTA, accountant="rdp") == pytest.approx(t * e, rel=1e-12)
        # PLD of T worst-case (eps, delta) pairs: optimal composition, never above basic
        assert epsilon(ev, delta=DELTA, accountant="pld") <= t * e + 1e-9
    else:
        assert epsilon(ev, delta=DELTA, accountant="rdp") == math.inf
    # not enough delta for the releases' own delta: no finite bound
    assert epsilon(ApproxDpEvent(e, 0.5), delta=0.4, accountant="rdp") == math.inf
    assert epsilon(ApproxDpEvent(e, 0.5), delta=0.4, accountant="pld") == math.inf


def test_mixed_rdp_equals_basic_composition_by_hand() -> None:
    """RDP: the Gaussian parts compose by dp-accounting's RDP at δ − δ₁, then ε₁ is added."""
    steps = GaussianEvent(1.1, 0.01, 300)
    count = GaussianEvent(30.0)
    cover = ApproxDpEvent(3.0, 4e-6, 1, "c", covers=1)
    mixed = ComposedEvent((count, steps, cover, CoveredEvent(GaussianEvent(0.5, 0.2, 1), "c")))
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(30.0))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 300))
    by_hand = acc.get_epsilon(DELTA - 4e-6) + 3.0
    ours = epsilon(mixed, delta=DELTA, accountant="rdp")
    assert ours == pytest.approx(by_hand, abs=1e-9)
    # at least each part on its own: sound
    for part in (count, steps, cover, ComposedEvent((count, steps))):
        assert ours >= epsilon(part, delta=DELTA, accountant="rdp")


def test_mixed_pld_equals_dp_accounting_by_hand() -> None:
    """PLD: dp-accounting's pessimistic PLD of an (ε, δ)-DP mechanism composed with the
    Gaussians' PLDs, as its PLDAccountant builds them."""
    steps = GaussianEvent(1.1, 0.01, 300)
    count = GaussianEvent(30.0)
    lap = LaplaceEvent(0.3, 2)
    cover = ApproxDpEvent(3.0, 4e-6, 1, "c", covers=1)
    mixed = ComposedEvent((count, steps, lap, cover, CoveredEvent(GaussianEvent(0.5, 0.2, 1), "c")))
    add_remove = NeighboringRelation.ADD_OR_REMOVE_ONE
    total = pld_lib.from_privacy_parameters(pld_common.DifferentialPrivacyParameters(3.0, 4e-6),
                                            value_discretization_interval=INTERVAL)
    total = total.compose(pld_lib.from_gaussian_mechanism(
        standard_deviation=1.1, sampling_prob=0.01, value_discretization_interval=INTERVAL,
        neighboring_relation=add_remove).self_compose(300))
    total = total.compose(pld_lib.from_discrete_laplace_mechanism(
        parameter=0.3, sensitivity=1, value_discretization_interval=INTERVAL).self_compose(2))
    total = total.compose(pld_lib.from_gaussian_mechanism(
        standard_deviation=30.0, value_discretization_interval=INTERVAL, neighboring_relation=add_remove))
    by_hand = total.get_epsilon_for_delta(DELTA)
    ours = epsilon(mixed, delta=DELTA, accountant="pld")
    assert ours == pytest.approx(by_hand, abs=1e-6)
    for part in (count, steps, lap, cover, ComposedEvent((count, steps, lap))):
        assert ours >= epsilon(part, delta=DELTA, accountant="pld") - 1e-9
    # never above basic composition of the parts (the PLD of the pair is the optimal composition)
    basic = epsilon(ComposedEvent((count, steps, lap)), delta=DELTA - 4e-6, accountant="pld") + 3.0
    assert ours <= basic + 1e-6


def test_distributed_target_is_met_by_basic_composition() -> None:
    """The shape of a distributed DP-SGD job at ε = 8: the count at (2 % ε, 2 % δ) and the
    training's cover at (98 % ε, 98 % δ) compose to 8 (within the count's calibration), where
    the old record (the count with the steps' Gaussians) gave 7.8x."""
    from fedsilo.privacy.accounting import noise_multiplier

    z_count = noise_multiplier(target_epsilon=0.16, delta=2e-7)
    whole = ComposedEvent((GaussianEvent(z_count), ApproxDpEvent(7.84, 0.98 * DELTA, 1, "c", covers=100),
                           *[CoveredEvent(GaussianEvent(1.0, 0.05, 1), "c")] * 100))
    rdp_eps = epsilon(whole, delta=DELTA, accountant="rdp")
    assert 8.0 - 0.01 * 0.16 <= rdp_eps <= 8.0
    assert rdp_eps == pytest.approx(epsilon(GaussianEvent(z_count), delta=DELTA - 0.98 * DELTA) + 7.84, abs=1e-12)
    assert 7.9 < epsilon(whole, delta=DELTA, accountant="pld") <= rdp_eps + 1e-9


def test_covered_costs_nothing_beside_its_cover_and_is_refused_without() -> None:
    cover = ApproxDpEvent(2.0, 1e-6, 1, "job-a", covers=50)
    step = GaussianEvent(0.8, 0.5, 1)
    with_steps = ComposedEvent((cover, *[CoveredEvent(step, "job-a")] * 50))
    for acc in ("rdp", "pld"):
        assert epsilon(with_steps, delta=DELTA, accountant=acc) == epsilon(cover, delta=DELTA, accountant=acc)
        with pytest.raises(PrivacyError, match=r"names cover 'job-a', which is not in the composition"):
            epsilon(CoveredEvent(step, "job-a"), delta=DELTA, accountant=acc)
        # another label does not cover it, nor does an unlabelled (eps, delta) release
        with pytest.raises(PrivacyError, match=r"names cover 'job-a'"):
            epsilon(ComposedEvent((ApproxDpEvent(2.0, 1e-6, 1, "job-b", covers=1), ApproxDpEvent(2.0, 1e-6),
                                   CoveredEvent(step, "job-a"))), delta=DELTA, accountant=acc)


def test_relation_conversion_is_group_privacy_of_two() -> None:
    cover = ApproxDpEvent(1.0, 1e-6, 2, "c", covers=3)
    got = convert(cover, source=ZERO_OUT_SILO, target=ADD_REMOVE_RECORD)
    assert got == ApproxDpEvent(2.0, (1.0 + math.e) * 1e-6, 2, "c", covers=3)
    covered = CoveredEvent(GaussianEvent(1.0, 0.1, 1), "c")
    assert convert(covered, source=ZERO_OUT_SILO, target=ADD_REMOVE_RECORD) == covered
    with pytest.raises(PrivacyError, match=r"cannot convert.*the converted \(epsilon, delta\) is invalid"):
        convert(ApproxDpEvent(5.0, 0.01), source=ZERO_OUT_SILO, target=ADD_REMOVE_RECORD)


# --------------------------------------------------------------------------------- ledger
def _charge(ledger: PrivacyLedger, event, round: int) -> None:  # type: ignore[no-untyped-def]
    with ledger.charge("d", event, job="j", round=round, protocol="t", mechanism={"name": "t"}, recipient="x",
                       relation=ADD_REMOVE_RECORD):
        pass


def test_ledger_charges_a_cover_then_its_covered_releases(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = ComposedEvent((GaussianEvent(30.0), ApproxDpEvent(7.84, 0.98 * DELTA, 1, "c1", covers=5)))
    with PrivacyLedger(path, silo="s") as ledger:
        ledger.register_dataset("d", epsilon=8.0, delta=DELTA)
        planned = ledger.preview("d", [(first, ADD_REMOVE_RECORD)])
        # a covered release before its cover is refused, nothing written
        with pytest.raises(PrivacyError, match=r"silo 's', dataset 'd'.*names cover 'c1'.*nothing was written"):
            _charge(ledger, CoveredEvent(GaussianEvent(1.0, 0.1, 1), "c1"), 1)
        assert ledger.entries("d") == []
        _charge(ledger, first, 0)
        spent = ledger.spent("d")
        for rnd in range(1, 6):
            _charge(ledger, CoveredEvent(GaussianEvent(1.0, 0.1, 1), "c1"), rnd)
        assert ledger.spent("d") == spent == planned.after == planned.need
        assert spent == pytest.approx(epsilon(GaussianEvent(30.0), delta=DELTA - 0.98 * DELTA) + 7.84, abs=1e-12)
        ledger.verify()
    with PrivacyLedger.open(path) as again:
        again.verify()
        assert [e.event for e in again.entries("d")][0] == first
        assert again.spent("d") == spent
        # a second job at the same delta: the two (eps, delta) releases need more delta than the
        # dataset's, so no finite epsilon: refused, nothing written
        with pytest.raises(BudgetExceededError):
            _charge(again, ComposedEvent((GaussianEvent(30.0), ApproxDpEvent(0.5, 0.98 * DELTA, 1, "c2", covers=5))), 0)
        assert len(again.entries("d")) == 6


def _ledger_with_cover(tmp_path: Path) -> PrivacyLedger:
    led = PrivacyLedger(tmp_path / "l.db", silo="s1")
    led.register_dataset("ds", epsilon=8.0, delta=1e-5)
    reserve = ComposedEvent((GaussianEvent(40.0, 1.0, 1), ApproxDpEvent(7.84, 9.8e-6, 1, "training/aaaa", covers=2)))
    with led.charge("ds", reserve, job="jobA", round=0, protocol="p", mechanism={"name": "x"}, recipient="agg",
                    relation=ADD_REMOVE_RECORD):
        pass
    return led


def test_a_cover_pays_only_for_its_own_job(tmp_path: Path) -> None:
    """Found by the privacy review: a release of another job (or protocol) naming an existing
    cover was free. It is refused and nothing is written; the cover's own job still uses it."""
    led = _ledger_with_cover(tmp_path)
    spent = led.spent("ds")
    costly = CoveredEvent(GaussianEvent(0.3, 1.0, 1000), "training/aaaa")
    for job, protocol in (("jobB", "p"), ("jobA", "other")):
        with pytest.raises(PrivacyError, match="a cover pays only for its own job; nothing was written"):
            with led.charge("ds", costly, job=job, round=1, protocol=protocol, mechanism={"name": "x"},
                            recipient="agg", relation=ADD_REMOVE_RECORD):
                pass
    assert led.spent("ds") == spent
    with led.charge("ds", CoveredEvent(GaussianEvent(1.2, 0.1, 1), "training/aaaa"), job="jobA", round=1,
                    protocol="p", mechanism={"name": "x"}, recipient="agg", relation=ADD_REMOVE_RECORD):
        pass
    assert led.spent("ds") == pytest.approx(spent)


def test_a_cover_label_is_defined_once_per_dataset(tmp_path: Path) -> None:
    led = _ledger_with_cover(tmp_path)
    spent = led.spent("ds")
    with pytest.raises(PrivacyError, match="cover 'training/aaaa' is already defined by job 'jobA'"):
        with led.charge("ds", ApproxDpEvent(0.01, 1e-9, 1, "training/aaaa", covers=1), job="jobC", round=0, protocol="p",
                        mechanism={"name": "x"}, recipient="agg", relation=ADD_REMOVE_RECORD):
            pass
    assert led.spent("ds") == spent


def test_a_cover_pays_for_its_count_of_releases_no_more() -> None:
    """A cover's calibration composed ``covers`` releases: one more in a composition is refused
    (it would cost nothing otherwise), by either accountant."""
    cover = ApproxDpEvent(2.0, 1e-6, 1, "c", covers=3)
    step = CoveredEvent(GaussianEvent(0.8, 0.5, 1), "c")
    for acc in ("rdp", "pld"):
        assert epsilon(ComposedEvent((cover, *[step] * 3)), delta=DELTA, accountant=acc) == epsilon(
            cover, delta=DELTA, accountant=acc)
        with pytest.raises(PrivacyError, match=r"cover 'c' pays for 3 release\(s\), and the composition holds more"):
            epsilon(ComposedEvent((cover, *[step] * 4)), delta=DELTA, accountant=acc)


def test_the_ledger_refuses_the_covered_release_past_its_cover(tmp_path: Path) -> None:
    led = _ledger_with_cover(tmp_path)  # covers = 2
    spent = led.spent("ds")
    for rnd in (1, 2):
        with led.charge("ds", CoveredEvent(GaussianEvent(1.2, 0.1, 1), "training/aaaa"), job="jobA", round=rnd,
                        protocol="p", mechanism={"name": "x"}, recipient="agg", relation=ADD_REMOVE_RECORD):
            pass
    with pytest.raises(PrivacyError, match=r"silo 's1', dataset 'ds': job 'jobA' \(p\): cover 'training/aaaa' pays for "
                                           r"2 release\(s\), and the composition holds more.*; nothing was written"):
        with led.charge("ds", CoveredEvent(GaussianEvent(1.2, 0.1, 1), "training/aaaa"), job="jobA", round=3,
                        protocol="p", mechanism={"name": "x"}, recipient="agg", relation=ADD_REMOVE_RECORD):
            pass
    assert len(led.entries("ds")) == 3 and led.spent("ds") == pytest.approx(spent)
    led.verify()


def test_a_cover_pays_only_for_the_releases_its_calibration_planned(tmp_path: Path) -> None:
    """Found by the privacy review: the count cap alone let releases of another kind ride on a
    cover (e.g. 99 steps and two metrics releases where the calibration planned 100 and one).
    The ledger composes the covered releases' own mechanisms and refuses the one that takes them
    past the cover's (epsilon, delta), nothing written; a second copy of a planned release too."""
    from fedsilo.privacy.accounting import epsilon as eps_of

    step = GaussianEvent(1.0, 0.1, 1)
    metrics = GaussianEvent(2.0, 1.0, 1)
    planned = eps_of(ComposedEvent((*[step] * 3, metrics)), delta=9.8e-6, accountant="rdp")
    led = PrivacyLedger(tmp_path / "l.db", silo="s1")
    led.register_dataset("ds", epsilon=50.0, delta=1e-5)
    cover = ApproxDpEvent(planned, 9.8e-6, 1, "training/bbbb", covers=4)  # exactly what the calibration met

    def charge(ev, rnd):  # type: ignore[no-untyped-def]
        with led.charge("ds", ev, job="jobA", round=rnd, protocol="p", mechanism={"name": "x"}, recipient="agg",
                        relation=ADD_REMOVE_RECORD):
            pass

    charge(ComposedEvent((GaussianEvent(40.0), cover)), 0)
    for rnd in (1, 2):
        charge(CoveredEvent(step, "training/bbbb"), rnd)
    charge(CoveredEvent(metrics, "training/bbbb"), 3)  # within the count (4) and the cover's epsilon
    spent = led.spent("ds")
    # a costlier release in the last planned slot: refused although the count would allow it
    with pytest.raises(PrivacyError, match=r"cover 'training/bbbb' pays for epsilon=.* and the releases it covers "
                                           r"compose to epsilon=.*its calibration did not plan them; nothing was written"):
        charge(CoveredEvent(GaussianEvent(0.3, 1.0, 1), "training/bbbb"), 4)
    assert len(led.entries("ds")) == 4 and led.spent("ds") == spent
    charge(CoveredEvent(step, "training/bbbb"), 4)  # the planned one still fits exactly
    led.verify()


def test_a_release_defining_one_cover_label_twice_is_refused(tmp_path: Path) -> None:
    led = PrivacyLedger(tmp_path / "l.db", silo="s1")
    led.register_dataset("ds", epsilon=50.0, delta=1e-5)
    twice = ComposedEvent((ApproxDpEvent(1.0, 1e-7, 1, "c", covers=1), ApproxDpEvent(2.0, 1e-7, 1, "c", covers=50)))
    with pytest.raises(PrivacyError, match="defines a cover label twice; nothing was written"):
        with led.charge("ds", twice, job="j", round=0, protocol="p", mechanism={"name": "x"}, recipient="agg",
                        relation=ADD_REMOVE_RECORD):
            pass
    assert led.entries("ds") == []


def test_a_pld_cover_check_builds_the_pld_only_when_rdp_cannot_show_the_cover_pays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-round cost of a distributed job under PLD: a cover that RDP alone shows paid for is
    accepted without building a PLD; between the PLD's and RDP's epsilon the PLD decides (and
    accepts); below the PLD's epsilon it refuses, naming the PLD's figure."""
    from fedsilo.privacy import accounting as acc_mod

    built: list[object] = []
    real = acc_mod._epsilon_pld
    monkeypatch.setattr(acc_mod, "_epsilon_pld", lambda *a: built.append(a) or real(*a))
    acc_mod._epsilon_groups.cache_clear()
    steps = [GaussianEvent(1.15, 0.0703, 1)] * 37  # parameters no other test caches
    both = ComposedEvent(tuple(steps))
    rdp_eps = epsilon(both, delta=DELTA, accountant="rdp")
    built.clear()
    pld_eps = epsilon(both, delta=DELTA, accountant="pld")
    assert built and pld_eps < rdp_eps
    acc_mod._epsilon_groups.cache_clear()
    built.clear()

    acc_mod.check_cover_pays(ApproxDpEvent(rdp_eps, DELTA, 1, "c", covers=40), steps, accountant="pld")
    assert built == []  # RDP showed it
    acc_mod.check_cover_pays(ApproxDpEvent((rdp_eps + pld_eps) / 2, DELTA, 1, "c", covers=40), steps,
                             accountant="pld")
    assert len(built) == 1  # the PLD decided, and it fits
    with pytest.raises(PrivacyError, match=rf"releases it covers compose to epsilon={pld_eps:.6g} \(pld\)"):
        acc_mod.check_cover_pays(ApproxDpEvent(pld_eps * 0.99, DELTA, 1, "c", covers=40), steps, accountant="pld")


@settings(max_examples=25, deadline=None)
@given(z=st.floats(0.6, 4.0), q=st.floats(0.01, 1.0), t=st.integers(1, 30), where=st.floats(0.5, 1.5))
def test_a_pld_cover_check_accepts_exactly_what_one_valid_bound_fits(z: float, q: float, t: int, where: float) -> None:
    """The RDP shortcut never accepts releases that no accountant shows to fit the cover, and it
    never refuses what the PLD alone accepts: accepted iff RDP's epsilon fits or the PLD's does
    (each an upper bound of the releases' true epsilon)."""
    from fedsilo.privacy.accounting import COVER_RTOL, check_cover_pays

    steps = [GaussianEvent(z, q, 1)] * t + [GaussianEvent(2.0 * z, 1.0, 1)]
    both = ComposedEvent(tuple(steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an RDP optimum at the grid's edge: looser, still valid
        rdp_eps = epsilon(both, delta=DELTA, accountant="rdp")
    pld_eps = epsilon(both, delta=DELTA, accountant="pld")
    cover = ApproxDpEvent(pld_eps * where, DELTA, 1, "c", covers=t + 1)
    fits = rdp_eps <= cover.epsilon or pld_eps <= cover.epsilon * (1.0 + COVER_RTOL)
    try:
        check_cover_pays(cover, steps, accountant="pld")
        accepted = True
    except PrivacyError:
        accepted = False
    assert accepted == fits



def test_a_covered_event_cannot_hide_a_cover_inside_a_composition() -> None:
    """Found by a privacy review: the composition never looks inside a CoveredEvent's own event,
    so a cover nested there paid for its covered parts unchecked (a Gaussian of epsilon ~ 95
    rode on a cover of epsilon 1). Refused when built, from code and from JSON."""
    inner = ComposedEvent((ApproxDpEvent(0.5, 1e-6, 1, "inner", covers=1),
                           CoveredEvent(GaussianEvent(0.1, 1.0, 1), "inner")))
    with pytest.raises(PrivacyError, match="not a composition holding a 'approx_dp' event"):
        CoveredEvent(inner, "c")
    with pytest.raises(PrivacyError, match="not a composition holding a 'covered' event"):
        CoveredEvent(ComposedEvent((GaussianEvent(2.0), ComposedEvent((CoveredEvent(GaussianEvent(2.0), "x"),)))), "c")
    forged = {"kind": "covered", "cover": "c", "event": inner.to_json()}
    with pytest.raises(PrivacyError, match="not a composition holding"):
        event_from_json(forged)
    assert CoveredEvent(ComposedEvent((GaussianEvent(1.0, 0.1, 1), LaplaceEvent(1.0))), "c").cover == "c"


def test_the_cover_check_refuses_an_unknown_accountant_and_leaves_warning_filters_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: the RDP shortcut accepted before the accountant was checked; and a
    ``catch_warnings`` per charge would swap the process's warning filters under other silo
    threads (the threads engine), so the check must not use one."""
    from fedsilo.privacy.accounting import check_cover_pays

    cover = ApproxDpEvent(50.0, DELTA, 1, "c", covers=2)
    for bad in ("bogus", "PLD"):
        with pytest.raises(PrivacyParameterError, match="unknown accountant"):
            check_cover_pays(cover, [GaussianEvent(1.0, 0.1, 1)], accountant=bad)

    def no_catch(*a: object, **k: object) -> None:
        raise AssertionError("catch_warnings swaps the process-wide filters")

    monkeypatch.setattr(warnings, "catch_warnings", no_catch)
    check_cover_pays(cover, [GaussianEvent(0.6, 0.9, 1)] * 2, accountant="pld")  # RDP's optimum may sit at the grid's edge


def test_a_covered_release_is_stated_under_its_covers_relation(tmp_path: Path) -> None:
    """Found by a review: the cover check compared a release's own mechanism with the cover's
    epsilon as each was stated, so a covered release stated under zero-out-silo beside a
    record-level cover was under-counted twofold. Refused, nothing written; the same relation
    is accepted."""
    led = PrivacyLedger(tmp_path / "l.db", silo="s1")
    led.register_dataset("ds", epsilon=50.0, delta=1e-5)

    def charge(ev, rnd, relation):  # type: ignore[no-untyped-def]
        with led.charge("ds", ev, job="jobA", round=rnd, protocol="p", mechanism={"name": "x"}, recipient="agg",
                        relation=relation):
            pass

    charge(ComposedEvent((GaussianEvent(40.0), ApproxDpEvent(1.0, 1e-6, 1, "c", covers=3))), 0, ADD_REMOVE_RECORD)
    spent = led.spent("ds")
    with pytest.raises(PrivacyError, match=r"a release under relation 'zero-out-silo' names cover 'c', charged under "
                                           r"'add-remove-record'.*; nothing was written"):
        charge(CoveredEvent(GaussianEvent(4.6), "c"), 1, ZERO_OUT_SILO)
    assert len(led.entries("ds")) == 1 and led.spent("ds") == spent
    charge(CoveredEvent(GaussianEvent(4.6), "c"), 1, ADD_REMOVE_RECORD)
    led.verify()


def test_an_event_the_ledger_could_not_read_back_is_refused_and_nothing_breaks(tmp_path: Path) -> None:
    """Found by a review: the composition accepted deeper nesting than the ledger's reader, so
    one charge made every later read fail for good. Refused before writing; the ledger stays
    readable and chargeable."""
    led = PrivacyLedger(tmp_path / "l.db", silo="s1")
    led.register_dataset("ds", epsilon=50.0, delta=1e-5)
    deep: object = GaussianEvent(30.0)
    for _ in range(40):
        deep = ComposedEvent((deep,))
    with pytest.raises(PrivacyError, match=r"the release's event cannot be stored \(DP event nested deeper than "
                                           r"\d+ levels\); nothing was written"):
        with led.charge("ds", deep, job="j", round=1, protocol="p", mechanism={"name": "x"}, recipient="agg",
                        relation=ADD_REMOVE_RECORD):
            pass
    with led.charge("ds", GaussianEvent(30.0), job="j", round=1, protocol="p", mechanism={"name": "x"},
                    recipient="agg", relation=ADD_REMOVE_RECORD):
        pass
    assert len(led.entries("ds")) == 1
    led.verify()


@pytest.mark.parametrize(("event", "accountant"), [
    (GaussianEvent(1e200), "rdp"), (GaussianEvent(1e200), "pld"), (GaussianEvent(1e-6, 0.01), "pld"),  # 35 PiB
    (ApproxDpEvent(800.0, 1e-6, 1), "pld"),
])
def test_parameters_the_accountant_cannot_represent_are_a_privacy_error(event: object, accountant: str) -> None:
    """Found by a review: dp-accounting's OverflowError / MemoryError reached the caller."""
    with pytest.raises(PrivacyError, match=f"the '{accountant}' accountant cannot compose these releases"):
        epsilon(event, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    with pytest.raises(PrivacyParameterError, match=r"must be a finite number > 0, got 1000.*\.\.\.$"):
        event_from_json({"kind": "gaussian", "noise_multiplier": 10**400, "sample_rate": 1.0, "steps": 1})
