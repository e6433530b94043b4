"""LET's active phase: everything that exists only while the teacher guides the student.

Created at ``Event.FIT_START`` (if the run is before its stop), dropped at release; once released
nothing of it remains: no teacher, no hook, no bridged collate, no statistics::

    guidance = Guidance.start(state, wiring, settings, projection)
    guidance.before_forward(state.batch)        # Event.BEFORE_FORWARD: the teacher's forward
    guidance.after_forward()                     # Event.AFTER_FORWARD
    align = guidance.alignment(state)            # Event.AFTER_LOSS: the loss term, statistics kept
    stats = guidance.take_stats()                # Event.BATCH_END: this batch's sums (see STATS)
    guidance.release()                           # λ reached 0, or Event.FIT_END
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from composer.core import State
from torch import nn
from torch.utils.data import DataLoader

from composer_let.alignment import RESIZES, alignment_loss, resize_width, standardize_features
from composer_let.capture import OutputCapture
from composer_let.cross_tokenizer import KEYS as BRIDGE_KEYS
from composer_let.cross_tokenizer import PREFIX, BridgedCollate
from composer_let.diagnostics import GradientProbe, sampled_positions, token_nll
from composer_let.layers import find_module, reentrant_block
from composer_let.teacher import DTYPES, BatchGuard, TeacherRunner, start_teacher, state_device, teacher_inputs
from composer_let.wiring import SECTION, Wiring

log = logging.getLogger(__name__)

# Per-batch statistics, summed over microbatches (and, by the caller, ranks): indices into take_stats().
COS, MICROBATCHES, TEACHER_NONFINITE, TEACHER_NLL, STUDENT_NLL, CE_COUNT, REST2, ALIGN2, DOT = range(9)


@dataclass(frozen=True)
class Settings:
    """The YAML keys the active phase reads."""

    teacher_dtype: str
    teacher_norm: str
    projection: str
    loss: str
    ce_tokens: int


def output_logits(outputs: Any) -> torch.Tensor:
    """The logits of a Composer model's outputs (MPT: a dict or tensor; Hugging Face: ``.logits``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs['logits'] if isinstance(outputs, dict) else outputs.logits


class Guidance:
    """The loaded teacher, the hook on the student block and what they produce per microbatch."""

    def __init__(
        self,
        wiring: Wiring,
        settings: Settings,
        runner: TeacherRunner,
        requested: tuple[int, ...],
        head: nn.Module | None,
        target: nn.Module,
        projection: nn.Module | None,
    ):
        self.wiring, self.settings, self.runner, self.head = wiring, settings, runner, head
        self._requested = requested  # withdrawn at release: SALT may keep the shared runner going
        self._projection = projection
        self._guard = BatchGuard(wiring.shape, SECTION)
        self._probe = GradientProbe()
        self._hooked_grad = True  # whether the hooked output of the last forward carried a gradient
        self.capture = OutputCapture(target, transform=self._watch)
        self.collate: BridgedCollate | None = None
        self._loader: DataLoader | None = None
        self.teacher_hidden: torch.Tensor | None = None
        self._teacher_final: torch.Tensor | None = None
        self.align_mask: torch.Tensor | None = None
        self._stats: torch.Tensor | None = None

    @classmethod
    def start(cls, state: State, wiring: Wiring, settings: Settings, projection: nn.Module | None) -> Guidance:
        """Load (or share) the teacher, hook the student block and, across tokenizers, bridge the loader."""
        layers = {wiring.teacher_layer: wiring.teacher_width}
        measure_ce = bool(settings.ce_tokens) and wiring.bridge is None  # CEs over different tokens do not compare
        if measure_ce:
            layers.setdefault(wiring.final_layer, -1)  # the final-norm state feeds the LM head of let/teacher_ce
        runner = start_teacher(
            wiring.teacher_path,
            DTYPES[settings.teacher_dtype],
            state_device(state),
            wiring.shape.num_layers,
            layers,
            owner=state,
            key=f'{SECTION}.teacher',
            packed=wiring.packed,
        )
        head = runner.model.get_output_embeddings() if measure_ce else None
        target = find_module(state.model, wiring.student_path, key=f'{SECTION}.student_module')
        if projection is not None:
            # FSDP1 swaps in its wrapper; DDP (wrapped after INIT) hides the attribute behind ``module.``
            projection = find_module(state.model, 'let_projection', key='let_projection')
        guidance = cls(wiring, settings, runner, tuple(layers), head, target, projection)
        loader = state.train_dataloader
        if wiring.bridge is not None and isinstance(loader, DataLoader):
            if not isinstance(loader.collate_fn, BridgedCollate):
                # Re-tokenize in the DataLoader (its workers, off the training loop) by wrapping its collate.
                guidance.collate = BridgedCollate(loader.collate_fn, wiring.bridge)  # type: ignore[arg-type]
                loader.collate_fn = guidance.collate
                guidance._loader = loader
        return guidance

    # Per microbatch -------------------------------------------------------------------

    def _watch(self, hidden: torch.Tensor) -> torch.Tensor:
        """The student's hooked output as the alignment sees it: gradient-probed, then projected."""
        self._hooked_grad = hidden.requires_grad
        watched = self._probe.watch(hidden)
        return watched if self._projection is None else self._projection(watched)

    def before_forward(self, batch: Any) -> None:
        """Run the teacher on this microbatch and arm the student hook."""
        if self.wiring.bridge is not None:
            self._run_bridged_teacher(batch)
        else:
            inputs = teacher_inputs(batch, self.wiring.packed)
            self._guard.check(inputs['input_ids'])
            outputs = self.runner(**inputs)
            self.teacher_hidden = outputs[self.wiring.teacher_layer]
            self._teacher_final = outputs.get(self.wiring.final_layer) if self.head is not None else None
            self.align_mask = batch.get('attention_mask')
        self.capture.arm()

    def _run_bridged_teacher(self, batch: Any) -> None:
        """The teacher on its own tokens, read back at each student position (masked where it has none)."""
        student_ids = batch['input_ids']
        mapped = {key: batch.get(PREFIX + key) for key in BRIDGE_KEYS}
        if any(v is None for v in mapped.values()) or mapped['teacher_index'].shape != student_ids.shape:
            # Not from the bridged loader (a custom loader, or a batch truncated after it): map it here.
            mapped = {k: v.to(student_ids.device) for k, v in self.wiring.bridge(student_ids.cpu()).items()}  # type: ignore[misc]
        outputs = self.runner(
            mapped['teacher_input_ids'],
            mapped['teacher_attention_mask'],
            mapped['teacher_sequence_id'] if self.wiring.packed else None,
        )
        hidden = outputs[self.wiring.teacher_layer]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        valid = mapped['teacher_valid'].bool()
        self.teacher_hidden = torch.where(valid[..., None], hidden[rows, mapped['teacher_index']], 0.0)
        self._teacher_final = None  # the teacher's CE is over its own tokens: not comparable
        mask = batch.get('attention_mask')
        self.align_mask = valid if mask is None else valid & mask.bool()

    def after_forward(self) -> None:
        self.capture.disarm()

    def alignment(self, state: State) -> torch.Tensor:
        """This microbatch's alignment loss (before λ); its statistics are added to the batch's."""
        student = self.capture.pop()
        if student is None or self.teacher_hidden is None:
            raise RuntimeError(f'LET: the student module {self.wiring.student_path} did not run in this forward.')
        if not self._hooked_grad and torch.is_grad_enabled() and state.model.training:
            raise ValueError(self._no_gradient(state.model))  # before the first step: the pull would be 0
        teacher = self.teacher_hidden
        if self.settings.teacher_norm == 'standardize':
            teacher = standardize_features(teacher, self.align_mask)
        if self.settings.projection in RESIZES:
            teacher = resize_width(teacher.float(), student.shape[-1], self.settings.projection)
        align, cosine = alignment_loss(student, teacher, self.align_mask, kind=self.settings.loss)
        stats = torch.zeros(9, device=cosine.device)
        stats[COS], stats[MICROBATCHES] = cosine, 1.0
        stats[TEACHER_NONFINITE] = (~torch.isfinite(self.teacher_hidden).all()).float()
        if self._teacher_final is not None:
            stats[TEACHER_NLL : CE_COUNT + 1] = self._sampled_ce(state)
        self._stats = stats if self._stats is None else self._stats + stats
        self.teacher_hidden = self._teacher_final = None
        return align

    def _no_gradient(self, model: nn.Module) -> str:
        """Why the hooked output carries no gradient in training, and the fix."""
        path = self.wiring.student_path
        block = reentrant_block(model, path)
        where = (
            f'it runs inside {block}, which is activation-checkpointed reentrantly (its forward runs without '
            f'autograd). Set {SECTION}.student_module: {block} (the checkpointed block itself) or a module outside '
            'the checkpointed region, or set fsdp_config.activation_checkpointing_reentrant: false'
            if block is not None
            else 'it runs where autograd is off (e.g. inside a reentrant activation checkpoint) or every parameter '
            f'up to it is frozen. Set {SECTION}.student_module to a module whose output carries the gradient, or set '
            'fsdp_config.activation_checkpointing_reentrant: false'
        )
        return (
            f'{SECTION}.student_module={path}: its output carries no gradient in training, so the '
            f'alignment would train nothing (a constant λ·align): {where}.'
        )

    @torch.no_grad()
    def _sampled_ce(self, state: State) -> torch.Tensor:
        """``[teacher nll sum, student nll sum, count]`` on ``ce_tokens`` positions of this microbatch."""
        logits = output_logits(state.outputs)
        rows, targets = sampled_positions(state.batch['labels'], self.settings.ce_tokens, int(state.timestamp.batch))
        final = self._teacher_final.reshape(-1, self._teacher_final.shape[-1])  # type: ignore[union-attr]
        teacher_nll, count = token_nll(self.head(final.index_select(0, rows)), targets)  # type: ignore[misc]
        student_nll, _ = token_nll(logits.reshape(-1, logits.shape[-1]).index_select(0, rows), targets)
        return torch.stack([teacher_nll, student_nll, count])

    # Per batch and at the end ---------------------------------------------------------

    def take_stats(self) -> tuple[torch.Tensor, bool] | None:
        """This batch's 9 sums (indices ``COS`` … ``DOT``) and whether the gradient probe filled the last three
        (a backward reached the hooked output); ``None`` without a microbatch. Resets them."""
        stats, self._stats = self._stats, None
        grads = self._probe.take()
        if stats is None:
            return None
        if grads is not None:
            stats[REST2 : DOT + 1] = grads
        return stats, grads is not None

    def release(self) -> None:
        """Unhook, withdraw from (and maybe free) the teacher, and let the loader pass batches through."""
        self.capture.remove()
        self.runner.release(self._requested)
        if self.collate is not None:
            # The iterators made so far (and their workers) keep the wrapped collate: it now passes batches through.
            self.collate.release()
            self._loader.collate_fn = self.collate.collate_fn  # type: ignore[union-attr]
        self.teacher_hidden = self._teacher_final = self.align_mask = self._stats = None
        log.info('LET: teacher released.')
