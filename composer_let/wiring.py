"""What LET connects, resolved once at ``Event.INIT`` from the YAML block and the student model.

The teacher (config, tokenizer contract, layer widths from a weightless forward), the two layers and
their widths, whether the student attends within packed documents, and the re-tokenizer when the
tokenizers differ. Every mismatch raises ``ValueError`` naming ``algorithms.let.<key>``::

    wiring = wire(model, teacher='HuggingFaceTB/SmolLM2-135M', strategy='L2E', ...)
    wiring.student_path, wiring.teacher_layer, wiring.teacher_width, wiring.bridge
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from composer_let.cross_tokenizer import TokenBridge
from composer_let.distill import head_rescaling
from composer_let.layers import find_block_list, find_module, resolve_layer, strategy_layers
from composer_let.teacher import (
    SAME_TOKENIZER_FIX,
    TeacherShape,
    layer_widths,
    load_teacher_tokenizer,
    open_teacher,
    same_tokenizer,
    student_masks_documents,
)

log = logging.getLogger(__name__)
SECTION = 'algorithms.let'
CROSS_TOKENIZER_MAX_LENGTH = 4096  # the teacher's context when its config does not say


@dataclass(frozen=True)
class Wiring:
    """The resolved connection between one teacher layer and one student module."""

    teacher_path: str  # local folder (a hub id is downloaded at INIT)
    shape: TeacherShape
    teacher_layer: int
    teacher_width: int
    student_path: str  # dotted module path in the Composer model
    student_blocks: int | None  # None when student_module named the module
    student_width: int
    packed: bool  # the student attends within documents (sequence_id): so does the teacher
    bridge: TokenBridge | None  # re-tokenizer when the teacher's tokenizer differs

    @property
    def final_layer(self) -> int:
        return self.shape.num_layers - 1

    def summary(self) -> dict[str, Any]:
        return {
            'teacher': self.teacher_path,
            'teacher_layers': self.shape.num_layers,
            'teacher_layer': self.teacher_layer,
            'teacher_width': self.teacher_width,
            'student_module': self.student_path,
            'student_blocks': self.student_blocks,
            'student_width': self.student_width,
            'packed_documents': self.packed,
            'cross_tokenizer': self.bridge is not None,
        }


def student_hidden_size(model: nn.Module) -> int:
    """Width of the student's residual stream, read from its config."""
    for candidate in (model, getattr(model, 'model', None)):
        config = getattr(candidate, 'config', None)
        for attr in ('hidden_size', 'd_model', 'n_embd'):
            if isinstance(getattr(config, attr, None), int):
                return getattr(config, attr)
    raise ValueError(f'Cannot read the hidden size of {type(model).__name__} from its config.')


def wire(
    model: nn.Module,
    *,
    teacher: str,
    strategy: str,
    teacher_layer: int | None,
    student_layer: int | None,
    student_module: str | None,
    ce_tokens: int,
    projection: str,
    cross_tokenizer: bool,
) -> Wiring:
    """Resolve the block's wiring against the student ``model`` (no side effect on it).

    ``scripts/estimate.py`` calls this (through ``LET.check``) on a weightless student.
    """
    tokenizer = getattr(model, 'tokenizer', None)
    fix = f'{SAME_TOKENIZER_FIX} Or set {SECTION}.cross_tokenizer: true to align across tokenizers.'
    path, config, shape = open_teacher(teacher, SECTION, tokenizer, None if cross_tokenizer else fix)
    bridge = make_bridge(tokenizer, path, shape) if cross_tokenizer else None
    default_teacher, _ = strategy_layers(strategy, shape.num_layers, 1)
    index_t = resolve_layer(
        default_teacher if teacher_layer is None else teacher_layer, shape.num_layers, f'{SECTION}.teacher_layer'
    )
    if ce_tokens and bridge is None and head_rescaling(config):
        raise ValueError(
            f'{SECTION}.ce_tokens={ce_tokens}: the teacher {teacher!r} rescales its logits outside its LM head '
            f'({", ".join(head_rescaling(config))}), so let/teacher_ce would be wrong. Set ce_tokens: 0.',
        )
    if student_module is not None:
        find_module(model, student_module, key=f'{SECTION}.student_module')
        student_path, num_blocks = student_module, None
    else:
        blocks_path, blocks = find_block_list(model)
        num_blocks = len(blocks)
        _, default_student = strategy_layers(strategy, shape.num_layers, num_blocks)
        index_s = resolve_layer(
            default_student if student_layer is None else student_layer, num_blocks, f'{SECTION}.student_layer'
        )
        student_path = f'{blocks_path}.{index_s}'
    width_t = layer_widths(config, [index_t], SECTION)[index_t]
    width_s = student_hidden_size(model)
    if projection == 'none' and width_s != width_t:
        raise ValueError(
            f'{SECTION}.projection=none needs equal widths, but the student is {width_s} wide and the teacher '
            f'block {index_t} {width_t}. Use projection: interpolate (the paper), pool or linear.',
        )
    return Wiring(
        teacher_path=path,
        shape=shape,
        teacher_layer=index_t,
        teacher_width=width_t,
        student_path=student_path,
        student_blocks=num_blocks,
        student_width=width_s,
        packed=student_masks_documents(model),
        bridge=bridge,
    )


def make_bridge(student: Any, teacher_path: str, shape: TeacherShape) -> TokenBridge | None:
    """The re-tokenizer for a teacher on another tokenizer (``None`` when the tokenizers are the same)."""
    key = f'{SECTION}.cross_tokenizer'
    teacher = load_teacher_tokenizer(teacher_path)
    if student is None or teacher is None:
        which = 'run' if student is None else 'teacher'
        raise ValueError(f'{key}: true needs both tokenizers, but the {which} tokenizer is not available.')
    if same_tokenizer(student, teacher):
        log.info('LET: cross_tokenizer is on but the tokenizers are the same: the teacher reads the ids as is.')
        return None
    return TokenBridge(student, teacher, max_length=shape.max_positions or CROSS_TOKENIZER_MAX_LENGTH)
