"""λ(s) schedules and `stop` as Composer Time: pure functions, plus progress on a real Composer State."""

from __future__ import annotations

import math

import pytest
import torch
from composer.core import State, Time, Timestamp, TimeUnit
from composer.devices import DeviceCPU

from composer_let.schedule import SCHEDULES, schedule_weight
from composer_let.timing import check_stop_within, parse_stop, progress_towards


@pytest.mark.parametrize(
    ('progress', 'expected'),
    [(0.0, 0.1), (0.5, 0.05), (1.0, 0.0), (1.7, 0.0), (0.25, 0.075)],
)
def test_linear_is_the_paper_formula(progress: float, expected: float) -> None:
    # λ(s) = λ0 · max(0, (S_stop − s) / S_stop)
    assert schedule_weight('linear', 0.1, progress) == pytest.approx(expected)


def test_other_schedules_start_at_lambda0_and_end_at_zero() -> None:
    for kind in SCHEDULES:
        assert schedule_weight(kind, 0.3, 0.0) == pytest.approx(0.3)
        assert schedule_weight(kind, 0.3, 1.0) == 0.0
        assert schedule_weight(kind, 0.3, 5.0) == 0.0
    assert schedule_weight('constant', 0.3, 0.999) == pytest.approx(0.3)
    assert schedule_weight('cosine', 0.3, 0.5) == pytest.approx(0.15)
    assert schedule_weight('cosine', 0.3, 0.25) == pytest.approx(0.3 * (1 + math.cos(math.pi / 4)) / 2)
    assert [schedule_weight('step', 1.0, p) for p in (0.1, 0.3, 0.6, 0.9)] == [1.0, 0.75, 0.5, 0.25]


def test_schedule_rejects_unknown_kind_and_negative_progress() -> None:
    with pytest.raises(ValueError, match='exponential'):
        schedule_weight('exponential', 0.1, 0.0)
    with pytest.raises(ValueError, match='progress'):
        schedule_weight('linear', 0.1, -0.1)


@pytest.mark.parametrize(
    ('text', 'value', 'unit'),
    [
        ('2000ba', 2000, TimeUnit.BATCH),
        ('5e8tok', 500_000_000, TimeUnit.TOKEN),
        ('1ep', 1, TimeUnit.EPOCH),
        ('0.25dur', 0.25, TimeUnit.DURATION),
        ('64sp', 64, TimeUnit.SAMPLE),
        (30, 30, TimeUnit.BATCH),
    ],
)
def test_parse_stop_units(text: str | int, value: float, unit: TimeUnit) -> None:
    parsed = parse_stop(text)
    assert parsed.unit == unit
    assert parsed.value == pytest.approx(value)


@pytest.mark.parametrize('bad', ['soon', '0ba', '-3ba', '1.5dur', '10sec', '', True, 2.5])
def test_parse_stop_rejects_with_the_key_named(bad: object) -> None:
    with pytest.raises(ValueError, match=r'algorithms\.let\.stop'):
        parse_stop(bad, key='algorithms.let.stop')  # type: ignore[arg-type]


def test_stop_beyond_max_duration() -> None:
    check_stop_within(Time(10, TimeUnit.BATCH), Time(10, TimeUnit.BATCH))
    check_stop_within(Time(0.5, TimeUnit.DURATION), Time(3, TimeUnit.BATCH))
    check_stop_within(Time(10**9, TimeUnit.TOKEN), Time(3, TimeUnit.BATCH))  # not comparable: left to the run
    with pytest.raises(ValueError, match=r'stop=20ba is beyond max_duration=10ba'):
        check_stop_within(Time(20, TimeUnit.BATCH), Time(10, TimeUnit.BATCH))


def _state(max_duration: str, batches: int, samples_per_batch: int = 4, tokens_per_batch: int = 256) -> State:
    state = State(
        model=torch.nn.Linear(2, 2),
        rank_zero_seed=0,
        run_name='t',
        device=DeviceCPU(),
        max_duration=max_duration,
    )
    state.timestamp = Timestamp(
        batch=batches,
        batch_in_epoch=batches % 10,
        epoch=batches // 10,
        sample=batches * samples_per_batch,
        token=batches * tokens_per_batch,
    )
    state.set_dataloader([0] * 10, 'train')  # dataloader_len = 10 batches
    return state


def test_progress_in_every_unit() -> None:
    state = _state('40ba', batches=10)
    assert progress_towards(Time(20, TimeUnit.BATCH), state) == pytest.approx(0.5)
    assert progress_towards(Time(80, TimeUnit.SAMPLE), state) == pytest.approx(0.5)
    assert progress_towards(Time(5120, TimeUnit.TOKEN), state) == pytest.approx(0.5)
    assert progress_towards(Time(0.5, TimeUnit.DURATION), state) == pytest.approx(0.5)  # 10/40 of the run
    assert progress_towards(Time(2, TimeUnit.EPOCH), state) == pytest.approx(0.5)
    mid_epoch = _state('40ba', batches=15)  # epoch 1, batch 5 of 10
    assert progress_towards(Time(2, TimeUnit.EPOCH), mid_epoch) == pytest.approx(0.75)
