"""LET (Late-to-Early Training) as a Composer algorithm.

Add one block to an llm-foundry YAML and launch as always
(``composer scripts/train.py <config>.yaml``)::

    algorithms:
      let:
        teacher: HuggingFaceTB/SmolLM2-135M  # hub id or local folder (required)
        strategy: L2E            # L2E L2M L2L M2E M2M M2L
        lambda0: 0.1             # λ0 (strength: absolute, the paper's)
        stop: 0.25dur            # S_stop: 2000ba, 5e8tok, 1ep, 0.25dur, or auto (ends when it stops helping)
        # stop_max: 0.5dur       # with stop: auto, the latest the guidance may run (default 0.5dur)
        # stop_horizon: 0        # with stop: auto, fire once the student passes its teacher; 1: once on course to
        # strength: relative     # absolute (λ0, the paper's) | relative (grad_ratio)
        # grad_ratio: 0.1        # with strength: relative: target ‖λ·∇_h L_align‖ / ‖∇_h L_rest‖
        schedule: linear         # linear (paper) | constant | cosine | step
        projection: interpolate  # interpolate (paper) | pool | linear | none
        teacher_norm: none       # none (paper) | standardize (each teacher feature z-scored over the batch's tokens)
        loss: cosine             # cosine (paper) | mse | smooth_l1
        teacher_dtype: bf16      # bf16 | fp16 | fp32
        ce_tokens: 256           # positions per microbatch for let/teacher_ce and let/student_ce (0: off)
        # cross_tokenizer: true  # the teacher may use another tokenizer: rows are re-tokenized for it
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
from composer.utils import dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from composer_let import config as cfg
from composer_let import guidance as g
from composer_let.alignment import LOSSES, PROJECTIONS, TEACHER_NORMS
from composer_let.control import AutoStop, RelativeStrength
from composer_let.diagnostics import gradient_stats
from composer_let.guidance import Guidance, Settings
from composer_let.layers import STRATEGIES
from composer_let.losses import with_extra_loss
from composer_let.projection import SeededLinear, attach_projection
from composer_let.schedule import SCHEDULES, schedule_weight
from composer_let.teacher import DTYPES
from composer_let.timing import check_stop_within, progress_towards
from composer_let.wiring import SECTION, Wiring, wire

__all__ = ['LET', 'SeededLinear']
log = logging.getLogger(__name__)
DEFAULT_LAMBDA0 = 0.1
DEFAULT_STOP_MAX = '0.5dur'
# strength: relative measures the alignment's gradient per unit of λ on its first batch with this λ.
RELATIVE_FIRST_WEIGHT = 1e-3


class LET(Algorithm):
    def __init__(
        self,
        teacher: str | None = None,
        strategy: str = 'L2E',
        lambda0: float | None = None,
        stop: str | int | Time = '0.25dur',
        schedule: str = 'linear',
        projection: str = 'interpolate',
        teacher_norm: str = 'none',
        loss: str = 'cosine',
        teacher_dtype: str = 'bf16',
        student_layer: int | None = None,
        teacher_layer: int | None = None,
        student_module: str | None = None,
        ce_tokens: int = 256,
        stop_max: str | int | Time | None = None,
        stop_horizon: float | None = None,
        strength: str = 'absolute',
        grad_ratio: float | None = None,
        cross_tokenizer: bool = False,
        **unknown: Any,
    ):
        cfg.check_known(SECTION, LET.__init__, unknown)
        self.teacher = cfg.teacher_id(SECTION, teacher)
        self.strategy = cfg.choice(SECTION, 'strategy', strategy, STRATEGIES)
        self.schedule = cfg.choice(SECTION, 'schedule', schedule, SCHEDULES)
        self.projection = cfg.choice(SECTION, 'projection', projection, PROJECTIONS)
        self.teacher_norm = cfg.choice(SECTION, 'teacher_norm', teacher_norm, TEACHER_NORMS)
        self.loss = cfg.choice(SECTION, 'loss', loss, LOSSES)
        self.teacher_dtype = cfg.choice(SECTION, 'teacher_dtype', teacher_dtype, tuple(DTYPES))
        self.strength, self.lambda0, self.grad_ratio = cfg.strength(
            SECTION, strength, lambda0, grad_ratio, DEFAULT_LAMBDA0
        )
        self.auto_stop, self.stop, self.stop_horizon = cfg.stop(
            SECTION, stop, stop_max, stop_horizon, DEFAULT_STOP_MAX, AutoStop.horizon
        )
        self.student_layer = cfg.integer(SECTION, 'student_layer', student_layer, optional=True)
        self.teacher_layer = cfg.integer(SECTION, 'teacher_layer', teacher_layer, optional=True)
        if student_module is not None and student_layer is not None:
            raise ValueError(f'Set either {SECTION}.student_module or student_layer, not both.')
        self.student_module = student_module
        self.ce_tokens = cfg.integer(SECTION, 'ce_tokens', ce_tokens, low=0)
        if not isinstance(cross_tokenizer, bool):
            raise ValueError(f'{SECTION}.cross_tokenizer={cross_tokenizer!r} must be true or false.')
        self.cross_tokenizer = cross_tokenizer
        if self.auto_stop and (self.ce_tokens == 0 or cross_tokenizer):
            raise ValueError(
                f"{SECTION}.stop: auto decides from the teacher's and the student's CE on the same tokens, "
                f'which {SECTION}.ce_tokens: 0 turns off and cross_tokenizer: true cannot measure (different '
                f'tokens). Keep ce_tokens > 0 (default 256) and the same tokenizer, or set a fixed stop.'
            )
        self.settings = Settings(self.teacher_dtype, self.teacher_norm, self.projection, self.loss, self.ce_tokens)
        self.autostop = AutoStop(horizon=self.stop_horizon) if self.auto_stop else None
        self.relative = RelativeStrength() if self.strength == 'relative' else None
        self.align_weight = 0.0  # λ for the current batch
        self.wiring: Wiring | None = None  # resolved at INIT
        self.projection_module: nn.Module | None = None  # projection: linear, on the model from INIT on
        self.guidance: Guidance | None = None  # the active phase: teacher loaded, hook in place

    @property
    def active(self) -> bool:
        return self.guidance is not None

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
            wiring = self.check(state.model)
            if self.projection == 'linear':
                width_s, width_t = wiring['student_width'], wiring['teacher_width']
                self.projection_module = attach_projection(state, width_s, width_t, f'{SECTION}.projection')
            log.info('LET: %s', wiring)
        elif event == Event.FIT_START and self.guidance is None:
            check_stop_within(self.stop, state.max_duration, key=self._stop_key)
            if self._shape_at(state) > 0:
                self.guidance = Guidance.start(state, self.wiring, self.settings, self.projection_module)  # type: ignore[arg-type]
            else:
                log.info('LET: the run is at or past its stop (%s); the teacher is not loaded.', self._stop_text())
        elif event == Event.BATCH_START:
            shape = self._shape_at(state)
            self.align_weight = self._weight(shape)
            if shape == 0:
                self._release()
        elif event == Event.BEFORE_FORWARD and self.guidance is not None:
            self.guidance.before_forward(state.batch)
        elif event == Event.AFTER_FORWARD and self.guidance is not None:
            self.guidance.after_forward()
        elif event == Event.AFTER_LOSS:
            self._add_alignment(state)
        elif event == Event.AFTER_TRAIN_BATCH and self.guidance is None and self.projection_module is not None:
            # Idle after stop: drop DDP's zero gradient so the optimizer leaves the projection alone (no Adam
            # momentum, no weight decay), exactly as in one process where it gets no gradient at all.
            for param in self.projection_module.parameters():
                param.grad = None
        elif event == Event.BATCH_END:
            logger.log_metrics(self._batch_metrics(int(state.timestamp.batch)))
        elif event == Event.FIT_END:
            self._release()  # a later fit() on the same Trainer loads it again if still before stop

    def check(self, model: nn.Module) -> dict[str, Any]:
        """INIT's checks against the student ``model``, with no side effect on it; returns the wiring.

        ``scripts/estimate.py`` calls this on a weightless student.
        """
        self.wiring = wire(
            model,
            teacher=self.teacher,
            strategy=self.strategy,
            teacher_layer=self.teacher_layer,
            student_layer=self.student_layer,
            student_module=self.student_module,
            ce_tokens=self.ce_tokens,
            projection=self.projection,
            cross_tokenizer=self.cross_tokenizer,
        )
        settings = {'lambda0': self.lambda0, 'stop': str(self.stop), 'schedule': self.schedule}
        return {**self.wiring.summary(), **settings, 'projection': self.projection, 'teacher_norm': self.teacher_norm}

    def _add_alignment(self, state: State) -> None:
        if self.guidance is not None:
            state.loss = with_extra_loss(state.loss, 'let_align', self.guidance.alignment(state), self.align_weight)
        elif self.projection_module is not None and isinstance(state.model, DistributedDataParallel):
            # DDP expects a gradient for every parameter each step: give the idle projection zeros.
            idle = sum(p.sum() for p in self.projection_module.parameters()) * 0.0
            state.loss = with_extra_loss(state.loss, 'let_align', idle, 1.0)

    def _release(self) -> None:
        if self.guidance is not None:
            self.guidance.release()
            self.guidance = None

    # Strength, stop and metrics -------------------------------------------------------

    @property
    def _stop_key(self) -> str:
        return f'{SECTION}.stop_max' if self.auto_stop else f'{SECTION}.stop'

    def _stop_text(self) -> str:
        if self.autostop is None:
            return f'stop={self.stop}'
        fired = self.autostop.fired_at
        return f'stop=auto (stop_max={self.stop}; {"not fired" if fired is None else f"fired at batch {fired}"})'

    def _shape_at(self, state: State) -> float:
        """λ's shape in [0, 1] for the batch about to run: the schedule towards the stop, times auto's ramp."""
        shape = schedule_weight(self.schedule, 1.0, progress_towards(self.stop, state))
        if self.autostop is not None:
            shape *= self.autostop.factor(int(state.timestamp.batch))
        return shape

    def _weight(self, shape: float) -> float:
        """λ for a batch: ``λ0 · shape`` (absolute) or the λ that gives ``grad_ratio · shape`` (relative)."""
        if self.relative is None:
            return self.lambda0 * shape  # type: ignore[operator]
        if shape == 0:
            return 0.0
        weight = self.relative.weight(self.grad_ratio * shape)  # type: ignore[operator]
        return RELATIVE_FIRST_WEIGHT if weight is None else weight

    def _batch_metrics(self, batch: int) -> dict[str, float]:
        """This batch's metrics: its statistics summed over ranks, read with one host sync."""
        metrics = {'let/lambda': self.align_weight}
        taken = None if self.guidance is None else self.guidance.take_stats()
        if taken is None:
            return metrics
        stats, measured_grads = taken
        if dist.get_world_size() > 1:
            dist.all_reduce(stats)  # sums: every rank logs (and acts on) the same whole-batch numbers
        values = stats.tolist()  # the one host sync per batch
        metrics['let/cosine'] = values[g.COS] / values[g.MICROBATCHES]
        if not math.isfinite(metrics['let/cosine']):
            raise FloatingPointError(self._not_finite(batch, values[g.TEACHER_NONFINITE] > 0))
        if measured_grads:
            metrics['let/grad_ratio'], metrics['let/grad_cos'] = gradient_stats(values[g.REST2 : g.DOT + 1])
        if values[g.CE_COUNT] > 0:
            metrics['let/teacher_ce'] = values[g.TEACHER_NLL] / values[g.CE_COUNT]
            metrics['let/student_ce'] = values[g.STUDENT_NLL] / values[g.CE_COUNT]
        self._control(batch, values, metrics, stats.device)
        return metrics

    def _not_finite(self, batch: int, teacher_nonfinite: bool) -> str:
        """Why the alignment turned inf/NaN (raised at BATCH_END, before the batch's checkpoint is written)."""
        if teacher_nonfinite:
            return (
                f"LET: the teacher's hidden states are inf/NaN in batch {batch}: {self.teacher} overflows in "
                f'teacher_dtype={self.teacher_dtype}. Set {SECTION}.teacher_dtype: bf16 (the range of fp32) or fp32.'
            )
        strength_key = 'grad_ratio' if self.relative is not None else 'lambda0'
        return (
            f'LET: the alignment is inf/NaN in batch {batch} while the teacher is finite: the student block '
            f'{self.wiring.student_path} diverged. Lower the learning rate or {SECTION}.{strength_key}.'  # type: ignore[union-attr]
        )

    def _control(self, batch: int, values: list[float], metrics: dict[str, float], device: torch.device) -> None:
        """Feed this batch's whole-batch diagnostics to relative strength and auto stop (same on every rank)."""
        if self.relative is not None:
            rest, align = (math.sqrt(max(values[i], 0.0)) for i in (g.REST2, g.ALIGN2))
            self.relative.observe(rest, align, self.align_weight)
        stop = self.autostop
        if stop is None or stop.fired_at is not None:
            return
        stop.observe(batch, metrics.get('let/teacher_ce'), metrics.get('let/student_ce'), metrics.get('let/grad_cos'))
        metrics['let/stop_signal'] = stop.signal()
        if dist.get_world_size() > 1:  # decided once, on rank 0, and broadcast
            decision = torch.tensor([-1 if stop.fired_at is None else stop.fired_at], device=device)
            dist.broadcast(decision, src=0)
            fired = int(decision.item())
            if fired >= 0 and stop.fired_at is None:
                stop.fire(fired, 'rank 0')
            elif fired < 0:
                stop.fired_at = None
        if stop.fired_at is not None:
            metrics['let/stop_fired_at'] = float(stop.fired_at)
            log.info(
                'LET: stop=auto fired at batch %d (%s); λ ramps to 0 over %d batches.',
                stop.fired_at,
                stop.fired_by,
                stop.ramp_batches,
            )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.autostop is not None:
            state['auto_stop'] = self.autostop.state_dict()
        if self.relative is not None:
            state['relative_strength'] = self.relative.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controllers' running state; their settings stay the YAML's (a difference is logged)."""
        for key, controller in (('auto_stop', self.autostop), ('relative_strength', self.relative)):
            if controller is not None and key in state:
                changed = ', '.join(controller.load_state_dict(state[key]))
                if changed:
                    log.warning("LET: resumed %s with this run's settings, not the checkpoint's: %s.", key, changed)
