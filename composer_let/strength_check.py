"""The alignment strength a YAML's ``let`` block applies, measured on CPU before training (``let/grad_ratio``).

The core of ``scripts/check_strength.py``. The student is built at its real size with its real
initialisation, its parameters frozen; the hooked block's output becomes a fresh autograd leaf, so
the backward runs through the later blocks only; ``let`` (and ``salt``) are driven through the
events a Composer ``Trainer`` runs for a batch, on a real ``State``, and ``let/grad_ratio`` is read
from the metrics ``LET`` logs at ``BATCH_END``::

    model, changes = build_student(train_cfg, tokenizer, torch.bfloat16, init=torch.float32)
    spec = build_loader(loader_config(train_cfg.train_loader, 2048), tokenizer, rows=2)
    rows = measure(model, [let], spec, batches=3, microbatch_rows=1, seed=17, max_duration='24000ba',
                   hooked='model.model.layers.5', autocast=torch.bfloat16)
    pull = sum(pulls(rows)) / len(rows)             # let/grad_ratio per unit of λ
    lambda0_for_ratio(pull, [0.1, 1, 10])           # {0.1: λ0, 1: λ0, 10: λ0}

The ratio ‖λ·∇_h L_align‖ / ‖∇_h L_rest‖ is linear in λ (``h`` is a leaf: λ does not feed back into
either gradient), so ``grad_ratio / λ`` is the pull of the alignment per unit of λ and ``target / pull``
the λ that starts a run at ``target``.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from composer.loggers import LoggerDestination
from torch import nn

from composer_let.capture import first_tensor

DEFAULT_TARGETS = (0.1, 0.3, 1.0, 3.0, 10.0)
GIB = 2**30
# Calibrated on the 1B-class GPU YAMLs (bf16 weights, bf16 autocast; peak RSS within ~5% of the plan).
BASE_MEMORY = 2 * GIB  # Python, torch, llm-foundry, the tokenizer, the data, the allocator's slack
ACTIVATION_VALUES = 32  # per token, per block after the hooked one, in units of the width (fp32 norms)
HEAD_BYTES = 24  # per logit: the logits, their fp32 copy, the log-softmax and the gradients
SHARED_TEXT = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'text'


class StrengthCheckError(Exception):
    """Input the check cannot run on, with the YAML key (or flag) and the fix in the message."""


# Student ------------------------------------------------------------------------------------


def cpu_model_config(model_cfg: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """``model:`` for a CPU build with the same parameters and initialisation; returns name, kwargs, what changed.

    ``init_device`` becomes ``cpu`` (``mixed`` is rank 0's CPU init; ``meta`` is materialised by the same
    ``param_init_fn``), flash attention becomes ``sdpa`` (Hugging Face) or ``torch`` (MPT), the fused CE
    (CUDA only) becomes torch's.
    """
    cfg = copy.deepcopy(dict(model_cfg))
    name = cfg.pop('name')
    changed = []
    if cfg.get('init_device', 'cpu') != 'cpu':
        changed.append(f'init_device: {cfg["init_device"]} -> cpu')
    cfg['init_device'] = 'cpu'
    if 'pretrained_model_name_or_path' in cfg:  # Hugging Face
        before = 'flash_attention_2' if cfg.get('use_flash_attention_2') else cfg.get('attn_implementation') or 'eager'
        if before != 'sdpa':
            changed.append(f'attention: {before} -> sdpa (the same attention, no S x S matrices kept)')
        cfg['use_flash_attention_2'] = False
        cfg['attn_implementation'] = 'sdpa'
    swap_cuda_only_kernels(cfg, changed)
    return name, cfg, changed


def swap_cuda_only_kernels(cfg: dict[str, Any], changed: list[str]) -> None:
    """MPT's flash attention -> torch and the fused CE (CUDA only) -> torch's, in ``cfg`` (a ``model:`` without
    ``name``), each change noted in ``changed``: the same parameters and FLOPs on CPU (also estimate.py's build)."""
    attn = cfg.get('attn_config')
    if isinstance(attn, dict) and attn.get('attn_impl') == 'flash':
        cfg['attn_config'] = {**attn, 'attn_impl': 'torch'}
        changed.append('attn_impl: flash -> torch')
    if cfg.get('loss_fn') == 'fused_crossentropy':
        cfg['loss_fn'] = 'torch_crossentropy'
        changed.append('loss_fn: fused_crossentropy -> torch_crossentropy')


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New parameters in ``dtype`` (a 7B student is built in bf16 directly, never whole in fp32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_student(
    train_cfg: Any, tokenizer: Any, weights: torch.dtype, init: torch.dtype | None = None
) -> tuple[nn.Module, list[str]]:
    """The Composer model of ``model:`` on CPU, initialised as ``train()`` does; frozen, in train mode.

    It is initialised in ``init`` (default: ``weights``) and its parameters are then cast to ``weights``
    (as FSDP's mixed precision casts the run's fp32 weights): fp32 -> bf16 keeps the run's very draw,
    an init in bf16 (a 7B whose fp32 weights do not fit) draws the same distribution anew.
    """
    from llmfoundry.utils.builders import build_composer_model
    from llmfoundry.utils.config_utils import process_init_device

    name, cfg, changed = cpu_model_config(train_cfg.model)
    master = cfg.pop('master_weights_dtype', None)
    try:
        with default_dtype(init or weights):
            model = build_composer_model(
                name=name,
                cfg=cfg,
                tokenizer=tokenizer,
                init_context=process_init_device(cfg, None, None),
                master_weights_dtype=master,
            )
    except Exception as e:
        raise StrengthCheckError(
            f'model: llm-foundry cannot build the student {name!r} ({type(e).__name__}: {e}).'
        ) from e
    for param in model.parameters():
        param.data = param.data.to(weights)
    return model.train().requires_grad_(False), changed


class LeafOutput:
    """Forward hook that hands on ``module``'s hidden state as a new autograd leaf (same storage, same values).

    The forward up to ``module`` then builds no graph (the weights are frozen) and the backward stops at
    its output: only the blocks after it are differentiated. The replacement keeps the output's structure
    (MPT blocks return a 3-tuple, Hugging Face layers a tuple or a tensor). Registered first, so the other
    hooks on ``module`` (``LET``'s capture) see the leaf.
    """

    def __init__(self, module: nn.Module):
        self._handle = module.register_forward_hook(self._hook, prepend=True)

    @staticmethod
    def _hook(module: nn.Module, args: Any, output: Any) -> Any:
        leaf = first_tensor(output).detach().requires_grad_(True)
        if isinstance(output, (tuple, list)):
            return type(output)([leaf, *output[1:]])
        return leaf

    def remove(self) -> None:
        self._handle.remove()


# Memory -------------------------------------------------------------------------------------


def memory_need(
    student_params: int,
    weight_bytes: int,
    compute_bytes: int,
    teacher_bytes: int,
    shape: dict[str, int],
    microbatch_tokens: int,
    attention_values: int = 0,
) -> dict[str, int]:
    """Bytes the check needs: weights, the teacher, what one microbatch's backward keeps, a fixed base.

    ``shape``: the student's ``width``, ``vocab``, ``blocks`` and ``blocks_after`` (the blocks after the
    hooked one, the only ones differentiated). They keep ~``ACTIVATION_VALUES`` x width values per token
    each (norms in fp32, q/k/v, the MLP's inner activations) in the compute dtype, plus
    ``attention_values`` (explicit S x S attention) each; under autocast also a ``compute_bytes`` copy of
    their weights. The LM head keeps its logits, their fp32 copy, the log-softmax and their gradients
    (``HEAD_BYTES`` per logit).
    """
    after = shape['blocks_after']
    casts = student_params * after // max(shape['blocks'], 1) * compute_bytes if compute_bytes < weight_bytes else 0
    blocks = microbatch_tokens * ACTIVATION_VALUES * shape['width'] + attention_values
    parts = {
        'student_weights': student_params * weight_bytes,
        'weight_casts': casts,
        'activations': after * blocks * compute_bytes,
        'lm_head': microbatch_tokens * shape['vocab'] * HEAD_BYTES,
        'teacher_weights': teacher_bytes,
        'base': BASE_MEMORY,
    }
    return {**parts, 'total': sum(parts.values())}


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where there is none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    return None


def peak_rss() -> int:
    """This process's peak resident memory in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Data -----------------------------------------------------------------------------------------


def local_mds(dataset: dict[str, Any]) -> str | None:
    """The split folder the YAML's text loader would read locally (it has ``index.json``), else ``None``."""
    local = dataset.get('local')
    if not local or dataset.get('streams'):
        return None
    folder = os.path.join(str(local), str(dataset.get('split') or ''))
    return folder if os.path.isfile(os.path.join(folder, 'index.json')) else None


def fallback_text(path: str | None = None) -> tuple[str, str]:
    """Text for a YAML whose data is not here: ``path``, WikiText-2 from ``../shared``, or Python's own docs."""
    if path is None:
        found = sorted(glob.glob(str(SHARED_TEXT / 'wikitext2-*.txt')), key=lambda p: 'train' not in p)
        path = found[0] if found else None
    if path is not None:
        try:
            return Path(path).read_text(encoding='utf-8'), path
        except OSError as e:
            raise StrengthCheckError(f'--text {path}: cannot read it ({e}).') from None
    from composer_let.prep.teacher_prep import default_check_text

    return default_check_text(chars=10**8), "Python's pydoc topics (pydoc_data)"


def write_text_shards(folder: Path, tokenizer: Any, text: str, seq_len: int, rows: int) -> int:
    """``rows`` rows of ``seq_len`` tokens of ``text`` as MDS shards in ``folder/train``; returns the rows written."""
    from streaming import MDSWriter

    from composer_let.prep.corpus import pack_rows

    written = 0
    with MDSWriter(out=str(folder / 'train'), columns={'tokens': 'ndarray:int32'}, compression=None) as writer:
        for row in pack_rows(tokenizer, [text], seq_len):
            writer.write({'tokens': row})
            written += 1
            if written == rows:
                break
    if written < rows:
        raise StrengthCheckError(
            f'the fallback text holds {written} rows of {seq_len} tokens, fewer than the {rows} needed. '
            'Pass a longer --text FILE, or fewer --batches / --batch-size.',
        )
    return written


def loader_config(loader_cfg: dict[str, Any], seq_len: int, local: str | None = None) -> dict[str, Any]:
    """The YAML's ``train_loader`` read in this process (no workers); ``local``: the fallback shards instead."""
    cfg = copy.deepcopy(dict(loader_cfg))
    cfg.update(num_workers=0, prefetch_factor=None, persistent_workers=False, pin_memory=False)
    if local is not None:
        dataset = dict(cfg.get('dataset') or {})
        kept = {k: dataset[k] for k in ('eos_token_id', 'bos_token_id') if k in dataset}
        cfg['name'] = 'text'
        cfg['dataset'] = {'local': local, 'split': 'train', 'shuffle': False, 'max_seq_len': seq_len, **kept}
    return cfg


def build_loader(loader_cfg: dict[str, Any], tokenizer: Any, rows: int) -> Any:
    """llm-foundry's train loader (a Composer ``DataSpec``) yielding ``rows`` rows per batch."""
    from llmfoundry.data.dataloader import build_dataloader

    try:
        return build_dataloader(copy.deepcopy(loader_cfg), tokenizer, rows)
    except Exception as e:
        raise StrengthCheckError(f'train_loader: llm-foundry cannot build it ({type(e).__name__}: {e}).') from e


# Measurement ----------------------------------------------------------------------------------


class MetricsRecorder(LoggerDestination):
    """Keeps the metrics logged since the last :meth:`take` (what a Trainer's loggers would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.current: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.current.update({k: float(v) for k, v in metrics.items()})

    def take(self) -> dict[str, float]:
        current, self.current = self.current, {}
        return current


def measure(
    model: nn.Module,
    algorithms: Sequence[Any],
    spec: Any,
    batches: int,
    microbatch_rows: int,
    seed: int,
    max_duration: Any,
    hooked: str,
    autocast: torch.dtype | None = None,
    on_batch: Any = None,
) -> list[dict[str, float]]:
    """Run ``batches`` batches of ``spec`` through ``model`` with ``algorithms`` as a ``Trainer`` would; no step.

    Per batch, the events ``LET`` and ``SALT`` act on, in the Trainer's order: ``BATCH_START``; per
    microbatch ``BEFORE_FORWARD``, forward, ``AFTER_FORWARD``, ``model.loss``, ``AFTER_LOSS`` and the
    backward of the total scaled by the microbatch's share of loss-generating tokens (Composer's
    ``accumulate_train_batch_on_tokens``); ``AFTER_TRAIN_BATCH``; ``BATCH_END``. ``hooked`` is the dotted
    path of the student module ``let`` hooks. ``autocast``: the forward and the loss run under
    ``torch.autocast('cpu', autocast)``, as Composer runs them under ``amp_bf16`` on GPU. The clock stays
    at batch 0: every batch runs at the λ of the run's first batch. Returns the metrics each batch
    logged; ``on_batch(i, row)`` is called after each.
    """
    from composer.core import Event, State
    from composer.devices import DeviceCPU
    from composer.loggers import Logger

    from composer_let.layers import find_module

    # Never stepped and stateless (plain SGD): it receives projection: linear's parameter group at INIT.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    state = State(
        model=model,
        rank_zero_seed=seed,
        run_name='check_strength',
        device=DeviceCPU(),
        max_duration=max_duration,
        optimizers=optimizer,
        train_dataloader=spec.dataloader,
    )
    metrics = MetricsRecorder()
    logger = Logger(state, destinations=[metrics])

    def run(event: Event) -> None:
        for algorithm in reversed(algorithms) if event.is_after_event else algorithms:
            if algorithm.match(event, state):
                algorithm.apply(event, state, logger)

    def precision() -> Any:
        enabled = autocast is not None
        return torch.autocast('cpu', dtype=autocast, enabled=enabled) if enabled else contextlib.nullcontext()

    run(Event.INIT)
    run(Event.FIT_START)
    leaf = LeafOutput(find_module(model, hooked))
    rows: list[dict[str, float]] = []
    try:
        for index, batch in enumerate(spec.dataloader):
            if index == batches:
                break
            state.batch = spec.batch_transforms(batch)
            run(Event.BATCH_START)
            microbatches = spec.split_batch(state.batch, microbatch_rows)
            sizes = [float(spec.get_num_tokens_in_batch(b, token_type='loss_generating')) for b in microbatches]
            for microbatch, size in zip(microbatches, sizes, strict=True):
                state.batch = spec.microbatch_transforms(microbatch)
                run(Event.BEFORE_FORWARD)
                with precision():
                    state.outputs = model(state.batch)
                run(Event.AFTER_FORWARD)
                with precision():
                    state.loss = model.loss(state.outputs, state.batch)
                run(Event.AFTER_LOSS)
                total = state.loss['total'] if isinstance(state.loss, dict) else state.loss
                (total * (size / sum(sizes))).backward()
                state.outputs = state.loss = None
            run(Event.AFTER_TRAIN_BATCH)
            run(Event.BATCH_END)
            rows.append(metrics.take())
            if on_batch is not None:
                on_batch(index, rows[-1])
    finally:
        leaf.remove()
        run(Event.FIT_END)
    if len(rows) < batches:
        raise StrengthCheckError(
            f'train_loader: the data gave {len(rows)} batch(es) of {spec.dataloader.batch_size} rows, '
            f'fewer than --batches {batches}.'
        )
    return rows


def pulls(rows: list[dict[str, float]]) -> list[float]:
    """``let/grad_ratio / let/lambda`` per batch: the alignment's pull per unit of λ."""
    out = []
    for row in rows:
        if 'let/grad_ratio' not in row or not row.get('let/lambda'):
            raise StrengthCheckError('let logged no let/grad_ratio (λ is 0 or the teacher is not active).')
        out.append(row['let/grad_ratio'] / row['let/lambda'])
    return out


def lambda0_for_ratio(pull: float, targets: Sequence[float]) -> dict[float, float]:
    """The λ0 that starts a run at each target ``let/grad_ratio``, given the pull per unit of λ."""
    return {target: (target / pull if pull > 0 else math.inf) for target in targets}
