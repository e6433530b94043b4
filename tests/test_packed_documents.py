"""Rows packed with several documents: a student that attends within documents gets a teacher that does too.

llm-foundry's MPT with ``attn_config.attn_uses_sequence_id: true`` masks attention at document boundaries
when the text loader marks them (``train_loader.dataset.eos_token_id`` adds ``sequence_id`` to the batch).
LET and SALT then run the teacher with a block-diagonal mask and per-document positions: the teacher
states they use must equal the teacher run on each document alone. Hugging Face students in llm-foundry
drop ``sequence_id`` and attend across documents, and so does their teacher.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry import registry

from conftest import in_memory


class TeacherSeen(Callback):
    """The teacher hidden state an algorithm holds after the first forward, with that microbatch."""

    algorithm: ClassVar[str] = 'LET'
    first: ClassVar[dict[str, Any]] = {}

    def after_forward(self, state: State, logger: Logger) -> None:
        algorithm = next(a for a in state.algorithms if type(a).__name__ == TeacherSeen.algorithm)
        if type(algorithm).__name__ == 'LET':  # LET's active phase holds the teacher and its output
            active, packed = algorithm.guidance, algorithm.wiring.packed
            hidden, runner = (None, None) if active is None else (active.teacher_hidden, active.runner)
        else:
            hidden, runner, packed = algorithm._teacher_hidden, algorithm._runner, algorithm._packed
        if not TeacherSeen.first and hidden is not None:
            TeacherSeen.first = {
                'hidden': hidden.clone(),
                'input_ids': state.batch['input_ids'].clone(),
                'sequence_id': state.batch['sequence_id'].clone(),
                'model': runner.model,
                'packed': packed,
            }


registry.callbacks.register('packed_teacher_seen', func=TeacherSeen)

PACKED = ('model.attn_config.attn_uses_sequence_id=true', 'max_duration=2ba', 'eval_interval=2ba')


def documents(sequence_id: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(row, token indices)`` of every document of a packed batch."""
    return [(row, (ids == d).nonzero().flatten()) for row, ids in enumerate(sequence_id) for d in ids.unique()]


@pytest.mark.parametrize(
    ('name', 'algorithm', 'settings', 'state_index'),
    [
        # M2E on the 2-block teacher: block 0, where the forward stops; hidden_states[1].
        ('mpt-let', 'LET', ('algorithms.let.strategy=M2E', 'algorithms.let.stop=2ba'), 1),
        # SALT's soft labels come from the final output (after the final norm): hidden_states[-1].
        ('mpt-salt', 'SALT', ('algorithms.salt.stop=2ba',), -1),
    ],
    ids=['let', 'salt'],
)
def test_teacher_attends_within_documents(
    train, packed_data, name: str, algorithm: str, settings: tuple, state_index: int
) -> None:
    TeacherSeen.algorithm, TeacherSeen.first = algorithm, {}
    trainer = train(
        name,
        f'variables.data_local={packed_data["data"]}',
        f'train_loader.dataset.eos_token_id={packed_data["eos"]}',
        *PACKED,
        *settings,
        'callbacks={packed_teacher_seen: {}}',
    )
    key = 'loss/train/let_align' if algorithm == 'LET' else 'loss/train/salt_kd'
    assert len(in_memory(trainer).data[key]) == 2
    seen = TeacherSeen.first
    model, hidden, input_ids, sequence_id = seen['model'], seen['hidden'], seen['input_ids'], seen['sequence_id']
    docs = documents(sequence_id)
    later = [(row, index) for row, index in docs if index[0] > 0]
    assert later, 'the first batch has no row with several documents'
    with torch.no_grad():
        whole = model.base_model(input_ids=input_ids, output_hidden_states=True).hidden_states[state_index]
        for row, index in docs:
            alone = model.base_model(input_ids=input_ids[row, index][None], output_hidden_states=True)
            expected = alone.hidden_states[state_index][0]
            assert torch.allclose(hidden[row, index], expected, atol=1e-5), (row, index)
    # The test can tell: attending across the boundary gives other states for every later document.
    for row, index in later:
        assert not torch.allclose(whole[row, index], hidden[row, index], atol=1e-3), (row, index)

    from composer_let.teacher import student_masks_documents

    assert seen['packed'] and student_masks_documents(trainer.state.model)


def test_a_packed_student_without_sequence_id_fails_with_the_fix(train) -> None:
    """The student masks documents but the loader marks none (no eos_token_id): the first batch says what to set."""
    with pytest.raises(ValueError, match=r'no sequence_id; set train_loader\.dataset\.eos_token_id'):
        train('mpt-let', *PACKED)


def test_which_students_mask_documents() -> None:
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    from composer_let.teacher import student_masks_documents

    def mpt(uses_sequence_id: bool) -> MPTForCausalLM:
        attn = {'attn_impl': 'torch', 'attn_uses_sequence_id': uses_sequence_id}
        return MPTForCausalLM(
            MPTConfig(d_model=16, n_heads=2, n_layers=1, max_seq_len=16, vocab_size=32, attn_config=attn)
        )

    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    assert student_masks_documents(mpt(True))
    assert not student_masks_documents(mpt(False))
    assert not student_masks_documents(llama)


def test_teacher_inputs() -> None:
    from composer_let.teacher import teacher_inputs

    ids, mask, sequence_id = torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4), torch.zeros(2, 4, dtype=torch.long)
    batch = {'input_ids': ids, 'attention_mask': mask, 'sequence_id': sequence_id, 'labels': ids}
    packed = teacher_inputs(batch, packed=True)
    assert packed.keys() == {'input_ids', 'attention_mask', 'sequence_id'} and packed['sequence_id'] is sequence_id
    assert teacher_inputs(batch, packed=False).keys() == {'input_ids', 'attention_mask'}  # HF students ignore it
    with pytest.raises(ValueError, match=r'attn_uses_sequence_id.*set train_loader\.dataset\.eos_token_id'):
        teacher_inputs({'input_ids': ids, 'attention_mask': mask}, packed=True)
