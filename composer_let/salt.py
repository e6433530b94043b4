"""SALT (small-LM-assisted training) as a Composer algorithm: soft labels from a small LM, early only.

Add one block to an llm-foundry YAML and launch as always
(``composer scripts/train.py <config>.yaml``)::

    algorithms:
      salt:
        teacher: HuggingFaceTB/SmolLM2-135M  # hub id or local folder (required)
        weight: 0.5              # ω: L = (1 − ω)·CE(data) + ω·KD(teacher soft labels)
        temperature: 1.0         # τ of the teacher's softmax
        stop: 0.2dur             # n_KD: after it, plain CE only; the teacher is released
        schedule: constant       # constant (paper: abrupt switch) | linear (ω decays to 0 at stop) | cosine | step
        teacher_dtype: bf16      # bf16 | fp16 | fp32
        chunk_tokens: 1024       # tokens per chunk of the KD loss (memory bound)

With ``let`` beside it and the same ``teacher`` folder and ``teacher_dtype``, both share
one loaded teacher and ONE teacher forward per microbatch (LET reads a hidden state,
SALT the final-norm hidden state through the teacher's LM head).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from composer.core import Algorithm, Event, State, Time
from composer.loggers import Logger
from torch import nn

from composer_let import config as cfg
from composer_let.distill import distillation_loss, head_rescaling, next_token_mask
from composer_let.losses import with_mixed_loss
from composer_let.schedule import SCHEDULES, schedule_weight
from composer_let.teacher import (
    DTYPES,
    BatchGuard,
    TeacherRunner,
    TeacherShape,
    layer_widths,
    open_teacher,
    start_teacher,
    state_device,
    student_masks_documents,
    teacher_inputs,
)
from composer_let.timing import before_stop_at_fit_start, parse_stop, progress_towards

log = logging.getLogger(__name__)
SECTION = 'algorithms.salt'
SALT_TOKENIZER_FIX = (
    "SALT distils the teacher's next-token distribution, which is over the teacher's vocabulary, so the student "
    "needs the same tokenizer (logit distillation across vocabularies is not supported; LET's cross_tokenizer "
    "aligns hidden states instead). Set tokenizer.name to the teacher's folder."
)


def student_vocab_size(model: nn.Module) -> int | None:
    """Number of logits the student produces, read from its config (MPT and Hugging Face models)."""
    for candidate in (model, getattr(model, 'model', None)):
        size = getattr(getattr(candidate, 'config', None), 'vocab_size', None)
        if isinstance(size, int):
            return size
    return None


class SALT(Algorithm):
    """Small-LM soft-label distillation for the first ``stop`` of training, then plain CE.

    Per microbatch ``L = (1 − ω(s)) · CE + ω(s) · KD`` with ``KD`` the token-level
    cross-entropy from the teacher's ``softmax(z_T / τ)`` to the student's ``softmax(z_S)``,
    averaged over exactly the positions llm-foundry's CE averages over
    (:func:`composer_let.distill.next_token_mask`). ``ω(s)`` follows ``schedule`` and is 0
    from ``stop`` on. Other loss terms (LET's ``λ · align``) are added untouched.

    Vocabularies: the student must use the teacher's tokenizer and have at least as many
    logits; padded student logits stay in its softmax with teacher probability 0.

    Lifecycle (as ``let``): config, tokenizer and vocabularies are checked at
    ``Event.INIT``, ``stop`` against ``max_duration`` at ``Event.FIT_START`` (Composer sets
    it after INIT); the teacher is loaded then, after any checkpoint is loaded, and only if
    ``s < stop``; it is released at the first batch with ``s >= stop`` or at ``FIT_END``. It is never
    part of the Composer model, the optimizer or checkpoints. SALT keeps no state of its
    own: ``ω`` is a function of the resumed timestamp, so resumption is exact.

    Logs ``salt/weight`` every batch and, while active, ``loss/train/salt_kd`` (the
    model's CE stays ``loss/train/ce``, the objective ``loss/train/total``).
    """

    def __init__(
        self,
        teacher: str | None = None,
        weight: float = 0.5,
        temperature: float = 1.0,
        stop: str | int | Time = '0.2dur',
        schedule: str = 'constant',
        teacher_dtype: str = 'bf16',
        chunk_tokens: int = 1024,
        **unknown: Any,
    ):
        cfg.check_known(SECTION, SALT.__init__, unknown)
        self.teacher = cfg.teacher_id(SECTION, teacher)
        self.schedule = cfg.choice(SECTION, 'schedule', schedule, SCHEDULES)
        self.teacher_dtype = cfg.choice(SECTION, 'teacher_dtype', teacher_dtype, tuple(DTYPES))
        self.chunk_tokens = cfg.integer(SECTION, 'chunk_tokens', chunk_tokens, low=1)
        self.kd_weight0 = cfg.number(SECTION, 'weight', weight, 0.0, 1.0)
        self.temperature = cfg.number(SECTION, 'temperature', temperature, 0.0, math.inf, low_open=True)
        self.stop = parse_stop(stop, key=f'{SECTION}.stop')

        self.kd_weight = 0.0  # ω for the current batch
        self.active = False  # teacher loaded
        self._teacher_path = ''
        self._shape: TeacherShape | None = None
        self._final_width = -1
        self._packed = False
        self._runner: TeacherRunner | None = None
        self._head: nn.Module | None = None
        self._guard: BatchGuard | None = None
        self._teacher_hidden: torch.Tensor | None = None

    # Composer wiring -----------------------------------------------------------------

    def match(self, event: Event, state: State) -> bool:
        return event in (
            Event.INIT,
            Event.FIT_START,
            Event.BATCH_START,
            Event.BEFORE_FORWARD,
            Event.AFTER_LOSS,
            Event.BATCH_END,
            Event.FIT_END,
        )

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.FIT_START and not self.active:
            if before_stop_at_fit_start(self.stop, state, key=f'{SECTION}.stop'):
                self._start(state)
            else:
                log.info('SALT: resumed at or past stop=%s; the teacher is not loaded.', self.stop)
        elif event == Event.BATCH_START:
            progress = progress_towards(self.stop, state)
            self.kd_weight = schedule_weight(self.schedule, self.kd_weight0, progress)
            if self.active and progress >= 1:
                self._release()
        elif event == Event.BEFORE_FORWARD and self.active:
            self._run_teacher(state.batch)
        elif event == Event.AFTER_LOSS and self.active:
            self._add_distillation(state)
        elif event == Event.BATCH_END:
            logger.log_metrics({'salt/weight': self.kd_weight})
        elif event == Event.FIT_END:
            self._release()  # a later fit() on the same Trainer loads it again if still before stop

    # Steps ---------------------------------------------------------------------------

    def _init(self, state: State) -> None:
        log.info('SALT: %s', self.check(state.model))

    def check(self, model: nn.Module) -> dict[str, Any]:
        """INIT's checks against the student ``model`` (teacher config, tokenizer, vocabularies, widths)."""
        tokenizer = getattr(model, 'tokenizer', None)
        self._teacher_path, config, self._shape = open_teacher(self.teacher, SECTION, tokenizer, SALT_TOKENIZER_FIX)
        transforms = head_rescaling(config)
        if transforms:
            raise ValueError(
                f'{SECTION}.teacher={self.teacher!r} rescales its logits outside the LM head '
                f'({", ".join(transforms)}), which SALT does not reproduce. Use a teacher without it (Llama, SmolLM).',
            )
        vocab_s = student_vocab_size(model)
        if vocab_s is not None and vocab_s < self._shape.vocab_size:
            raise ValueError(
                f'{SECTION}: the student has {vocab_s} logits but the teacher {self._shape.vocab_size}; '
                f'soft labels need every teacher token. Set model.vocab_size >= {self._shape.vocab_size}.',
            )
        final = self._shape.num_layers - 1
        self._final_width = layer_widths(config, [final], SECTION)[final]
        self._packed = student_masks_documents(model)
        return {
            'teacher': self._teacher_path,
            'teacher_layers': self._shape.num_layers,
            'teacher_width': self._final_width,
            'teacher_vocab': self._shape.vocab_size,
            'student_vocab': vocab_s,
            'packed_documents': self._packed,
            'weight': self.kd_weight0,
            'temperature': self.temperature,
            'stop': str(self.stop),
            'schedule': self.schedule,
        }

    def _start(self, state: State) -> None:
        shape = self._shape
        assert shape is not None
        final = shape.num_layers - 1
        runner = start_teacher(
            self._teacher_path,
            DTYPES[self.teacher_dtype],
            state_device(state),
            shape.num_layers,
            {final: self._final_width},  # the final-norm hidden state; the LM head runs inside the KD loss
            owner=state,
            key=f'{SECTION}.teacher',
            packed=self._packed,
        )
        head = runner.model.get_output_embeddings()
        if head is None or getattr(head, 'weight', None) is None or head.weight.shape[-1] != self._final_width:
            runner.release([final])
            raise ValueError(
                f'{SECTION}.teacher={self.teacher!r} has no LM head mapping its {self._final_width}-wide final '
                'hidden state to logits (get_output_embeddings()); SALT needs a causal LM with one.',
            )
        self._runner, self._head = runner, head
        self._guard = BatchGuard(shape, SECTION)
        self.active = True

    def _run_teacher(self, batch: Any) -> None:
        assert self._runner is not None and self._guard is not None and self._shape is not None
        if 'labels' not in batch:
            raise ValueError(f'{SECTION} needs a causal-LM batch with labels (llm-foundry text loaders).')
        inputs = teacher_inputs(batch, self._packed)
        self._guard.check(inputs['input_ids'])
        self._teacher_hidden = self._runner(**inputs)[self._shape.num_layers - 1]

    def _add_distillation(self, state: State) -> None:
        if self._teacher_hidden is None:
            raise RuntimeError('SALT: the teacher did not run for this microbatch (BEFORE_FORWARD was skipped).')
        logits = state.outputs['logits'] if isinstance(state.outputs, dict) else state.outputs.logits
        kd = distillation_loss(
            logits,
            self._teacher_hidden,
            self._head,  # type: ignore[arg-type]
            next_token_mask(state.batch['labels']),
            temperature=self.temperature,
            chunk_tokens=self.chunk_tokens,
        )
        self._teacher_hidden = None
        state.loss = with_mixed_loss(state.loss, 'salt_kd', kd, self.kd_weight)

    def _release(self) -> None:
        if self._runner is not None:
            self._runner.release([self._runner.num_layers - 1])  # LET may keep the shared teacher, not this layer
            self._runner = self._head = None
            log.info('SALT: teacher released.')
        self.active = False
        self._teacher_hidden = None
