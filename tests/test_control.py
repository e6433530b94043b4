"""The pure controllers behind ``strength: relative`` and ``stop: auto``."""

from __future__ import annotations

import math

import pytest

from composer_let.control import AutoStop, Ema, RelativeStrength


def test_ema_is_bias_corrected() -> None:
    ema = Ema(beta=0.9)
    assert ema.mean is None
    ema.update(2.0)
    assert ema.mean == pytest.approx(2.0)  # not 0.2: the first value is the mean
    ema.update(4.0)
    assert ema.mean == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81))


def test_relative_strength_gives_the_weight_that_hits_the_target() -> None:
    strength = RelativeStrength()
    assert strength.weight(0.1) is None  # nothing measured yet
    # The alignment sends 3.0 per unit of λ; the rest of the loss 2.0: λ = 0.1 * 2 / 3 gives the ratio 0.1.
    strength.observe(rest_norm=2.0, align_norm=0.003, weight_used=0.001)
    assert strength.weight(0.1) == pytest.approx(0.1 * 2.0 / 3.0)
    lam = strength.weight(0.1)
    strength.observe(rest_norm=2.0, align_norm=3.0 * lam, weight_used=lam)
    assert strength.weight(0.1) == pytest.approx(lam)  # a fixed point
    strength.observe(rest_norm=5.0, align_norm=0.0, weight_used=0.0)  # λ = 0 measures nothing
    assert strength.weight(0.1) == pytest.approx(lam)


def test_relative_strength_round_trips_its_state() -> None:
    strength = RelativeStrength(beta=0.8)
    for rest, align in ((1.0, 0.5), (2.0, 0.4), (1.5, 0.7)):
        strength.observe(rest, align, 0.1)
    again = RelativeStrength(beta=0.8)
    assert again.load_state_dict(strength.state_dict()) == []
    assert again == strength and again.weight(0.2) == strength.weight(0.2)


def test_relative_strength_resumes_with_its_own_settings_not_the_checkpoints() -> None:
    saved = RelativeStrength(beta=0.8)
    saved.observe(1.0, 0.5, 0.1)
    resumed = RelativeStrength(beta=0.5)  # what the resumed run's code/YAML says
    assert resumed.load_state_dict(saved.state_dict()) == ['beta: 0.8 -> 0.5']
    assert resumed.beta == resumed.rest.beta == 0.5  # the averages came back, their memory did not
    assert resumed.rest.mean == pytest.approx(1.0) and resumed.unit_align.mean == pytest.approx(5.0)


@pytest.mark.parametrize('target', [0.05, 0.5])
@pytest.mark.parametrize('feedback', [True, False])
def test_relative_strength_feedback_removes_the_feed_forwards_bias(target: float, feedback: bool) -> None:
    """The pull per unit λ falls 8% a batch, the rest 3%, with log-normal batch noise: the feed-forward
    (a ratio of lagging averages) misses, here by ~18% low; with the log-residual feedback the achieved
    ratio's geometric mean over batches 8-199 is the target."""
    import random

    rng = random.Random(0)
    strength, lam, errors = RelativeStrength(), 1e-3, []
    for batch in range(200):
        rest = 2.0 * 0.97**batch * math.exp(rng.gauss(0, 0.3))
        align_per_unit = 3.0 * 0.92**batch * math.exp(rng.gauss(0, 0.5))
        strength.observe(rest, lam * align_per_unit, lam)
        errors.append(math.log(lam * align_per_unit / rest / target))
        if not feedback:
            strength.log_bias = type(strength.log_bias)(strength.bias_beta)  # forget it: feed-forward alone
        lam = strength.weight(target)
    geometric_error = math.exp(sum(errors[8:]) / len(errors[8:]))
    if feedback:
        assert abs(geometric_error - 1) < 0.1, geometric_error
    else:
        assert abs(geometric_error - 1) > 0.15, geometric_error  # the bias the feedback is there for


def test_auto_stop_fires_on_the_ce_crossing_after_warmup_and_ramps() -> None:
    stop = AutoStop(signals=('ce',), warmup=3, beta=0.5)
    stop.observe(1, teacher_ce=3.0, student_ce=2.0, grad_cos=0.5)  # already below, but within warm-up
    stop.observe(2, teacher_ce=3.0, student_ce=2.0, grad_cos=0.5)
    assert stop.fired_at is None and stop.factor(2) == 1.0
    stop.observe(3, teacher_ce=3.0, student_ce=2.0, grad_cos=0.5)
    assert stop.fired_at == 3 and stop.fired_by == 'ce'
    assert stop.ramp_batches == 1  # 10% of 3 batches, at least 1
    assert stop.factor(3) == 1.0 and stop.factor(4) == 0.0
    stop.observe(4, teacher_ce=1.0, student_ce=9.0, grad_cos=0.5)  # decided once: later values change nothing
    assert stop.fired_at == 3


def test_auto_stop_waits_while_the_student_levels_off_behind() -> None:
    stop = AutoStop(signals=('ce',), warmup=2)
    for batch in range(1, 200):  # the gap closes ever more slowly towards 1 nat: never on course to cross
        stop.observe(batch, teacher_ce=3.0, student_ce=4.0 + 1.0 / batch, grad_cos=-1.0)
    assert stop.fired_at is None  # the conflict signal is not enabled
    assert stop.signal() > 1.0


def test_auto_stop_fires_when_the_student_is_on_course_to_pass_within_the_horizon() -> None:
    # gap(b) = 2 - 0.05 b: at batch b the student would pass in 40 - b batches; horizon 1 fires once 40 - b < b.
    stop = AutoStop(signals=('ce',), warmup=2, beta=0.0, horizon=1.0)
    for batch in range(1, 40):
        stop.observe(batch, teacher_ce=3.0, student_ce=5.0 - 0.05 * batch, grad_cos=0.5)
    assert stop.fired_at == 21 and stop.fired_by == 'ce-trend'
    later = AutoStop(signals=('ce',), warmup=2, beta=0.0, horizon=0.5)  # 40 - b < b / 2: b > 26.7
    for batch in range(1, 40):
        later.observe(batch, teacher_ce=3.0, student_ce=5.0 - 0.05 * batch, grad_cos=0.5)
    assert later.fired_at == 27
    waits = AutoStop(signals=('ce',), warmup=2, beta=0.0)  # the default, horizon 0: only once passed
    for batch in range(1, 45):
        waits.observe(batch, teacher_ce=3.0, student_ce=5.0 - 0.05 * batch, grad_cos=0.5)
    assert waits.fired_at == 41 and waits.fired_by == 'ce'


def test_auto_stop_conflict_signal_and_long_ramp() -> None:
    stop = AutoStop(signals=('conflict',), warmup=1, beta=0.0)
    for batch in range(1, 100):
        stop.observe(batch, teacher_ce=None, student_ce=None, grad_cos=0.3)
    assert stop.fired_at is None
    stop.observe(100, teacher_ce=None, student_ce=None, grad_cos=-0.2)
    assert stop.fired_at == 100 and stop.fired_by == 'conflict' and stop.ramp_batches == 10
    assert [stop.factor(b) for b in (100, 105, 110, 200)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_auto_stop_ignores_missing_values_and_round_trips() -> None:
    stop = AutoStop(warmup=1)
    stop.observe(1, teacher_ce=None, student_ce=2.0, grad_cos=math.nan)
    assert stop.fired_at is None and math.isnan(stop.signal())
    stop.observe(2, teacher_ce=3.0, student_ce=3.5, grad_cos=0.1)
    again = AutoStop(warmup=1)
    assert again.load_state_dict(stop.state_dict()) == []
    assert again == stop


def test_auto_stop_resumes_with_its_own_settings_not_the_checkpoints() -> None:
    """A run resumed with another ``stop_horizon`` uses it: only the averages and the decision come back."""
    saved = AutoStop(warmup=1, horizon=1.0)
    for batch in range(1, 4):
        saved.observe(batch, teacher_ce=3.0, student_ce=5.0 - 0.1 * batch, grad_cos=0.1)
    resumed = AutoStop(warmup=1, horizon=0.0)
    assert resumed.load_state_dict(saved.state_dict()) == ['horizon: 1.0 -> 0.0']
    assert resumed.horizon == 0.0 and resumed.seen == 3 and resumed.gap_ema == saved.gap_ema
