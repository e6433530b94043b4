"""Bad data, bad teachers and bad numbers: LET either copes exactly or stops with a clear error.

* Padding (short rows, rows with no token at all) is left out of the alignment; nothing turns NaN.
* A teacher whose features are exactly zero gives cosine 0 (eps in the norm), never NaN.
* A teacher that overflows in ``teacher_dtype: fp16`` stops the run at the end of the first batch,
  before any checkpoint, naming ``teacher_dtype``; the same teacher in bf16 trains.
* Sequences longer than the teacher's ``max_position_embeddings`` stop the run before any step.
* A teacher folder that is missing fails at INIT; one whose weights do not load fails when the
  teacher is loaded (FIT_START): both before any step, with the path in the message.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry import registry
from transformers import AutoModelForCausalLM, AutoTokenizer

import composer_let.guidance

from conftest import SEQ_LEN, in_memory


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


class CountBatches(Callback):
    """Counts the batches that started, across a run that raises."""

    started = 0

    def __init__(self) -> None:
        CountBatches.started = 0

    def batch_start(self, state: State, logger: Logger) -> None:
        CountBatches.started += 1


registry.callbacks.register('let_test_count_batches', func=CountBatches)


def edited_teacher(assets: dict[str, Path], folder: Path, edit) -> Path:
    """A copy of the tiny teacher (same tokenizer) with ``edit(model)`` applied to its weights."""
    model = AutoModelForCausalLM.from_pretrained(assets['teacher'], torch_dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets['teacher']).save_pretrained(folder)
    return folder


def test_padding_rows_are_left_out_of_the_alignment(train, assets, tmp_path: Path, monkeypatch) -> None:
    """Batches of [full, short, no token, full] rows: the alignment averages real tokens only."""
    from streaming import MDSWriter

    tokenizer = AutoTokenizer.from_pretrained(assets['teacher'])
    text = Path(np.__file__).read_text()  # any real text; llm-foundry tokenizes a `text` column on the fly
    short = 'import numpy as np  # a short row'
    rows = [text[i * 4000 : (i + 1) * 4000] for i in range(6)]
    with MDSWriter(out=str(tmp_path / 'padded' / 'train'), columns={'text': 'str'}) as writer:
        for row in rows:
            for sample in (row, short, '', row[::-1]):  # full, short, no token at all, full
                writer.write({'text': sample})
    real_tokens = [SEQ_LEN, len(tokenizer(short)['input_ids']), 0, SEQ_LEN]
    shutil.copytree(assets['data'] / 'val', tmp_path / 'padded' / 'val')

    calls = []

    def recording(student, teacher, mask=None, kind='cosine'):
        loss, cosine = alignment(student, teacher, mask, kind)
        calls.append((student.detach().clone(), teacher.detach().clone(), mask, loss.detach(), cosine))
        return loss, cosine

    alignment = composer_let.guidance.alignment_loss
    monkeypatch.setattr(composer_let.guidance, 'alignment_loss', recording)
    # Llama: MPT refuses to train on rows whose first token is padding ("left padding").
    trainer = train(
        'llama-let',
        f'variables.data_local={tmp_path}/padded',
        'max_duration=3ba',
        'algorithms.let.stop=1dur',
        'eval_interval=3ba',
    )

    assert all(math.isfinite(v) for v in values(trainer, 'loss/train/total'))
    assert len(calls) == 3
    for student, teacher, mask, loss, cosine in calls:
        assert mask is not None and mask.sum(dim=1).tolist() == real_tokens
        real = mask.bool()
        expected = F.cosine_similarity(student[real].float(), teacher[real].float(), dim=-1, eps=1e-6).mean()
        assert -loss.item() == pytest.approx(expected.item(), abs=1e-5)
        assert cosine.item() == pytest.approx(expected.item(), abs=1e-5)


def test_zero_teacher_features_give_cosine_zero_not_nan(train, assets, tmp_path: Path) -> None:
    # The final norm's weight at 0: the teacher's last hidden state (what L2E aligns to) is exactly zero.
    teacher = edited_teacher(assets, tmp_path / 'zero', lambda m: m.model.norm.weight.zero_())
    run = ('max_duration=2ba', 'algorithms.let.stop=1dur', 'eval_interval=2ba')
    trainer = train('mpt-let', f'algorithms.let.teacher={teacher}', *run)
    assert values(trainer, 'let/cosine') == [0.0, 0.0]
    assert values(trainer, 'loss/train/total') == values(trainer, 'loss/train/ce')  # λ · 0 added
    assert all(torch.isfinite(p).all() for p in trainer.state.model.parameters())


def test_fp16_teacher_overflow_stops_with_a_clear_error(train, assets, tmp_path: Path) -> None:
    # Embeddings around 2e5: past fp16's 65504 (the fp16 teacher's states turn inf/NaN), fine in bf16.
    teacher = edited_teacher(assets, tmp_path / 'loud', lambda m: m.model.embed_tokens.weight.mul_(1e7))
    run = (f'algorithms.let.teacher={teacher}', 'max_duration=2ba', 'eval_interval=2ba', 'save_interval=1ba')
    with pytest.raises(FloatingPointError, match=r'inf/NaN in batch 1: .*teacher_dtype=fp16.*bf16'):
        train('mpt-let', *run, 'algorithms.let.teacher_dtype=fp16', f'save_folder={tmp_path}/fp16')
    assert not list((tmp_path / 'fp16').glob('*.pt'))  # stopped before the first checkpoint

    trainer = train('mpt-let', *run, 'algorithms.let.teacher_dtype=bf16', f'save_folder={tmp_path}/bf16')
    assert all(math.isfinite(v) for v in values(trainer, 'let/cosine') + values(trainer, 'loss/train/total'))


def test_sequences_longer_than_the_teachers_positions_fail_before_any_step(train, assets, tmp_path: Path) -> None:
    teacher = tmp_path / 'short'
    from composer_let.prep.tiny import save_llama

    save_llama(teacher, AutoTokenizer.from_pretrained(assets['teacher']), hidden=32, layers=2, max_positions=32)
    CountBatches.started = -1
    with pytest.raises(ValueError, match=rf"{SEQ_LEN} tokens exceed the teacher's max_position_embeddings \(32\)"):
        train(
            'mpt-let',
            f'algorithms.let.teacher={teacher}',
            f'save_folder={tmp_path}/ckpt',
            'save_interval=1ba',
            'callbacks={let_test_count_batches: {}}',
        )
    assert CountBatches.started == 1  # raised in the first batch's forward, before its backward and step
    assert not list((tmp_path / 'ckpt').glob('*.pt'))


def test_missing_teacher_fails_at_init_with_the_path(train, tmp_path: Path) -> None:
    missing = tmp_path / 'no-such-teacher'
    CountBatches.started = -1
    with pytest.raises(ValueError, match=rf"algorithms\.let\.teacher='{missing}'.*no such folder"):
        train('mpt-let', f'algorithms.let.teacher={missing}', 'callbacks={let_test_count_batches: {}}')
    assert CountBatches.started == 0


def test_teacher_weights_that_do_not_load_fail_before_any_step_with_the_path(train, assets, tmp_path: Path) -> None:
    broken = tmp_path / 'broken-teacher'
    shutil.copytree(assets['teacher'], broken)
    weights = broken / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated download
    CountBatches.started = -1
    with pytest.raises(ValueError, match=rf"teacher='{broken}' failed to load"):
        train(
            'mpt-let',
            f'algorithms.let.teacher={broken}',
            f'save_folder={tmp_path}/ckpt',
            'save_interval=1ba',
            'callbacks={let_test_count_batches: {}}',
        )
    assert CountBatches.started == 0
    assert not list((tmp_path / 'ckpt').glob('*.pt'))
