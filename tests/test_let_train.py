"""LET end to end through llm-foundry's train_from_yaml, real MDS shards, a real (tiny) HF teacher."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry import registry
from transformers import AutoModelForCausalLM

from composer_let import LET

from conftest import in_memory, let_of, runner_of


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


class TeacherProbe(Callback):
    """Sees the LET teacher at the end of each batch: a weak reference, and the runner itself if asked."""

    ref: weakref.ref | None = None
    runner = None
    keep = False

    @classmethod
    def reset(cls, keep: bool) -> None:
        cls.ref, cls.runner, cls.keep = None, None, keep

    def batch_end(self, state: State, logger: Logger) -> None:
        runner = runner_of(next(a for a in state.algorithms if isinstance(a, LET)))
        if runner is not None:
            TeacherProbe.ref = weakref.ref(runner.model)
            if TeacherProbe.keep:
                TeacherProbe.runner = runner


registry.callbacks.register('let_teacher_probe', func=TeacherProbe)


@pytest.mark.parametrize('student', ['mpt', 'llama'])
def test_student_trains_with_let(train, assets, tmp_path: Path, student: str) -> None:
    TeacherProbe.reset(keep=True)
    trainer = train(
        f'{student}-let',
        f'save_folder={tmp_path}/ckpt',
        'save_interval=6ba',
        'algorithms.let.stop=6ba',
        'callbacks={let_teacher_probe: {}}',
    )
    align = values(trainer, 'loss/train/let_align')
    lambdas = values(trainer, 'let/lambda')
    assert lambdas == pytest.approx([0.1 * (1 - s / 6) for s in range(6)])
    # The loss term Composer logs and LET's own whole-batch cosine statistic agree: align = -cos, every batch.
    assert len(align) == 6 and align == pytest.approx([-c for c in values(trainer, 'let/cosine')], abs=1e-6)
    ce, total = values(trainer, 'loss/train/ce'), values(trainer, 'loss/train/total')
    for c, a, t, lam in zip(ce, align, total, lambdas, strict=True):
        assert t == pytest.approx(c + lam * a, rel=1e-5)

    # The frozen teacher is untouched, off the model, out of the optimizer and out of the checkpoint.
    runner = TeacherProbe.runner
    assert runner is not None and runner.forwards >= 6
    assert let_of(trainer).guidance is None  # released at FIT_END
    fresh = AutoModelForCausalLM.from_pretrained(assets['teacher'], torch_dtype=torch.float32).state_dict()
    for name, tensor in runner.model.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    assert not any(p.requires_grad for p in runner.model.parameters())
    teacher_params = {id(p) for p in runner.model.parameters()}
    assert not teacher_params & {id(p) for p in trainer.state.model.parameters()}
    assert not teacher_params & {id(p) for g in trainer.state.optimizers[0].param_groups for p in g['params']}
    checkpoint = torch.load(tmp_path / 'ckpt' / 'ep0-ba6-rank0.pt', weights_only=False)
    saved = checkpoint['state']['model']
    assert set(saved) == set(trainer.state.model.state_dict())


def test_lambda_reaches_zero_and_teacher_is_released(train) -> None:
    TeacherProbe.reset(keep=False)
    trainer = train('mpt-let', 'algorithms.let.stop=2ba', 'max_duration=4ba', 'callbacks={let_teacher_probe: {}}')
    assert values(trainer, 'let/lambda') == pytest.approx([0.1, 0.05, 0.0, 0.0])
    assert len(values(trainer, 'loss/train/let_align')) == 2  # no alignment term once λ is 0
    let = let_of(trainer)
    assert not let.active and let.guidance is None
    assert TeacherProbe.ref is not None
    gc.collect()
    assert TeacherProbe.ref() is None  # nothing holds the teacher's weights any more


def test_lambda0_zero_gives_the_baseline_losses_exactly(train) -> None:
    baseline = values(train('mpt-baseline'), 'loss/train/total')
    with_let = train('mpt-let', 'algorithms.let.lambda0=0', 'algorithms.let.stop=1.0dur')
    assert len(baseline) == 6
    assert values(with_let, 'loss/train/total') == baseline  # bit-identical: the hook changes nothing
    assert len(values(with_let, 'loss/train/let_align')) == 6  # ... while the teacher did run


class AlignOnlyGradProbe(Callback):
    """Back-propagates only the alignment term and records which student blocks it reaches."""

    last: ClassVar[dict[int, bool]] = {}

    def after_loss(self, state: State, logger: Logger) -> None:
        state.loss = {'total': state.loss['let_align'], 'let_align': state.loss['let_align']}

    def after_backward(self, state: State, logger: Logger) -> None:
        blocks = state.model.model.model.layers
        AlignOnlyGradProbe.last = {
            i: any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
            for i, block in enumerate(blocks)
        }


def test_alignment_gradient_reaches_blocks_up_to_k_only(train) -> None:
    registry.callbacks.register('align_only_grad_probe', func=AlignOnlyGradProbe)
    AlignOnlyGradProbe.last = {}
    train('llama-let', 'algorithms.let.student_layer=1', 'max_duration=1ba', 'callbacks={align_only_grad_probe: {}}')
    assert AlignOnlyGradProbe.last == {0: True, 1: True, 2: False, 3: False}


@pytest.mark.parametrize(
    ('overrides', 'student_block', 'teacher_block'),
    [
        (('algorithms.let.strategy=M2L',), 'model.transformer.blocks.3', 0),
        (('algorithms.let.student_layer=-2', 'algorithms.let.teacher_layer=0'), 'model.transformer.blocks.2', 0),
        (('algorithms.let.student_module=model.transformer.blocks.1',), 'model.transformer.blocks.1', 1),
    ],
)
def test_layer_choice(train, overrides, student_block: str, teacher_block: int) -> None:
    trainer = train('mpt-let', 'max_duration=1ba', *overrides)
    let = let_of(trainer)
    assert let.wiring.student_path == student_block and let.wiring.teacher_layer == teacher_block
    assert len(values(trainer, 'loss/train/let_align')) == 1


@pytest.mark.parametrize('setting', ['projection=linear', 'loss=mse', 'loss=smooth_l1', 'schedule=cosine'])
def test_variants_train(train, setting: str) -> None:
    trainer = train('llama-let', 'max_duration=2ba', 'algorithms.let.stop=2ba', f'algorithms.let.{setting}')
    assert len(values(trainer, 'loss/train/let_align')) == 2
    if setting == 'projection=linear':
        projection = trainer.state.model.let_projection
        assert projection.weight.shape == (32, 64)  # d_S=64 -> d_T=32
        in_optimizer = {id(p) for g in trainer.state.optimizers[0].param_groups for p in g['params']}
        assert id(projection.weight) in in_optimizer
        assert 'let_projection.weight' in trainer.state.model.state_dict()


class ReentrantCheckpoint(Callback):
    """At INIT, wraps student block 1 in torch's reentrant activation checkpointing (what Composer's FSDP gives
    with ``activation_checkpointing_reentrant: true``), and counts the optimizer steps taken."""

    steps = 0

    def init(self, state: State, logger: Logger) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

        layers = state.model.model.model.layers
        layers[1] = checkpoint_wrapper(layers[1], checkpoint_impl=CheckpointImpl.REENTRANT)

    def after_train_batch(self, state: State, logger: Logger) -> None:
        ReentrantCheckpoint.steps += 1


def test_a_module_inside_a_reentrant_checkpoint_is_refused_before_any_step(train) -> None:
    """Its output has no gradient (the checkpoint's forward runs without autograd): λ·align would be a constant."""
    registry.callbacks.register('let_reentrant_checkpoint', func=ReentrantCheckpoint)
    run = ('max_duration=2ba', 'algorithms.let.stop=2ba', 'callbacks={let_reentrant_checkpoint: {}}')
    ReentrantCheckpoint.steps = 0
    with pytest.raises(ValueError, match=r'algorithms\.let\.student_module=model\.model\.layers\.1\.mlp') as error:
        train('llama-let', *run, 'algorithms.let.student_module=model.model.layers.1.mlp')
    assert ReentrantCheckpoint.steps == 0  # raised in the first microbatch, before the optimizer stepped
    message = str(error.value)
    assert 'student_module: model.model.layers.1' in message and 'activation_checkpointing_reentrant: false' in message
    # The fix the error names: hook the checkpointed block itself (its wrapper's output carries the gradient).
    trainer = train('llama-let', *run, 'algorithms.let.student_module=model.model.layers.1')
    assert len(values(trainer, 'let/grad_ratio')) == 2 and all(r > 0 for r in values(trainer, 'let/grad_ratio'))
