"""Cross-tokenizer LET end to end: a student on one tokenizer guided by a teacher on another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from composer_let import LET
from composer_let.teacher import TeacherRunner

from conftest import in_memory


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


@pytest.fixture(scope='module')
def foreign_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama on its own 300-token BPE, trained on other text than the student's 512-token one."""
    from composer_let.prep.tiny import build_tokenizer, save_llama, stdlib_texts

    out = tmp_path_factory.mktemp('foreign')
    tokenizer = build_tokenizer(out / 'tok', stdlib_texts(300_000)[::-1], vocab_size=300)
    save_llama(out / 'teacher', tokenizer, hidden=32, layers=2, heads=2, max_positions=256)
    return out / 'teacher'


def test_cross_tokenizer_trains_on_the_teachers_own_tokens(train, assets, foreign_teacher, monkeypatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    call = TeacherRunner.__call__

    def spy(self, input_ids, attention_mask=None, sequence_id=None):
        seen.append((input_ids, attention_mask))
        return call(self, input_ids, attention_mask, sequence_id)

    monkeypatch.setattr(TeacherRunner, '__call__', spy)
    run = ('max_duration=3ba', 'algorithms.let.stop=3ba', f'algorithms.let.teacher={foreign_teacher}')
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer: true to align across tokenizers'):
        train('llama-let', *run)
    trainer = train('llama-let', *run, 'algorithms.let.cross_tokenizer=true')
    align = values(trainer, 'loss/train/let_align')
    assert len(align) == 3 and all(torch.isfinite(torch.tensor(align)))
    assert values(trainer, 'let/teacher_ce') == []  # CEs over different vocabularies are not compared
    student_batch = trainer.state.batch['input_ids']
    teacher_ids = [ids for ids, _ in seen if ids.shape[1] > 2]  # skip the 2-token width probe
    assert len(teacher_ids) == 3
    for ids in teacher_ids:
        assert int(ids.max()) < 300  # the teacher's own vocabulary
        assert ids.shape[0] == student_batch.shape[0] and ids.shape[1] != student_batch.shape[1]
    # The 300-token BPE needs more tokens than the 512-token one for the same text.
    assert teacher_ids[0].shape[1] > student_batch.shape[1]


def test_cross_tokenizer_with_the_same_tokenizer_is_bit_identical(train) -> None:
    run = ('max_duration=3ba', 'algorithms.let.stop=3ba')
    plain = train('llama-let', *run)
    cross = train('llama-let', *run, 'algorithms.let.cross_tokenizer=true')
    for key in ('loss/train/total', 'loss/train/let_align', 'let/cosine', 'let/teacher_ce'):
        assert values(cross, key) == values(plain, key), key


def test_cross_tokenizer_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer=1 must be true or false'):
        LET(teacher='t', cross_tokenizer=1)


def test_a_teacher_tokenizer_without_offsets_fails_before_step_one(train, tmp_path: Path) -> None:
    """ByT5's tokenizer exists only in Python (no fast version, no offsets): the bridge cannot map positions."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    from composer_let.prep.tiny import save_llama

    byt5 = ByT5Tokenizer()
    folder = tmp_path / 'byt5-teacher'
    save_llama(folder, byt5, hidden=32, layers=2, heads=2, max_positions=256)
    assert not AutoTokenizer.from_pretrained(folder).is_fast
    assert json.loads((folder / 'tokenizer_config.json').read_text())['tokenizer_class'] == 'ByT5Tokenizer'
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer'):
        train(
            'llama-let', 'max_duration=2ba', f'algorithms.let.teacher={folder}', 'algorithms.let.cross_tokenizer=true'
        )
