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
from torch.utils.data import DataLoader

from composer_let import config as cfg
from composer_let.alignment import (
    LOSSES,
    PROJECTIONS,
    RESIZES,
    TEACHER_NORMS,
    alignment_loss,
    resize_width,
    standardize_features,
)
from composer_let.capture import OutputCapture
from composer_let.control import AutoStop, RelativeStrength
from composer_let.cross_tokenizer import KEYS as BRIDGE_KEYS
from composer_let.cross_tokenizer import PREFIX, BridgedCollate, TokenBridge
from composer_let.diagnostics import GradientProbe, gradient_stats, sampled_positions, token_nll
from composer_let.distill import head_rescaling
from composer_let.layers import (
    STRATEGIES,
    find_block_list,
    find_module,
    reentrant_block,
    resolve_layer,
    strategy_layers,
)
from composer_let.losses import with_extra_loss
from composer_let.schedule import SCHEDULES, schedule_weight
from composer_let.teacher import (
    DTYPES,
    SAME_TOKENIZER_FIX,
    BatchGuard,
    TeacherRunner,
    TeacherShape,
    layer_widths,
    load_teacher_tokenizer,
    open_teacher,
    same_tokenizer,
    start_teacher,
    state_device,
    student_masks_documents,
    teacher_inputs,
)
from composer_let.timing import check_stop_within, parse_stop, progress_towards

log = logging.getLogger(__name__)
SECTION = 'algorithms.let'
STRENGTHS = ('absolute', 'relative')
DEFAULT_LAMBDA0 = 0.1
DEFAULT_STOP_MAX = '0.5dur'
# strength: relative measures the alignment's gradient per unit of λ on its first batch with this λ.
RELATIVE_FIRST_WEIGHT = 1e-3
CROSS_TOKENIZER_MAX_LENGTH = 4096  # the teacher's context when its config does not say

# Per-batch statistics, summed over microbatches and ranks, read with one host sync at BATCH_END.
_COS, _MICROBATCHES, _TEACHER_NONFINITE, _TEACHER_NLL, _STUDENT_NLL, _CE_COUNT, _REST2, _ALIGN2, _DOT = range(9)


def student_hidden_size(model: nn.Module) -> int:
    """Width of the student's residual stream, read from its config."""
    for candidate in (model, getattr(model, 'model', None)):
        config = getattr(candidate, 'config', None)
        for attr in ('hidden_size', 'd_model', 'n_embd'):
            if isinstance(getattr(config, attr, None), int):
                return getattr(config, attr)
    raise ValueError(f'Cannot read the hidden size of {type(model).__name__} from its config.')


def output_logits(outputs: Any) -> torch.Tensor:
    """The logits of a Composer model's outputs (MPT: a dict or tensor; Hugging Face: ``.logits``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs['logits'] if isinstance(outputs, dict) else outputs.logits


class SeededLinear(nn.Linear):
    """``projection: linear``'s ``d_S -> d_T`` map, initialised from the run's rank-zero seed on every rank.

    Composer seeds every rank differently (seed + rank), and with ``init_device: meta`` FSDP calls
    ``reset_parameters`` on each rank's shard after sharding: drawing the full weight from one seed
    and keeping this rank's part gives the same weight for any world size and init device.
    """

    def __init__(self, width_in: int, width_out: int, seed: int, device: torch.device | str | None = None):
        self.seed = seed
        super().__init__(width_in, width_out, bias=False, device=device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return  # materialised later (FSDP's meta init calls this again on the real shard)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            full = nn.init.kaiming_uniform_(torch.empty(self.weight.shape), a=math.sqrt(5))
        weight = self.weight
        if hasattr(weight, 'device_mesh'):  # an FSDP2 shard (DTensor): this rank's rows of the same draw
            from torch.distributed.tensor import distribute_tensor

            shard = distribute_tensor(full, weight.device_mesh, weight.placements, src_data_rank=None).to_local()
            weight.to_local().copy_(shard)
        else:
            weight.copy_(full.to(weight.device, weight.dtype))

    def param_init_fn(self, module: nn.Module) -> None:  # Composer prefers a module's own over the model's
        module.reset_parameters()


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
    linear interpolation (parameter-free, the paper's); ``pool`` averages neighbouring
    teacher features instead when the teacher is wider (anti-aliased); ``linear`` learns a
    ``d_S -> d_T`` map that lives on the model as ``let_projection`` (trained by the run's
    optimizer and saved in checkpoints); ``none`` needs equal widths.

    Diagnostics, logged every batch while the teacher is active, from the whole batch (all
    microbatches and ranks): ``let/grad_ratio`` = ``‖λ·∇_h L_align‖ / ‖∇_h L_rest‖`` and
    ``let/grad_cos`` (their cosine) at the hooked student output ``h``; ``let/teacher_ce``
    and ``let/student_ce`` on the same ``ce_tokens`` positions per microbatch (the teacher's
    LM head runs on those positions only).

    Lifecycle. The teacher's config, tokenizer and layer widths (a weightless forward) are
    checked at ``Event.INIT``; its weights are loaded at ``Event.FIT_START`` (after any
    checkpoint is loaded), and only if ``s < S_stop`` then: frozen, off the Composer model,
    never wrapped, never in the optimizer or a checkpoint. Once ``λ`` reaches 0 (or at
    ``FIT_END``) the student hook is removed and the teacher freed.
    """

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
        self.strength = cfg.choice(SECTION, 'strength', strength, STRENGTHS)
        if self.strength == 'absolute':
            if grad_ratio is not None:
                raise ValueError(
                    f'{SECTION}.grad_ratio is the target of strength: relative, but strength is absolute. Set '
                    f'strength: relative to use grad_ratio, or drop grad_ratio and set lambda0.',
                )
            lambda0 = DEFAULT_LAMBDA0 if lambda0 is None else lambda0
            self.lambda0 = cfg.number(SECTION, 'lambda0', lambda0, 0.0, hint='(the paper uses 0.1)')
            self.grad_ratio = None
        else:
            if lambda0 is not None:
                raise ValueError(
                    f'{SECTION}.lambda0 is the weight of strength: absolute, but strength is relative. Set the '
                    f'target with {SECTION}.grad_ratio (e.g. 0.1) and drop lambda0.',
                )
            if grad_ratio is None:
                raise ValueError(f'{SECTION}.strength=relative needs {SECTION}.grad_ratio, e.g. grad_ratio: 0.1.')
            self.grad_ratio = cfg.number(
                SECTION,
                'grad_ratio',
                grad_ratio,
                0.0,
                low_open=True,
                hint="(a share of the rest of the loss's gradient, e.g. 0.1)",
            )
            self.lambda0 = None
        self.auto_stop = isinstance(stop, str) and stop.strip() == 'auto'
        if self.auto_stop:
            self.stop = parse_stop(DEFAULT_STOP_MAX if stop_max is None else stop_max, key=f'{SECTION}.stop_max')
        else:
            self.stop = parse_stop(stop, key=f'{SECTION}.stop', extra='or auto')
        auto_only = {'stop_max': stop_max, 'stop_horizon': stop_horizon}
        for key in (k for k, v in auto_only.items() if v is not None and not self.auto_stop):
            raise ValueError(f'{SECTION}.{key} applies only with stop: auto; set stop: auto or drop {key}.')
        self.stop_horizon = cfg.number(
            SECTION,
            'stop_horizon',
            AutoStop.horizon if stop_horizon is None else stop_horizon,
            0.0,
            hint='(in multiples of the batches trained so far; 0: stop once the student has passed its teacher)',
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

        self.align_weight = 0.0  # λ for the current batch
        self.autostop = AutoStop(horizon=self.stop_horizon) if self.auto_stop else None
        self.relative = RelativeStrength() if self.strength == 'relative' else None
        self.active = False  # teacher loaded and hook in place
        self._teacher_path = ''
        self._shape: TeacherShape | None = None
        self._teacher_width = -1
        self._teacher_layer_index = -1
        self._final_layer = -1
        self._student_path = ''
        self._packed = False  # the student attends within documents (sequence_id): so does the teacher
        self._runner: TeacherRunner | None = None
        self._requested: tuple[int, ...] = ()  # the teacher layers this algorithm asked of the runner
        self._head: nn.Module | None = None
        self._capture: OutputCapture | None = None
        self._probe = GradientProbe()
        self._projection: nn.Linear | None = None
        self._guard: BatchGuard | None = None
        self._teacher_hidden: torch.Tensor | None = None
        self._teacher_final: torch.Tensor | None = None
        self._stats: torch.Tensor | None = None
        self._stats_device = torch.device('cpu')
        self._bridge: TokenBridge | None = None
        self._bridged_loader: DataLoader | None = None
        self._collate: BridgedCollate | None = None
        self._align_mask: torch.Tensor | None = None
        self._hooked_grad = True  # whether the hooked output of the last forward carried a gradient

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
            check_stop_within(self.stop, state.max_duration, key=self._stop_key)
            if self._shape_at(state) > 0:
                self._start(state)
            else:
                log.info('LET: the run is at or past its stop (%s); the teacher is not loaded.', self._stop_text())
        elif event == Event.BATCH_START:
            shape = self._shape_at(state)
            self.align_weight = self._weight(shape)
            if self.active and shape == 0:
                self._release()
        elif event == Event.BEFORE_FORWARD and self.active:
            self._run_teacher(state.batch)
            self._capture.arm()  # type: ignore[union-attr]
        elif event == Event.AFTER_FORWARD and self._capture is not None:
            self._capture.disarm()
        elif event == Event.AFTER_LOSS:
            self._add_alignment(state)
        elif event == Event.AFTER_TRAIN_BATCH and not self.active and self._projection is not None:
            # Idle after stop: drop DDP's zero gradient so the optimizer leaves the projection alone (no Adam
            # momentum, no weight decay), exactly as in one process where it gets no gradient at all.
            for param in self._projection.parameters():
                param.grad = None
        elif event == Event.BATCH_END:
            logger.log_metrics(self._batch_metrics(int(state.timestamp.batch)))
        elif event == Event.FIT_END:
            self._release()  # a later fit() on the same Trainer loads it again if still before stop

    # Strength and stop ----------------------------------------------------------------

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

    def _control(self, batch: int, values: list[float], metrics: dict[str, float]) -> None:
        """Feed this batch's whole-batch diagnostics to relative strength and auto stop (same on every rank)."""
        if self.relative is not None:
            self.relative.observe(
                math.sqrt(max(values[_REST2], 0.0)), math.sqrt(max(values[_ALIGN2], 0.0)), self.align_weight
            )
        if self.autostop is None or self.autostop.fired_at is not None:
            return
        self.autostop.observe(
            batch, metrics.get('let/teacher_ce'), metrics.get('let/student_ce'), metrics.get('let/grad_cos')
        )
        metrics['let/stop_signal'] = self.autostop.signal()
        if dist.get_world_size() > 1:  # decided once, on rank 0, and broadcast
            decision = torch.tensor(
                [-1 if self.autostop.fired_at is None else self.autostop.fired_at], device=self._stats_device
            )
            dist.broadcast(decision, src=0)
            fired = int(decision.item())
            if fired >= 0 and self.autostop.fired_at is None:
                self.autostop.fire(fired, 'rank 0')
            elif fired < 0:
                self.autostop.fired_at = None
        if self.autostop.fired_at is not None:
            metrics['let/stop_fired_at'] = float(self.autostop.fired_at)
            log.info(
                'LET: stop=auto fired at batch %d (%s); λ ramps to 0 over %d batches.',
                self.autostop.fired_at,
                self.autostop.fired_by,
                self.autostop.ramp_batches,
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

    # Steps ---------------------------------------------------------------------------

    def _init(self, state: State) -> None:
        wiring = self.check(state.model)
        if self.projection == 'linear':
            self._add_projection(state, wiring['student_width'], wiring['teacher_width'])
        log.info('LET: %s', wiring)

    def check(self, model: nn.Module) -> dict[str, Any]:
        """INIT's checks against the student ``model``, with no side effect on it; returns the wiring.

        Resolves the teacher (config and tokenizer against ``model.tokenizer``), the two layers
        and their widths (the teacher's from a weightless forward), and whether the student attends
        within documents. ``scripts/estimate.py`` calls this on a weightless student.
        """
        tokenizer = getattr(model, 'tokenizer', None)
        fix = f'{SAME_TOKENIZER_FIX} Or set {SECTION}.cross_tokenizer: true to align across tokenizers.'
        self._teacher_path, config, shape = open_teacher(
            self.teacher, SECTION, tokenizer, None if self.cross_tokenizer else fix
        )
        self._bridge = self._make_bridge(tokenizer, shape) if self.cross_tokenizer else None
        default_teacher, _ = strategy_layers(self.strategy, shape.num_layers, 1)
        teacher_index = default_teacher if self.teacher_layer is None else self.teacher_layer
        self._teacher_layer_index = resolve_layer(teacher_index, shape.num_layers, f'{SECTION}.teacher_layer')
        self._final_layer = shape.num_layers - 1
        if self.ce_tokens and self._bridge is None and head_rescaling(config):
            raise ValueError(
                f'{SECTION}.ce_tokens={self.ce_tokens}: the teacher {self.teacher!r} rescales its logits outside its '
                f'LM head ({", ".join(head_rescaling(config))}), so let/teacher_ce would be wrong. Set ce_tokens: 0.',
            )
        self._shape = shape

        if self.student_module is not None:
            find_module(model, self.student_module, key=f'{SECTION}.student_module')
            self._student_path = self.student_module
            num_blocks = None
        else:
            path, blocks = find_block_list(model)
            num_blocks = len(blocks)
            _, default_student = strategy_layers(self.strategy, shape.num_layers, num_blocks)
            student_index = default_student if self.student_layer is None else self.student_layer
            index = resolve_layer(student_index, num_blocks, f'{SECTION}.student_layer')
            self._student_path = f'{path}.{index}'
        self._packed = student_masks_documents(model)

        width_t = layer_widths(config, [self._teacher_layer_index], SECTION)[self._teacher_layer_index]
        self._teacher_width = width_t
        width_s = student_hidden_size(model)
        if self.projection == 'none' and width_s != width_t:
            raise ValueError(
                f'{SECTION}.projection=none needs equal widths, but the student is {width_s} wide and the '
                f'teacher block {self._teacher_layer_index} {width_t}. Use projection: interpolate (the paper), '
                'pool or linear.',
            )
        return {
            'teacher': self._teacher_path,
            'teacher_layers': shape.num_layers,
            'teacher_layer': self._teacher_layer_index,
            'teacher_width': width_t,
            'student_module': self._student_path,
            'student_blocks': num_blocks,
            'student_width': width_s,
            'packed_documents': self._packed,
            'cross_tokenizer': self._bridge is not None,
            'lambda0': self.lambda0,
            'stop': str(self.stop),
            'schedule': self.schedule,
            'projection': self.projection,
            'teacher_norm': self.teacher_norm,
        }

    def _make_bridge(self, student: Any, shape: TeacherShape) -> TokenBridge | None:
        """The re-tokenizer for a teacher on another tokenizer (``None`` when the tokenizers are the same)."""
        key = f'{SECTION}.cross_tokenizer'
        teacher = load_teacher_tokenizer(self._teacher_path)
        if student is None or teacher is None:
            which = 'run' if student is None else 'teacher'
            raise ValueError(f'{key}: true needs both tokenizers, but the {which} tokenizer is not available.')
        if same_tokenizer(student, teacher):
            log.info('LET: cross_tokenizer is on but the tokenizers are the same: the teacher reads the ids as is.')
            return None
        return TokenBridge(student, teacher, max_length=shape.max_positions or CROSS_TOKENIZER_MAX_LENGTH)

    def _add_projection(self, state: State, width_s: int, width_t: int) -> None:
        """Put a learned ``d_S -> d_T`` map on the model so DDP/FSDP, the optimizer and checkpoints see it."""
        device = next(state.model.parameters()).device
        self._projection = SeededLinear(width_s, width_t, seed=state.rank_zero_seed, device=device)
        state.model.let_projection = self._projection
        if not state.optimizers:
            raise ValueError(f'{SECTION}.projection=linear needs an optimizer to train the projection.')
        optimizer = state.optimizers[0] if isinstance(state.optimizers, (list, tuple)) else state.optimizers
        optimizer.add_param_group({'params': list(self._projection.parameters())})

    def _start(self, state: State) -> None:
        layers = {self._teacher_layer_index: self._teacher_width}
        measure_ce = bool(self.ce_tokens) and self._bridge is None  # CEs over different tokens do not compare
        if measure_ce:
            layers.setdefault(self._final_layer, -1)  # the final-norm state feeds the LM head of let/teacher_ce
        self._runner = start_teacher(
            self._teacher_path,
            DTYPES[self.teacher_dtype],
            state_device(state),
            self._shape.num_layers,
            layers,
            owner=state,
            key=f'{SECTION}.teacher',
            packed=self._packed,
        )
        self._requested = tuple(layers)  # withdrawn at release: SALT may keep the shared runner going
        self._head = self._runner.model.get_output_embeddings() if measure_ce else None
        self._guard = BatchGuard(self._shape, SECTION)
        target = find_module(state.model, self._student_path, key=f'{SECTION}.student_module')
        if self._projection is not None:
            # FSDP1 swaps in its wrapper; DDP (wrapped after INIT) hides the attribute behind ``module.``
            self._projection = find_module(state.model, 'let_projection', key='let_projection')
        self._capture = OutputCapture(target, transform=self._watch)
        if self._bridge is not None:
            self._bridge_loader(state.train_dataloader)
        self.active = True

    def _bridge_loader(self, loader: Any) -> None:
        """Re-tokenize in the DataLoader (its workers, off the training loop) by wrapping its collate function."""
        if isinstance(loader, DataLoader) and not isinstance(loader.collate_fn, BridgedCollate):
            self._collate = BridgedCollate(loader.collate_fn, self._bridge)  # type: ignore[arg-type]
            loader.collate_fn = self._collate
            self._bridged_loader = loader

    def _watch(self, hidden: torch.Tensor) -> torch.Tensor:
        """The student's hooked output as the alignment sees it: gradient-probed, then projected."""
        self._hooked_grad = hidden.requires_grad
        watched = self._probe.watch(hidden)
        return watched if self._projection is None else self._projection(watched)

    def _run_teacher(self, batch: Any) -> None:
        assert self._runner is not None and self._guard is not None
        if self._bridge is not None:
            self._run_bridged_teacher(batch)
            return
        inputs = teacher_inputs(batch, self._packed)
        self._guard.check(inputs['input_ids'])
        outputs = self._runner(**inputs)
        self._teacher_hidden = outputs[self._teacher_layer_index]
        self._teacher_final = outputs.get(self._final_layer) if self._head is not None else None
        self._align_mask = batch.get('attention_mask')

    def _run_bridged_teacher(self, batch: Any) -> None:
        """The teacher on its own tokens, read back at each student position (masked where it has none)."""
        student_ids = batch['input_ids']
        mapped = {key: batch.get(PREFIX + key) for key in BRIDGE_KEYS}
        if any(v is None for v in mapped.values()) or mapped['teacher_index'].shape != student_ids.shape:
            # Not from the bridged loader (a custom loader, or a batch truncated after it): map it here.
            mapped = {k: v.to(student_ids.device) for k, v in self._bridge(student_ids.cpu()).items()}  # type: ignore[misc]
        outputs = self._runner(  # type: ignore[misc]
            mapped['teacher_input_ids'],
            mapped['teacher_attention_mask'],
            mapped['teacher_sequence_id'] if self._packed else None,
        )
        hidden = outputs[self._teacher_layer_index]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        valid = mapped['teacher_valid'].bool()
        self._teacher_hidden = torch.where(valid[..., None], hidden[rows, mapped['teacher_index']], 0.0)
        self._teacher_final = None  # the teacher's CE is over its own tokens: not comparable
        mask = batch.get('attention_mask')
        self._align_mask = valid if mask is None else valid & mask.bool()

    def _add_alignment(self, state: State) -> None:
        if self.active:
            student = self._capture.pop()  # type: ignore[union-attr]
            if student is None or self._teacher_hidden is None:
                raise RuntimeError(f'LET: the student module {self._student_path} did not run in this forward.')
            if not self._hooked_grad and torch.is_grad_enabled() and state.model.training:
                raise ValueError(self._no_gradient(state.model))  # before the first step: the pull would be 0
            teacher = self._teacher_hidden
            if self.teacher_norm == 'standardize':
                teacher = standardize_features(teacher, self._align_mask)
            if self.projection in RESIZES:
                teacher = resize_width(teacher.float(), student.shape[-1], self.projection)
            align, cosine = alignment_loss(student, teacher, self._align_mask, kind=self.loss)
            stats = torch.zeros(9, device=cosine.device)
            stats[_COS], stats[_MICROBATCHES] = cosine, 1.0
            stats[_TEACHER_NONFINITE] = (~torch.isfinite(self._teacher_hidden).all()).float()
            if self._teacher_final is not None:
                stats[_TEACHER_NLL : _CE_COUNT + 1] = self._sampled_ce(state)
            self._stats = stats if self._stats is None else self._stats + stats
            self._teacher_hidden = self._teacher_final = None
            state.loss = with_extra_loss(state.loss, 'let_align', align, self.align_weight)
        elif self._projection is not None and isinstance(state.model, DistributedDataParallel):
            # DDP expects a gradient for every parameter each step: give the idle projection zeros.
            idle = sum(p.sum() for p in self._projection.parameters()) * 0.0
            state.loss = with_extra_loss(state.loss, 'let_align', idle, 1.0)

    def _no_gradient(self, model: nn.Module) -> str:
        """Why the hooked output carries no gradient in training, and the fix."""
        block = reentrant_block(model, self._student_path)
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
            f'{SECTION}.student_module={self._student_path}: its output carries no gradient in training, so the '
            f'alignment would train nothing (a constant λ·align): {where}.'
        )

    @torch.no_grad()
    def _sampled_ce(self, state: State) -> torch.Tensor:
        """``[teacher nll sum, student nll sum, count]`` on ``ce_tokens`` positions of this microbatch."""
        logits = output_logits(state.outputs)
        rows, targets = sampled_positions(state.batch['labels'], self.ce_tokens, int(state.timestamp.batch))
        final = self._teacher_final.reshape(-1, self._teacher_final.shape[-1])  # type: ignore[union-attr]
        teacher_nll, count = token_nll(self._head(final.index_select(0, rows)), targets)  # type: ignore[misc]
        student_nll, _ = token_nll(logits.reshape(-1, logits.shape[-1]).index_select(0, rows), targets)
        return torch.stack([teacher_nll, student_nll, count])

    def _batch_metrics(self, batch: int) -> dict[str, float]:
        """This batch's metrics: its statistics summed over ranks, read with one host sync."""
        metrics = {'let/lambda': self.align_weight}
        stats, self._stats = self._stats, None
        grads = self._probe.take()
        if stats is None:
            return metrics
        if grads is not None:
            stats[_REST2 : _DOT + 1] = grads
        if dist.get_world_size() > 1:
            dist.all_reduce(stats)  # sums: every rank logs (and acts on) the same whole-batch numbers
        values = stats.tolist()  # the one host sync per batch
        metrics['let/cosine'] = values[_COS] / values[_MICROBATCHES]
        if not math.isfinite(metrics['let/cosine']):
            raise FloatingPointError(self._not_finite(batch, values[_TEACHER_NONFINITE] > 0))
        if grads is not None:
            metrics['let/grad_ratio'], metrics['let/grad_cos'] = gradient_stats(values[_REST2 : _DOT + 1])
        if values[_CE_COUNT] > 0:
            metrics['let/teacher_ce'] = values[_TEACHER_NLL] / values[_CE_COUNT]
            metrics['let/student_ce'] = values[_STUDENT_NLL] / values[_CE_COUNT]
        self._stats_device = stats.device
        self._control(batch, values, metrics)
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
            f'{self._student_path} diverged. Lower the learning rate or {SECTION}.{strength_key}.'
        )

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        if self._runner is not None:
            self._runner.release(self._requested)
            self._runner = self._head = None
            log.info('LET: teacher released.')
        if self._collate is not None:
            # The iterators made so far (and their workers) keep the wrapped collate: it now passes batches through.
            self._collate.release()
            self._bridged_loader.collate_fn = self._collate.collate_fn  # type: ignore[union-attr]
            self._bridged_loader = self._collate = None
        self.active = False
        self._teacher_hidden = self._teacher_final = self._align_mask = None
