"""``stop: auto`` and ``strength: relative`` end to end through train_from_yaml (and ``composer -n 2``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from composer_let import LET

from conftest import in_memory, let_of

# 24 batches; auto stop may run until batch 20. Its warm-up is 10 batches, its ramp 10% of the batches done.
AUTO = ('max_duration=24ba', 'algorithms.let.stop=auto', 'algorithms.let.stop_max=20ba', 'eval_interval=24ba')


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


@pytest.fixture(scope='module')
def bad_teacher(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher with its final norm scaled by 100: its logits are wild, so its CE is far above the student's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp('bad') / 'teacher'
    model = AutoModelForCausalLM.from_pretrained(assets['teacher'])
    with torch.no_grad():
        model.model.norm.weight.mul_(100.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets['teacher']).save_pretrained(folder)
    return folder


def test_auto_stop_fires_on_a_teacher_worse_than_the_student_and_frees_it(train, bad_teacher) -> None:
    trainer = train('mpt-let', *AUTO, f'algorithms.let.teacher={bad_teacher}')
    teacher_ce, student_ce = values(trainer, 'let/teacher_ce'), values(trainer, 'let/student_ce')
    assert all(t > s + 10 for t, s in zip(teacher_ce, student_ce, strict=True))  # the constructed case holds
    assert values(trainer, 'let/stop_fired_at') == [10.0]  # at the end of the 10-batch warm-up
    lambdas = values(trainer, 'let/lambda')
    # λ0 · (1 − s/20) until batch 10, then the ramp (1 batch = 10% of 10), then 0 to the end.
    assert lambdas[:11] == pytest.approx([0.1 * (1 - s / 20) for s in range(11)])
    assert lambdas[11:] == [0.0] * 13
    let = let_of(trainer)
    assert not let.active and let.guidance is None and let.autostop.fired_by == 'ce'
    assert len(values(trainer, 'loss/train/let_align')) == 11  # no alignment term once released
    assert len(values(trainer, 'let/stop_signal')) == 10  # logged until the decision


def test_auto_stop_waits_for_a_good_teacher_until_stop_max(train) -> None:
    """The random-init teacher (CE ln 512) is better than the fresh MPT student (CE ~7.6) for a while."""
    trainer = train('mpt-let', 'max_duration=6ba', 'algorithms.let.stop=auto', 'eval_interval=6ba')
    assert values(trainer, 'let/stop_fired_at') == []
    assert values(trainer, 'let/lambda') == pytest.approx([0.1, 0.1 * 2 / 3, 0.1 / 3, 0.0, 0.0, 0.0])  # stop_max 0.5


def test_resume_across_the_auto_stop_decision_is_exact(train, bad_teacher, tmp_path: Path) -> None:
    job = (*AUTO, f'algorithms.let.teacher={bad_teacher}', 'save_interval=6ba')
    full = train('mpt-let', *job, f'save_folder={tmp_path}/full')
    keys = ('loss/train/total', 'let/lambda', 'let/cosine', 'let/grad_ratio')
    reference = {k: values(full, k) for k in keys}
    before = train('mpt-let', *job, f'save_folder={tmp_path}/a', f'load_path={tmp_path}/full/ep0-ba6-rank0.pt')
    assert values(before, 'let/stop_fired_at') == [10.0]  # the EMAs came back with the checkpoint
    for key in keys:
        assert values(before, key) == reference[key][6:], key  # exact
    after = train('mpt-let', *job, f'save_folder={tmp_path}/b', f'load_path={tmp_path}/full/ep0-ba12-rank0.pt')
    assert let_of(after).guidance is None and values(after, 'let/lambda') == [0.0] * 12
    assert values(after, 'loss/train/total') == reference['loss/train/total'][12:]


def test_resume_of_relative_strength_is_exact(train, tmp_path: Path) -> None:
    """strength: relative's running state (the norms' EMAs and the log-bias feedback) comes back with the
    checkpoint: a run resumed at batch 6 logs the uninterrupted run's λ, grad_ratio and losses exactly."""
    relative = ('algorithms.let.strength=relative', 'algorithms.let.grad_ratio=0.1', 'algorithms.let.lambda0=null')
    job = ('max_duration=12ba', 'eval_interval=12ba', 'algorithms.let.stop=12ba', *relative, 'save_interval=6ba')
    full = train('mpt-let', *job, f'save_folder={tmp_path}/full')
    keys = ('loss/train/total', 'let/lambda', 'let/cosine', 'let/grad_ratio')
    reference = {k: values(full, k) for k in keys}
    saved = torch.load(tmp_path / 'full' / 'ep0-ba6-rank0.pt', weights_only=False)['state']['algorithms']
    [(_, state)] = [entry for entry in saved if entry[0] == 'LET']
    assert state['relative_strength']['log_bias']['weight'] > 0  # the feedback has state to restore
    resumed = train('mpt-let', *job, f'save_folder={tmp_path}/resumed', f'load_path={tmp_path}/full/ep0-ba6-rank0.pt')
    for key in keys:
        assert values(resumed, key) == reference[key][6:], key  # exact


def test_relative_strength_holds_the_gradient_ratio(train) -> None:
    target = 0.1
    trainer = train(
        'mpt-let',
        'max_duration=16ba',
        'eval_interval=16ba',
        'algorithms.let.stop=16ba',
        'algorithms.let.schedule=constant',
        'algorithms.let.strength=relative',
        f'algorithms.let.grad_ratio={target}',
        'algorithms.let.lambda0=null',
    )
    ratios = values(trainer, 'let/grad_ratio')
    lambdas = values(trainer, 'let/lambda')
    assert lambdas[0] == pytest.approx(1e-3)  # the first batch measures
    assert lambdas[1] != lambdas[2]  # then λ follows the measured norms
    # λ comes from the previous batches' norms, which fall by ~6x over the first 10 batches of a fresh
    # student; once that settles the ratio tracks its target.
    after_warmup = ratios[8:]
    assert len(after_warmup) == 8
    assert all(abs(r / target - 1) < RELATIVE_TOLERANCE for r in after_warmup), after_warmup


RELATIVE_TOLERANCE = 0.25  # measured: within 12% from batch 9 on


@pytest.mark.parametrize('target', [0.05, 0.5])
def test_relative_strength_tracks_its_target_on_average_at_batch_4(train, target: float) -> None:
    """A new user's run (tiny Llama, global batch 4, constant schedule): single batches scatter, but the
    geometric mean of the achieved ratio over batches 8-23 is within 25% of the target, for two targets
    a decade apart (the feed-forward alone overshot by 1.26x and 1.40x here, 2026-12-03)."""
    trainer = train(
        'llama-let',
        'max_duration=24ba',
        'eval_interval=24ba',
        'algorithms.let.stop=24ba',
        'algorithms.let.schedule=constant',
        'algorithms.let.strength=relative',
        f'algorithms.let.grad_ratio={target}',
        'algorithms.let.lambda0=null',
    )
    ratios = values(trainer, 'let/grad_ratio')[8:24]
    assert len(ratios) == 16
    geometric = math.exp(sum(math.log(r / target) for r in ratios) / len(ratios))
    assert abs(geometric - 1) < RELATIVE_TOLERANCE, (geometric, ratios)


@pytest.mark.slow
def test_ddp_ranks_stop_on_the_same_batch(assets, bad_teacher, tmp_path: Path) -> None:
    """``composer -n 2``: one decision (rank 0's, broadcast), the same λ on both ranks, as in one process.

    Rank 1's rule is set never to fire (a warm-up beyond the run), so the ranks agree only through the
    broadcast (fed the same all-reduced numbers, equal rules would agree anyway). The run ends with the
    decision's batch and the ramp's: ranks that disagreed would release the teacher on different batches,
    after which their collectives no longer pair up (a hang, where this fails on the assertion)."""
    from test_distributed import base_overrides, launch

    auto = ('max_duration=11ba', 'algorithms.let.stop=auto', 'algorithms.let.stop_max=11ba', 'eval_interval=11ba')
    ranks = launch(
        tmp_path,
        'mpt-let',
        *base_overrides(assets),
        *auto,
        f'algorithms.let.teacher={bad_teacher}',
        env={'LET_TEST_RANK1_AUTO_STOP': '{"warmup": 1000}'},
    )
    metrics = [r['metrics'] for r in ranks]
    assert metrics[0]['let/stop_fired_at'] == metrics[1]['let/stop_fired_at'] == [10.0]
    assert metrics[0]['let/lambda'] == metrics[1]['let/lambda']
    assert metrics[0]['let/lambda'] == pytest.approx([0.1 * (1 - s / 11) for s in range(11)])  # batch 10: the ramp
    assert metrics[0]['let/grad_ratio'] == metrics[1]['let/grad_ratio']  # whole-batch norms, reduced across ranks


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'stop': 'autox'}, r"algorithms\.let\.stop='autox' cannot be parsed.*or auto"),
        ({'stop': '0.3dur', 'stop_max': '0.5dur'}, r'stop_max applies only with stop: auto'),
        ({'stop': 'auto', 'stop_max': 'later'}, r"algorithms\.let\.stop_max='later' cannot be parsed"),
        ({'stop': '0.3dur', 'stop_horizon': 0}, r'stop_horizon applies only with stop: auto'),
        ({'stop': 'auto', 'stop_horizon': -1}, r'algorithms\.let\.stop_horizon=-1 must be a number in \[0'),
        ({'strength': 'relative', 'grad_ratio': -0.1}, r'algorithms\.let\.grad_ratio=-0\.1 must be a number in \(0'),
        ({'strength': 'relative'}, r'strength=relative needs algorithms\.let\.grad_ratio'),
        ({'strength': 'relative', 'grad_ratio': 0.1, 'lambda0': 0.1}, r'lambda0 is the weight of strength: absolute'),
        ({'grad_ratio': 0.1}, r'grad_ratio is the target of strength: relative'),
        ({'strength': 'strong'}, r"algorithms\.let\.strength='strong' is not one of absolute, relative"),
        ({'stop': 'auto', 'ce_tokens': 0}, r'algorithms\.let\.stop: auto decides from .*ce_tokens: 0 turns off'),
        ({'stop': 'auto', 'cross_tokenizer': True}, r'algorithms\.let\.stop: auto .* cross_tokenizer: true cannot'),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LET(teacher='t', **kwargs)


def test_stop_horizon_reaches_the_rule() -> None:
    assert LET(teacher='t', stop='auto').autostop.horizon == 0.0
    assert LET(teacher='t', stop='auto', stop_horizon=1).autostop.horizon == 1.0


def test_stop_max_beyond_max_duration_fails_before_step_one(train) -> None:
    with pytest.raises(ValueError, match=r'algorithms\.let\.stop_max=30ba is beyond max_duration=6ba'):
        train('mpt-let', 'max_duration=6ba', 'algorithms.let.stop=auto', 'algorithms.let.stop_max=30ba')
