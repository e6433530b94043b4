"""Cross-tokenizer LET end to end: a student on one tokenizer guided by a teacher on another.

What the algorithm aligns is checked against a brute-force reference that shares no code with the
bridge: for each student position the teacher model reads the text the student has read up to the
end of that token, and its last state is the target (see :func:`reference_alignment`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry import registry
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from composer_let import LET
from composer_let.cross_tokenizer import TokenBridge
from composer_let.teacher import TeacherRunner

from conftest import in_memory, let_of

GPT2_BYTES = {c: b for b, c in bytes_to_unicode().items()}


def values(trainer, key: str) -> list[float]:
    return [float(v) for _, v in in_memory(trainer).data.get(key, [])]


class CrossSeen(Callback):
    """Per batch (when it arrives, whether it carries ``let_`` keys); the first guided microbatch's alignment."""

    batches: ClassVar[list[tuple[float, bool]]] = []
    first: ClassVar[dict[str, Any]] = {}

    def after_dataloader(self, state: State, logger: Logger) -> None:
        CrossSeen.batches.append((time.monotonic(), any(str(k).startswith('let_') for k in state.batch)))

    def after_forward(self, state: State, logger: Logger) -> None:
        let = next(a for a in state.algorithms if isinstance(a, LET))
        if not CrossSeen.first and let.guidance is not None and let.guidance.teacher_hidden is not None:
            CrossSeen.first = {
                'hidden': let.guidance.teacher_hidden.detach().clone(),
                'mask': let.guidance.align_mask.clone(),  # type: ignore[union-attr]
                'input_ids': state.batch['input_ids'].clone(),
            }


registry.callbacks.register('cross_tokenizer_seen', func=CrossSeen)
SEEN = 'callbacks={cross_tokenizer_seen: {}}'


def packed(data: dict[str, Any]) -> tuple[str, str]:
    return f'variables.data_local={data["data"]}', f'train_loader.dataset.eos_token_id={data["eos"]}'


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)['input_ids']


@torch.no_grad()
def reference_alignment(
    input_ids: torch.Tensor, student: Any, teacher: Any, model: Any, packed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: which student positions have a target, and the target (the teacher's final state).

    For each student position the teacher reads the text the student has read, up to the end of
    that token: its document's (``packed``), else also the row's earlier documents, each closed by
    the teacher's EOS. A position has a target only where that text ends at one of the teacher's
    pre-tokens (``pre_tokenize_str`` of the whole document) and its teacher ids begin those of the
    whole document; a student EOS has the teacher reading the document and its EOS.
    """
    valid = torch.zeros(input_ids.shape, dtype=torch.bool)
    states = torch.zeros(*input_ids.shape, model.config.hidden_size)

    def last_state(ids: list[int]) -> torch.Tensor:
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]

    for b, row in enumerate(input_ids.tolist()):
        earlier: list[int] = []
        data, positions = b'', []
        for i, token in enumerate([*row, None]):  # None: the row's end closes its last document
            if token is not None and token != student.eos_token_id:
                data += bytes(GPT2_BYTES[c] for c in student.convert_ids_to_tokens(token))
                positions.append((i, len(data)))
                continue
            text = data.decode('utf-8', 'replace')
            full = encode(teacher, text)
            ends = {end for _, (_, end) in teacher.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)}
            context = [] if packed else earlier
            for p, end in positions:
                left = data[:end].decode('utf-8', 'replace')
                if left + data[end:].decode('utf-8', 'replace') != text or len(left) not in ends | {len(text)}:
                    continue
                prefix = encode(teacher, left)
                if prefix and full[: len(prefix)] == prefix:
                    valid[b, p], states[b, p] = True, last_state(context + prefix)
            if token is not None:
                closed = [*full, teacher.eos_token_id]
                valid[b, i], states[b, i] = True, last_state(context + closed)
                earlier = earlier + closed
            data, positions = b'', []
    return valid, states


def check_alignment(trainer: Any, teacher_folder: Path, packed: bool) -> None:
    """What the algorithm aligned in its first guided microbatch equals :func:`reference_alignment`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    let, seen = let_of(trainer), CrossSeen.first
    assert let.wiring.packed is packed and let.wiring.teacher_layer == 1  # L2E, 2-block teacher: its final state
    model = AutoModelForCausalLM.from_pretrained(teacher_folder, torch_dtype=torch.float32).eval()
    teacher = AutoTokenizer.from_pretrained(teacher_folder)
    student = trainer.state.model.tokenizer
    valid, states = reference_alignment(seen['input_ids'], student, teacher, model, packed)
    assert torch.equal(seen['mask'], valid)
    assert torch.allclose(seen['hidden'][valid], states[valid], atol=1e-4)
    assert not seen['hidden'][~valid].any()
    assert 0.2 < valid.float().mean() < 1  # some positions are aligned, some are not
    eos = seen['input_ids'] == student.eos_token_id
    assert eos.any() and valid[eos].all()


@pytest.fixture(scope='module')
def foreign_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama on its own 300-token BPE, trained on other text than the student's 512-token one."""
    from composer_let.prep.tiny import build_tokenizer, save_llama, stdlib_texts

    out = tmp_path_factory.mktemp('foreign')
    tokenizer = build_tokenizer(out / 'tok', stdlib_texts(300_000)[::-1], vocab_size=300)
    save_llama(out / 'teacher', tokenizer, hidden=32, layers=2, heads=2, max_positions=256)
    return out / 'teacher'


def test_cross_tokenizer_trains_on_the_teachers_own_tokens(train, foreign_teacher, packed_data, monkeypatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    call = TeacherRunner.__call__

    def spy(self, input_ids, attention_mask=None, sequence_id=None):
        seen.append((input_ids, attention_mask))
        return call(self, input_ids, attention_mask, sequence_id)

    monkeypatch.setattr(TeacherRunner, '__call__', spy)
    run = ('max_duration=3ba', 'algorithms.let.stop=3ba', f'algorithms.let.teacher={foreign_teacher}')
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer: true to align across tokenizers'):
        train('llama-let', *run)
    CrossSeen.batches, CrossSeen.first = [], {}
    trainer = train('llama-let', *run, *packed(packed_data), 'algorithms.let.cross_tokenizer=true', SEEN)
    # the batches came through BridgedCollate, and the teacher's states were gathered and masked as the reference
    assert [has_keys for _, has_keys in CrossSeen.batches] == [True] * 3
    check_alignment(trainer, foreign_teacher, packed=False)  # an HF student attends across documents
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


def test_a_packed_student_is_aligned_within_its_documents(train, foreign_teacher, packed_data) -> None:
    """Issue 25.1: an MPT student that attends within documents; no position is aligned across a boundary."""
    CrossSeen.batches, CrossSeen.first = [], {}
    trainer = train(
        'mpt-let',
        *packed(packed_data),
        'model.attn_config.attn_uses_sequence_id=true',
        'max_duration=2ba',
        'eval_interval=2ba',
        'algorithms.let.stop=2ba',
        f'algorithms.let.teacher={foreign_teacher}',
        'algorithms.let.cross_tokenizer=true',
        SEEN,
    )
    assert [has_keys for _, has_keys in CrossSeen.batches] == [True] * 2
    check_alignment(trainer, foreign_teacher, packed=True)


@pytest.mark.parametrize('workers', [0, 2])
def test_nothing_is_re_tokenized_after_the_teacher_is_released(
    train, foreign_teacher, monkeypatch, tmp_path: Path, workers: int
) -> None:
    """Issue 25.4: after S_stop batches pass through the DataLoader untouched, in its workers too."""
    calls, releases = tmp_path / 'bridge_calls.txt', []
    bridge, release = TokenBridge.__call__, LET._release

    def spy(self, input_ids):  # runs in the DataLoader's workers (forked: they inherit the patch)
        with open(calls, 'a') as f:
            f.write(f'{time.monotonic()} {os.getpid()}\n')
        return bridge(self, input_ids)

    def timed(self) -> None:
        release(self)
        releases.append(time.monotonic())

    monkeypatch.setattr(TokenBridge, '__call__', spy)
    monkeypatch.setattr(LET, '_release', timed)
    CrossSeen.batches, CrossSeen.first = [], {}
    loader = (f'train_loader.num_workers={workers}', 'train_loader.prefetch_factor=2') if workers else ()
    train(
        'llama-let',
        'max_duration=10ba',
        'eval_interval=10ba',
        'algorithms.let.stop=2ba',
        f'algorithms.let.teacher={foreign_teacher}',
        'algorithms.let.cross_tokenizer=true',
        *loader,
        SEEN,
    )
    keys = [has_keys for _, has_keys in CrossSeen.batches]
    assert len(keys) == 10 and keys[:2] == [True, True]
    # Released at batch 2's start: batch 2 was collated before, and the workers may have prefetched 2 each.
    assert not any(keys[3 + 2 * workers :])
    made = [line.split() for line in calls.read_text().splitlines()]
    assert len(made) >= 2
    late = [pid for at, pid in made if float(at) > releases[0]]
    assert len(late) <= workers  # at most a collate each worker had begun
    main = str(os.getpid())
    assert all((pid != main) == bool(workers) for _, pid in made)  # in the workers when there are some


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
