"""LET (Late-to-Early Training) as a Composer algorithm.

Add one block to an llm-foundry YAML and launch as always
(``composer scripts/train.py <config>.yaml``)::

    algorithms:
      let:
        teacher: HuggingFaceTB/SmolLM2-135M  # hub id or local folder (required)
        strategy: L2E            # L2E L2M L2L M2E M2M M2L
        lambda0: 0.1             # λ0
        stop: 0.25dur            # S_stop: 2000ba, 5e8tok, 1ep, 0.25dur
        schedule: linear         # linear (paper) | constant | cosine | step
        projection: interpolate  # interpolate (paper) | linear | none
        loss: cosine             # cosine (paper) | mse | smooth_l1
        teacher_dtype: bf16      # bf16 | fp16 | fp32
        # student_layer: 3       # block index, overrides the strategy's student side
        # teacher_layer: -1      # block index, overrides the strategy's teacher side
        # student_module: model.model.layers.3  # dotted path, overrides block discovery
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from composer.core import Algorithm, Event, State, Time
from composer.loggers import Logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from composer_let.alignment import LOSSES, PROJECTIONS, alignment_loss, interpolate_width
from composer_let.layers import STRATEGIES, find_block_list, find_module, resolve_layer, strategy_layers
from composer_let.losses import with_extra_loss
from composer_let.schedule import SCHEDULES, schedule_weight
from composer_let.teacher import DTYPES, TeacherRunner, acquire_teacher, check_input_ids, open_teacher, release_teacher
from composer_let.timing import before_stop_at_fit_start, parse_stop, progress_towards

log = logging.getLogger(__name__)

_KEYS = (
    'teacher',
    'strategy',
    'lambda0',
    'stop',
    'schedule',
    'projection',
    'loss',
    'teacher_dtype',
    'student_layer',
    'teacher_layer',
    'student_module',
)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f'algorithms.let.{key}={value!r} is not one of {", ".join(choices)}.')
    return value


def student_hidden_size(model: nn.Module) -> int:
    """Width of the student's residual stream, read from its config."""
    for candidate in (model, getattr(model, 'model', None)):
        config = getattr(candidate, 'config', None)
        for attr in ('hidden_size', 'd_model', 'n_embd'):
            if isinstance(getattr(config, attr, None), int):
                return getattr(config, attr)
    raise ValueError(f'Cannot read the hidden size of {type(model).__name__} from its config.')


def student_tokenizer(model: nn.Module) -> Any:
    return getattr(model, 'tokenizer', None)


class LET(Algorithm):
    """Late-to-Early Training: a frozen small teacher's late features guide an early student block.

    Per microbatch ``L = L_CE + λ(s) · L_align`` with
    ``L_align = -mean_tokens cos(h_S^k, h_T)`` over real (non-padding) tokens and
    ``λ(s) = λ0 · max(0, (S_stop - s) / S_stop)``, ``s`` counted in ``stop``'s unit.

    Layers. Teacher Late is its last block after the final norm (HF's
    ``hidden_states[-1]``), Middle is block ``L_T // 2 - 1``. Student Early is block
    ``max(0, L_S // 4 - 1)``, Middle ``L_S // 2 - 1``, Late the last block (its raw
    output, before the final norm). ``student_layer``/``teacher_layer`` (negative counts
    from the end) override the strategy; ``student_module`` names the module to hook.

    Widths. ``interpolate`` resizes each teacher vector to the student width by 1-D
    linear interpolation (parameter-free, the paper's); ``linear`` learns a
    ``d_S -> d_T`` map that lives on the model as ``let_projection`` (trained by the
    run's optimizer and saved in checkpoints); ``none`` needs equal widths.

    Lifecycle. The teacher's config and tokenizer are checked at ``Event.INIT``; its
    weights are loaded at ``Event.FIT_START`` (after any checkpoint is loaded), and only
    if ``s < S_stop`` then: frozen, off the Composer model, never wrapped, never in the
    optimizer or a checkpoint. Once ``λ`` reaches 0 (or at ``FIT_END``) the student
    hook is removed and the teacher freed.
    """

    def __init__(
        self,
        teacher: str | None = None,
        strategy: str = 'L2E',
        lambda0: float = 0.1,
        stop: str | int | Time = '0.25dur',
        schedule: str = 'linear',
        projection: str = 'interpolate',
        loss: str = 'cosine',
        teacher_dtype: str = 'bf16',
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        student_module: str | None = None,
        **unknown: Any,
    ):
        if unknown:
            raise ValueError(
                f'Unknown key(s) under algorithms.let: {", ".join(sorted(unknown))}. Valid keys: {", ".join(_KEYS)}.',
            )
        if not isinstance(teacher, str) or not teacher.strip():
            raise ValueError('algorithms.let.teacher is required: a Hugging Face hub id or a local model folder.')
        self.teacher = teacher
        self.strategy = _choice('strategy', strategy, STRATEGIES)
        self.schedule = _choice('schedule', schedule, SCHEDULES)
        self.projection = _choice('projection', projection, PROJECTIONS)
        self.loss = _choice('loss', loss, LOSSES)
        self.teacher_dtype = _choice('teacher_dtype', teacher_dtype, tuple(DTYPES))
        if isinstance(lambda0, bool) or not isinstance(lambda0, (int, float)) or not 0 <= lambda0 < math.inf:
            raise ValueError(f'algorithms.let.lambda0={lambda0!r} must be a finite number >= 0 (the paper uses 0.1).')
        self.lambda0 = float(lambda0)
        self.stop = parse_stop(stop, key='algorithms.let.stop')
        for key, value in (('student_layer', student_layer), ('teacher_layer', teacher_layer)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f'algorithms.let.{key}={value!r} must be an integer block index.')
        if student_module is not None and student_layer is not None:
            raise ValueError('Set either algorithms.let.student_module or student_layer, not both.')
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.student_module = student_module

        self.weight = 0.0  # λ for the current batch
        self.active = False  # teacher loaded and hook in place
        self._teacher_path = ''
        self._teacher_layer_index = -1
        self._student_path = ''
        self._teacher_shape: Any = None
        self._runner: TeacherRunner | None = None
        self._hook: Any = None
        self._projection: nn.Linear | None = None
        self._armed = False
        self._student_hidden: torch.Tensor | None = None
        self._teacher_hidden: torch.Tensor | None = None
        self._checked_length = 0  # longest batch checked against the teacher (lengths grow: seq_length_warmup)
        self._cosines: list[torch.Tensor] = []
        self._teacher_finite: list[torch.Tensor] = []  # per microbatch, read only if the cosine is not finite

    # Composer wiring -----------------------------------------------------------------

    def match(self, event: Event, state: State) -> bool:
        return event in (
            Event.INIT,
            Event.FIT_START,
            Event.BATCH_START,
            Event.BEFORE_FORWARD,
            Event.AFTER_FORWARD,
            Event.AFTER_LOSS,
            Event.AFTER_TRAIN_BATCH,
            Event.BATCH_END,
            Event.FIT_END,
        )

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.FIT_START and not self.active:
            if before_stop_at_fit_start(self.stop, state, key='algorithms.let.stop'):
                self._start(state)
            else:
                log.info('LET: the run is at or past stop=%s; the teacher is not loaded.', self.stop)
        elif event == Event.BATCH_START:
            progress = progress_towards(self.stop, state)
            self.weight = schedule_weight(self.schedule, self.lambda0, progress)
            if self.active and progress >= 1:
                self._release()
        elif event == Event.BEFORE_FORWARD and self.active:
            self._run_teacher(state.batch)
            self._student_hidden = None
            self._armed = True
        elif event == Event.AFTER_FORWARD:
            self._armed = False
        elif event == Event.AFTER_LOSS:
            self._add_alignment(state)
        elif event == Event.AFTER_TRAIN_BATCH and not self.active and self._projection is not None:
            # Idle after stop: drop DDP's zero gradient so the optimizer leaves the projection alone (no Adam
            # momentum, no weight decay), exactly as in one process where it gets no gradient at all.
            for param in self._projection.parameters():
                param.grad = None
        elif event == Event.BATCH_END:
            metrics = {'let/lambda': self.weight}
            if self._cosines:
                metrics['let/cosine'] = torch.stack(self._cosines).mean().item()  # the one sync per batch
                self._cosines.clear()
                if not math.isfinite(metrics['let/cosine']):
                    raise FloatingPointError(self._not_finite(int(state.timestamp.batch)))  # batches done
                self._teacher_finite.clear()
            logger.log_metrics(metrics)
        elif event == Event.FIT_END:
            self._release()  # a later fit() on the same Trainer loads it again if still before stop

    # Steps ---------------------------------------------------------------------------

    def _init(self, state: State) -> None:
        self._teacher_path, _, shape = open_teacher(self.teacher, 'algorithms.let', student_tokenizer(state.model))
        self._teacher_shape = shape
        default_teacher, default_student = strategy_layers(self.strategy, shape.num_layers, 1)
        teacher_index = default_teacher if self.teacher_layer is None else self.teacher_layer
        self._teacher_layer_index = resolve_layer(teacher_index, shape.num_layers, 'algorithms.let.teacher_layer')

        if self.student_module is not None:
            find_module(state.model, self.student_module, key='algorithms.let.student_module')
            self._student_path = self.student_module
        else:
            path, blocks = find_block_list(state.model)
            _, default_student = strategy_layers(self.strategy, shape.num_layers, len(blocks))
            student_index = default_student if self.student_layer is None else self.student_layer
            index = resolve_layer(student_index, len(blocks), 'algorithms.let.student_layer')
            self._student_path = f'{path}.{index}'

        width_s = student_hidden_size(state.model)
        if self.projection == 'none' and width_s != shape.hidden_size:
            raise ValueError(
                f'algorithms.let.projection=none needs equal widths, but the student is {width_s} wide and the '
                f'teacher {shape.hidden_size}. Use projection: interpolate (the paper) or linear.',
            )
        if self.projection == 'linear':
            self._add_projection(state, width_s, shape.hidden_size)
        log.info(
            'LET: teacher %s block %d -> student %s, λ0=%s until %s (%s).',
            self._teacher_path,
            self._teacher_layer_index,
            self._student_path,
            self.lambda0,
            self.stop,
            self.schedule,
        )

    def _add_projection(self, state: State, width_s: int, width_t: int) -> None:
        """Put a learned ``d_S -> d_T`` map on the model so DDP/FSDP, the optimizer and checkpoints see it."""
        device = next(state.model.parameters()).device
        # Composer seeds every rank differently (seed + rank); FSDP keeps each rank's shard as is, so draw the
        # initial weight from the run's rank-zero seed: the same on every rank and for any world size.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.rank_zero_seed)
            self._projection = nn.Linear(width_s, width_t, bias=False).to(device)
        state.model.let_projection = self._projection
        if not state.optimizers:
            raise ValueError('algorithms.let.projection=linear needs an optimizer to train the projection.')
        optimizer = state.optimizers[0] if isinstance(state.optimizers, (list, tuple)) else state.optimizers
        optimizer.add_param_group({'params': list(self._projection.parameters())})

    def _start(self, state: State) -> None:
        device = state.device._device
        shape = self._teacher_shape
        self._runner = acquire_teacher(
            self._teacher_path,
            DTYPES[self.teacher_dtype],
            device,
            shape.num_layers,
            owner=state,
        )
        self._runner.request(self._teacher_layer_index)
        probe = torch.zeros(1, 2, dtype=torch.long, device=device)
        width = self._runner(probe)[self._teacher_layer_index].shape[-1]
        if width != self._teacher_shape.hidden_size:
            raise ValueError(
                f'algorithms.let.teacher={self.teacher!r}: block {self._teacher_layer_index} is {width} wide, '
                f'its config says {self._teacher_shape.hidden_size}.',
            )
        target = find_module(state.model, self._student_path, key='algorithms.let.student_module')
        self._hook = target.register_forward_hook(self._capture)
        if self._projection is not None:
            # FSDP1 swaps in its wrapper; DDP (wrapped after INIT) hides the attribute behind ``module.``
            self._projection = find_module(state.model, 'let_projection', key='let_projection')
        self.active = True

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        """Keep the block's first output of this microbatch; returning None leaves the output as is."""
        if not self._armed or self._student_hidden is not None:
            return
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if self._projection is not None:
            hidden = self._projection(hidden)  # inside the forward, where FSDP has the weight gathered
        self._student_hidden = hidden

    def _run_teacher(self, batch: Any) -> None:
        input_ids = batch['input_ids']
        mask = batch.get('attention_mask')
        if input_ids.shape[1] > self._checked_length:
            self._check_batch(input_ids)
        self._teacher_hidden = self._runner(input_ids, mask)[self._teacher_layer_index]  # type: ignore[misc]

    def _check_batch(self, input_ids: torch.Tensor) -> None:
        check_input_ids(input_ids, self._teacher_shape)
        self._checked_length = input_ids.shape[1]

    def _add_alignment(self, state: State) -> None:
        if self.active:
            if self._student_hidden is None or self._teacher_hidden is None:
                raise RuntimeError(f'LET: the student module {self._student_path} did not run in this forward.')
            teacher = self._teacher_hidden
            if self.projection == 'interpolate':
                teacher = interpolate_width(teacher.float(), self._student_hidden.shape[-1])
            mask = state.batch.get('attention_mask') if isinstance(state.batch, dict) else None
            align, cosine = alignment_loss(self._student_hidden, teacher, mask, kind=self.loss)
            self._teacher_finite.append(torch.isfinite(self._teacher_hidden).all())
            self._student_hidden = self._teacher_hidden = None
            self._cosines.append(cosine)
            state.loss = with_extra_loss(state.loss, 'let_align', align, self.weight)
        elif self._projection is not None and isinstance(state.model, DistributedDataParallel):
            # DDP expects a gradient for every parameter each step: give the idle projection zeros.
            idle = sum(p.sum() for p in self._projection.parameters()) * 0.0
            state.loss = with_extra_loss(state.loss, 'let_align', idle, 1.0)

    def _not_finite(self, batch: int) -> str:
        """Why the alignment turned inf/NaN (raised at BATCH_END, before the batch's checkpoint is written)."""
        if not bool(torch.stack(self._teacher_finite).all()):
            return (
                f"LET: the teacher's hidden states are inf/NaN in batch {batch}: {self.teacher} overflows in "
                f'teacher_dtype={self.teacher_dtype}. Set algorithms.let.teacher_dtype: bf16 (the range of fp32) '
                'or fp32.'
            )
        return (
            f'LET: the alignment is inf/NaN in batch {batch} while the teacher is finite: the student block '
            f'{self._student_path} diverged. Lower the learning rate or algorithms.let.lambda0.'
        )

    def _release(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._runner is not None:
            release_teacher(self._runner)
            self._runner = None
            log.info('LET: teacher released.')
        self.active = False
        self._student_hidden = self._teacher_hidden = None
