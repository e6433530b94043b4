"""Checkpoint and resume with LET through llm-foundry's ``save_folder``/``autoresume``/``load_path``.

Resume semantics proved here (single process, CPU, deterministic data order):

* A run preempted mid-schedule and restarted with ``autoresume: true`` continues bit for bit:
  the same λ and the same per-step losses as the uninterrupted run, the learned
  ``let_projection`` (and its optimizer state) restored from the checkpoint.
* Resumed at or after ``stop`` the teacher's weights are never loaded.
* Checkpoints cross between runs with and without LET (see ``test_checkpoints_cross_*``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry import registry

import composer_let.guidance

from conftest import in_memory, let_of

KEYS = ('loss/train/total', 'loss/train/let_align', 'let/lambda', 'let/cosine')


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


class Preempted(RuntimeError):
    pass


class Preempt(Callback):
    """Kills the run at the start of batch ``at_batch + 1``, after the checkpoint of batch ``at_batch``."""

    def __init__(self, at_batch: int):
        self.at_batch = at_batch

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) == self.at_batch:
            raise Preempted(f'simulated preemption after batch {self.at_batch}')


registry.callbacks.register('let_test_preempt', func=Preempt)

# 6 batches, λ from 0.1 to 0 at batch 4, a learned projection (so optimizer state matters too).
RUN = ('algorithms.let.projection=linear', 'algorithms.let.stop=4ba', 'eval_interval=6ba', 'save_interval=1ba')


def test_preempted_run_resumes_exactly_and_after_stop_never_loads_the_teacher(
    train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = train('mpt-let', *RUN, f'save_folder={tmp_path}/full')
    reference = {k: values(full, k) for k in KEYS}
    assert reference['let/lambda'] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.0])
    assert len(reference['loss/train/let_align']) == 4

    # Preempted after batch 3 (λ = 0.05 -> 0.025 next), then the same command with autoresume.
    job = (*RUN, f'save_folder={tmp_path}/job', 'autoresume=true')
    with pytest.raises(Preempted):
        train('mpt-let', *job, 'callbacks={let_test_preempt: {at_batch: 3}}')
    resumed = train('mpt-let', *job)
    assert int(resumed.state.timestamp.batch) == 6
    for key in KEYS:
        assert values(resumed, key) == reference[key][3:], key  # exact, not approximate
    assert torch.equal(let_of(resumed).projection_module.weight, let_of(full).projection_module.weight)

    # Resumed after stop (batch 5 of 6): nothing may load the teacher.
    def refuse(*args, **kwargs):
        raise AssertionError('the teacher was loaded although the run resumed after stop')

    monkeypatch.setattr(composer_let.guidance, 'start_teacher', refuse)
    late = train('mpt-let', *RUN, f'load_path={tmp_path}/full/ep0-ba5-rank0.pt')
    let = let_of(late)
    assert let.guidance is None and not let.active
    assert values(late, 'let/lambda') == [0.0]
    assert values(late, 'loss/train/total') == reference['loss/train/total'][5:]


def test_checkpoints_cross_between_runs_with_and_without_let(train, tmp_path: Path) -> None:
    """What happens when a checkpoint moves between a LET run and a plain run (both directions).

    * LET -> plain (any projection): loads and resumes; ``let_projection`` and its optimizer
      state are ignored, the student and its optimizer state are restored.
    * plain -> LET with ``projection: interpolate`` (the default): loads and resumes; Composer
      warns ``LET is not in the state_dict``; λ follows the resumed timestamp.
    * plain -> LET with ``projection: linear``: Composer cannot restore the optimizer (it has no
      state for ``let_projection.weight``: ``KeyError``). Start from the weights instead with
      ``load_weights_only: true`` and ``load_strict_model_weights: false`` (fresh projection,
      fresh optimizer, timestamp from 0).
    """
    # 3 batches, checkpoints after batch 2; no warmup, so that every step changes the weights.
    short = ('max_duration=3ba', 'eval_interval=3ba', 'save_interval=1ba', 'scheduler.t_warmup=0ba')
    plain = train('mpt-baseline', *short, f'save_folder={tmp_path}/plain')
    linear_run = ('algorithms.let.projection=linear', 'algorithms.let.stop=3ba')
    linear = train('mpt-let', *short, *linear_run, f'save_folder={tmp_path}/let')
    plain_ckpt, let_ckpt = f'load_path={tmp_path}/plain/ep0-ba2-rank0.pt', f'load_path={tmp_path}/let/ep0-ba2-rank0.pt'

    # LET -> plain: batch 3's loss (computed before its update) is the LET run's batch-3 cross-entropy.
    from_let = train('mpt-baseline', *short, let_ckpt)
    assert not hasattr(from_let.state.model, 'let_projection')
    assert values(from_let, 'loss/train/total') == values(linear, 'loss/train/ce')[2:]

    # plain -> LET (interpolate): resumes at batch 3 with λ for batch 3 and the plain run's weights.
    with pytest.warns(UserWarning, match='LET is not in the state_dict'):
        from_plain = train('mpt-let', *short, 'algorithms.let.stop=3ba', plain_ckpt)
    assert values(from_plain, 'let/lambda') == pytest.approx([0.1 / 3])
    assert values(from_plain, 'loss/train/ce') == values(plain, 'loss/train/total')[2:]

    # plain -> LET (linear): a full resume fails in Composer's optimizer restore; weights-only works.
    with pytest.raises(KeyError, match=r'let_projection\.weight'):
        train('mpt-let', *short, *linear_run, plain_ckpt)
    fresh = train(
        'mpt-let', *short, *linear_run, plain_ckpt, 'load_weights_only=true', 'load_strict_model_weights=false'
    )
    assert values(fresh, 'let/lambda') == pytest.approx([0.1, 0.2 / 3, 0.1 / 3])  # a new run, timestamp from 0
    assert values(fresh, 'loss/train/ce')[0] != values(plain, 'loss/train/total')[0]  # trained weights, not the init
