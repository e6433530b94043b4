"""Check an llm-foundry train YAML that uses ``let``/``salt`` and estimate its cost, on CPU, without weights.

    python scripts/estimate.py yamls/gpu/llama1.4b-let-smollm2.yaml variables.teacher=<folder or hub id> \\
        [key=value ...] [--gpus 64] [--gpus-per-node 8] [--json estimate.json]

The YAML and its dotted overrides go through llm-foundry's own config handling (as
``train_from_yaml``). The student is built from ``model:`` on the meta device (no weights;
flash attention and fused losses swapped for their CPU equivalents, which have the same
parameters and FLOPs); the tokenizer is built when it is available (else only vocabulary sizes
are compared); every ``let``/``salt`` block is constructed from llm-foundry's registry and runs
its INIT checks (``check(model)``: teacher config and layers, widths, tokenizer contract).
A hub-id teacher is fetched as config and tokenizer files only, never weights.

Printed (and written with ``--json``): parameters of the student and the teacher (embedding =
input embeddings and the LM head), the FLOPs of one microbatch (``device_train_microbatch_size``
x ``max_seq_len``): the teacher's forward (as the run executes it) against the student's
forward+backward, forwards counted by ``torch.utils.flop_counter`` on weightless tensors, backward =
2 x forward (with ``cross_tokenizer`` the teacher reads its own tokens, counted from both tokenizers
on a sample text: ``--sample-text FILE``); memory per rank (ZeRO-2, ``SHARD_GRAD_OP``, with the full
weights it holds from forward to backward); and the step at which the teacher is released
(``stop``). A failed check exits with status 1 and the YAML key in the message.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

STUDENT_WEIGHT_BYTES = {'bf16': 2, 'bfloat16': 2, 'f16': 2, 'float16': 2}  # model.master_weights_dtype; else fp32
SHARDED = ('FULL_SHARD', 'SHARD_GRAD_OP')  # weights, grads and optimizer state split over every rank
HYBRID = ('HYBRID_SHARD', '_HYBRID_SHARD_ZERO2')  # split within a node, replicated across nodes
ZERO2 = ('SHARD_GRAD_OP', '_HYBRID_SHARD_ZERO2')  # the full weights stay gathered from the forward to the backward
CHECKED = ('let', 'salt')  # algorithms with an INIT check() of their own


class EstimateError(Exception):
    """A config that would fail at INIT (or before), with the YAML key in the message."""


# Config --------------------------------------------------------------------------------------


@contextlib.contextmanager
def world_size_env(world_size: int) -> Iterator[None]:
    """``WORLD_SIZE`` as the GPU run will see it, so llm-foundry's batch-size arithmetic checks divisibility."""
    before = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = str(world_size)
    try:
        yield
    finally:
        if before is None:
            del os.environ['WORLD_SIZE']
        else:
            os.environ['WORLD_SIZE'] = before


def load_train_config(yaml_path: str, overrides: list[str], world_size: int) -> Any:
    """The YAML with its ``key=value`` overrides as llm-foundry's ``train()`` sees them (its ``TrainConfig``)."""
    from llmfoundry.command_utils.train import TRAIN_CONFIG_KEYS, TrainConfig
    from llmfoundry.utils.config_utils import make_dataclass_and_log_config
    from omegaconf import OmegaConf

    OmegaConf.clear_resolver('oc.env')  # as train_from_yaml
    try:
        cfg = OmegaConf.load(yaml_path)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_cli(overrides))
        with world_size_env(world_size):
            _, train_cfg = make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')
    except Exception as e:
        raise EstimateError(f'{yaml_path}: llm-foundry rejects the config ({type(e).__name__}: {e}).') from e
    return train_cfg


def build_run_tokenizer(train_cfg: Any) -> tuple[Any, str]:
    """The run's tokenizer when it can be built here (a local folder, the hub cache, or the network); else None."""
    if not train_cfg.tokenizer:
        return None, 'no tokenizer in the YAML: tokenizer contract not checked, vocabulary sizes only'
    from llmfoundry.utils.builders import build_tokenizer

    name = train_cfg.tokenizer['name']
    try:
        tokenizer = build_tokenizer(name, dict(train_cfg.tokenizer.get('kwargs') or {}))
    except Exception as e:
        reason = f'{type(e).__name__}: {str(e).split(". ")[0][:100]}'
        return None, (
            f'tokenizer.name={name!r} is not available here ({reason}): tokenizer contract not checked, '
            'vocabulary sizes only'
        )
    return tokenizer, f'tokenizer.name={name!r}: {len(tokenizer)} tokens'


def teacher_files_only(teacher: str, key: str) -> str:
    """A local folder for ``teacher``: itself, or a hub id's config and tokenizer files (never its weights)."""
    if os.path.isdir(teacher):
        return teacher
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(teacher, allow_patterns=['*.json', '*.txt', '*.model'])
    except Exception as e:
        raise EstimateError(
            f'{key}={teacher!r} is not a local folder and its config cannot be fetched from the hub '
            f"({type(e).__name__}). Offline, point it at a folder holding the teacher's config.json "
            '(in the shipped YAMLs: variables.teacher=<folder>).',
        ) from None


# Student -------------------------------------------------------------------------------------


def weightless_model_config(model_cfg: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """``model:`` for a meta-device build on CPU: same parameters and FLOPs; returns name, kwargs, what changed."""
    cfg = copy.deepcopy(dict(model_cfg))
    name = cfg.pop('name')
    cfg.pop('master_weights_dtype', None)
    changed = [] if cfg.get('init_device') == 'meta' else [f'init_device: {cfg.get("init_device", "cpu")} -> meta']
    cfg['init_device'] = 'meta'
    if 'pretrained_model_name_or_path' in cfg and cfg.get('pretrained', True):  # llm-foundry's default: True
        cfg['pretrained'] = False  # the same shapes from the config alone
        changed.append('pretrained -> false')
    if 'pretrained_model_name_or_path' in cfg:  # Hugging Face: eager attention runs (and is counted) on fake tensors
        before = (
            'flash_attention_2' if cfg.get('use_flash_attention_2') else cfg.get('attn_implementation') or 'default'
        )
        cfg['use_flash_attention_2'] = False
        cfg['attn_implementation'] = 'eager'
        changed.append(f'attention: {before} -> eager')
    from composer_let.strength_check import swap_cuda_only_kernels

    swap_cuda_only_kernels(cfg, changed)
    return name, cfg, changed


def build_student(train_cfg: Any, tokenizer: Any) -> tuple[nn.Module, list[str]]:
    """The Composer model of ``model:`` with every parameter on the meta device (no storage)."""
    from llmfoundry.models.utils import init_empty_weights
    from llmfoundry.utils.builders import build_composer_model

    name, cfg, changed = weightless_model_config(train_cfg.model)
    try:
        model = build_composer_model(name=name, cfg=cfg, tokenizer=tokenizer, init_context=init_empty_weights())
    except Exception as e:
        raise EstimateError(f'model: llm-foundry cannot build the student {name!r} ({type(e).__name__}: {e}).') from e
    return model, changed


def output_embedding(model: nn.Module) -> nn.Module | None:
    """The LM head (tied or not) of a Composer or Hugging Face causal LM."""
    for candidate in (model, getattr(model, 'model', None)):
        getter = getattr(candidate, 'get_output_embeddings', None)
        if callable(getter):
            with contextlib.suppress(Exception):
                head = getter()
                if isinstance(head, nn.Module):
                    return head
    return None


def param_counts(model: nn.Module) -> dict[str, int]:
    """``total`` (tied weights once), ``embedding`` (input/position embeddings and the LM head), ``non_embedding``."""
    total = {id(p): p.numel() for p in model.parameters()}
    modules = [m for m in model.modules() if isinstance(m, nn.Embedding)] + [output_embedding(model)]
    embedding = {id(p): p.numel() for m in modules if m is not None for p in m.parameters()}
    return {
        'total': sum(total.values()),
        'embedding': sum(embedding.values()),
        'non_embedding': sum(total.values()) - sum(embedding.values()),
    }


def model_vocab_size(model: nn.Module) -> int | None:
    """Number of logits the student produces, from its config (MPT and Hugging Face)."""
    for candidate in (model, getattr(model, 'model', None)):
        size = getattr(getattr(candidate, 'config', None), 'vocab_size', None)
        if isinstance(size, int):
            return size
    return None


# Algorithms and their INIT checks ------------------------------------------------------------


def build_algorithms(train_cfg: Any) -> dict[str, Any]:
    """Every algorithm under ``algorithms:``, constructed from llm-foundry's registry as the run does."""
    from llmfoundry import registry

    algorithms = {}
    for name, kwargs in (train_cfg.algorithms or {}).items():
        try:
            algorithms[name] = registry.algorithms.get(name)(**dict(kwargs or {}))
        except Exception as e:
            raise EstimateError(keyed(f'algorithms.{name}', e)) from e
    return algorithms


def keyed(section: str, error: Exception) -> str:
    """The error's message, prefixed with the YAML section unless it already names it."""
    message = str(error) or type(error).__name__
    return message if section in message else f'{section}: {message}'


def run_checks(algorithms: dict[str, Any], model: nn.Module) -> dict[str, dict[str, Any]]:
    """Each ``let``/``salt`` block's INIT checks on the weightless student; returns their wiring."""
    wiring = {}
    for name in CHECKED:
        algorithm = algorithms.get(name)
        if algorithm is None:
            continue
        given = algorithm.teacher
        algorithm.teacher = teacher_files_only(given, f'algorithms.{name}.teacher')
        try:
            wiring[name] = {'teacher_id': given, **algorithm.check(model)}
        except Exception as e:
            raise EstimateError(keyed(f'algorithms.{name}', e)) from e
    return wiring


def check_vocabulary(name: str, student_vocab: int | None, tokenizer: Any, teacher_vocab: int) -> str | None:
    """The student must have a logit for every id of the run's (the teacher's) tokenizer; returns a warning."""
    if student_vocab is None:
        return None
    if tokenizer is not None and len(tokenizer) > student_vocab:
        raise EstimateError(
            f'model: the student has {student_vocab} logits but the tokenizer {len(tokenizer)} tokens. '
            f"Set the model's vocab_size >= {len(tokenizer)}.",
        )
    if tokenizer is None and student_vocab < teacher_vocab:
        return (
            f"the student has {student_vocab} logits, fewer than algorithms.{name}'s teacher vocabulary "
            f"({teacher_vocab}): data tokenized with the teacher's tokenizer may hold ids beyond it."
        )
    return None


# Time -----------------------------------------------------------------------------------------


def batches_of(time: Any, train_cfg: Any, max_batches: float | None) -> float | None:
    """``time`` (Composer ``Time``) in batches, or ``None`` when that needs the dataset size (epochs).

    Assumes every batch is ``global_train_batch_size`` samples of ``max_seq_len`` tokens (packed text).
    """
    from composer.core import TimeUnit

    value = float(time.value)
    if time.unit == TimeUnit.BATCH:
        return value
    if time.unit == TimeUnit.SAMPLE:
        return value / train_cfg.global_train_batch_size
    if time.unit == TimeUnit.TOKEN:
        return value / (train_cfg.global_train_batch_size * train_cfg.max_seq_len)
    if time.unit == TimeUnit.DURATION:
        return None if max_batches is None else value * max_batches
    return None


def schedule_steps(algorithms: dict[str, Any], train_cfg: Any) -> dict[str, Any]:
    """``max_duration`` and each checked algorithm's ``stop`` in batches (the step the teacher is released)."""
    from composer.core import Time

    from composer_let.timing import check_stop_within, parse_stop

    duration = train_cfg.max_duration
    try:
        max_duration = parse_stop(duration if isinstance(duration, (int, str)) else str(duration), key='max_duration')
    except ValueError as e:
        raise EstimateError(str(e)) from None
    max_batches = batches_of(max_duration, train_cfg, None)
    tokens_per_batch = train_cfg.global_train_batch_size * train_cfg.max_seq_len
    steps: dict[str, Any] = {
        'max_duration': str(max_duration),
        'max_batches': max_batches,
        'tokens_per_batch': tokens_per_batch,
        'stop': {},
    }
    for name in CHECKED:
        if name in algorithms:
            stop: Time = algorithms[name].stop
            try:
                check_stop_within(stop, max_duration, key=f'algorithms.{name}.stop')  # the run's FIT_START check
            except ValueError as e:
                raise EstimateError(str(e)) from None
            batches = batches_of(stop, train_cfg, max_batches)
            if batches is not None and max_batches is not None and batches > max_batches:
                raise EstimateError(
                    f'algorithms.{name}.stop={stop} is {batches:,.0f} batches of {tokens_per_batch:,} tokens, beyond '
                    f'max_duration={max_duration} ({max_batches:,.0f} batches). Set it <= max_duration or use 0.25dur.',
                )
            steps['stop'][name] = {
                'stop': str(stop),
                'batches': None if batches is None else math.ceil(batches - 1e-9),
                'fraction_of_run': None if batches is None or not max_batches else batches / max_batches,
            }
    return steps


# FLOPs --------------------------------------------------------------------------------------


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of ``run()`` (matmuls and attention) counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def student_step_flops(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of the student on one microbatch, counted on fake tensors (its meta weights become fakes),
    and forward+backward = 3 x forward: every matmul has two gradient matmuls of its size (all weights train)."""
    from composer_let.guidance import output_logits
    from composer_let.teacher import shapes_only

    with shapes_only():  # one fake mode for the weights and the inputs
        model.to_empty(device='cpu')
        model.train()
        ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        batch = {'input_ids': ids}  # no padding mask, no labels: models branch on their values, which fakes lack
        forward = count_flops(lambda: output_logits(model(batch)))
    return {'forward': forward, 'forward_backward': 3 * forward}


def teacher_cost(config: Any, layers: list[int], head_rows: int, batch_size: int, seq_len: int) -> dict[str, Any]:
    """Parameters of the weightless teacher and the FLOPs of its part of one microbatch: the backbone up to the
    deepest of ``layers`` (as ``TeacherRunner`` runs it) plus its LM head on ``head_rows`` positions."""
    from composer_let.teacher import TeacherRunner, shapes_only, teacher_skeleton

    config = copy.deepcopy(config)
    config._attn_implementation = 'eager'  # its matmuls are counted; CPU sdpa kernels have no FLOP formula
    with shapes_only():
        skeleton = teacher_skeleton(config)
        params = param_counts(skeleton)
        runner = TeacherRunner(skeleton, int(config.num_hidden_layers))
        for layer in layers:
            runner.request(layer)

        def forward() -> None:
            outputs = runner(torch.zeros(batch_size, seq_len, dtype=torch.long))
            if head_rows:
                width = outputs[runner.num_layers - 1].shape[-1]
                skeleton.get_output_embeddings()(torch.zeros(head_rows, width))

        try:
            flops, method = count_flops(forward), 'counted'
        except Exception as e:
            depth = max(layers) + 1
            blocks = params['non_embedding'] * depth // runner.num_layers
            head = 2 * head_rows * int(config.hidden_size) * int(config.vocab_size)
            flops = analytic_forward_flops(blocks, depth, int(config.hidden_size), batch_size, seq_len) + head
            method = f'analytic (flop counter failed: {type(e).__name__})'
        runner.close()
    return {'params': params, 'forward_flops': flops, 'flops_method': method}


def analytic_forward_flops(matmul_params: int, num_layers: int, width: int, batch_size: int, seq_len: int) -> int:
    """``2 · params · tokens`` for the matmuls plus ``4 · B · S² · width`` per layer for attention (full S x S,
    the convention ``torch.utils.flop_counter`` also counts)."""
    return 2 * matmul_params * batch_size * seq_len + 4 * batch_size * seq_len**2 * width * num_layers


# Memory ---------------------------------------------------------------------------------------


def optimizer_states(train_cfg: Any) -> tuple[int, str]:
    """Per-parameter optimizer tensors of ``optimizer.name`` (Adam-style: 2, Lion: 1)."""
    name = str((train_cfg.optimizer or {}).get('name', ''))
    if 'lion' in name:
        return 1, name
    return 2, name  # the Adam family; other optimizers are assumed to keep as much


def student_memory(params: int, train_cfg: Any, world_size: int, gpus_per_node: int) -> dict[str, Any]:
    """Bytes of the student's weights and of weights + grads + optimizer state per rank, as FSDP shards them."""
    fsdp = train_cfg.fsdp_config
    strategy = (
        'DDP (no fsdp_config)' if fsdp is None or world_size == 1 else fsdp.get('sharding_strategy', 'FULL_SHARD')
    )
    if strategy in SHARDED:
        shards = world_size
    elif strategy in HYBRID:
        shards = min(world_size, gpus_per_node)
    else:
        shards = 1
    weight_bytes = STUDENT_WEIGHT_BYTES.get(str(train_cfg.model.get('master_weights_dtype')), 4)
    states, optimizer = optimizer_states(train_cfg)
    per_param = weight_bytes * (2 + states)  # weights, grads, optimizer state: all in the master weights' dtype
    # ZeRO-2 does not reshard after the forward: every rank holds the whole model's gathered weights until the
    # backward, beside its shards (FULL_SHARD gathers one FSDP unit at a time, not counted here).
    gathered = params * gathered_weight_bytes(train_cfg, weight_bytes) if strategy in ZERO2 else 0
    return {
        'strategy': strategy,
        'shards': shards,
        'weight_bytes_per_param': weight_bytes,
        'optimizer': optimizer,
        'optimizer_states': states,
        'weights_per_rank': math.ceil(params * weight_bytes / shards),
        'gathered_weights_per_rank': gathered,
        'training_state_per_rank': math.ceil(params * per_param / shards) + gathered,
    }


def gathered_weight_bytes(train_cfg: Any, weight_bytes: int) -> int:
    """Bytes per parameter of FSDP's gathered weights: its ``param_dtype`` (``fsdp_config.mixed_precision``
    ``DEFAULT``/``PURE`` with ``amp_*`` precision: 16 bits; ``FULL``: the master weights' dtype)."""
    mixed = (train_cfg.fsdp_config or {}).get('mixed_precision', 'DEFAULT')
    if isinstance(mixed, str):
        low = mixed.upper() in ('DEFAULT', 'PURE') and str(train_cfg.precision) in ('amp_bf16', 'amp_fp16')
    else:  # a dict of dtypes
        low = str(dict(mixed).get('param_dtype')) in STUDENT_WEIGHT_BYTES
    return min(weight_bytes, 2) if low else weight_bytes


# The estimate ---------------------------------------------------------------------------------


def teacher_usage(
    wiring: dict[str, dict[str, Any]], algorithms: dict[str, Any], tokens: int, lengths: dict[str, int]
) -> list[dict[str, Any]]:
    """One loaded teacher per (folder, dtype), shared by ``let`` and ``salt`` as in the run: which blocks it runs
    to, on how many positions of a microbatch its LM head runs, and its tokens per row (``lengths``, by algorithm).
    ``let`` with ``cross_tokenizer`` never runs the head (no CEs across tokenizers)."""
    teachers: dict[tuple[str, str], dict[str, Any]] = {}
    for name, wired in wiring.items():
        algorithm = algorithms[name]
        entry = teachers.setdefault(
            (os.path.realpath(wired['teacher']), algorithm.teacher_dtype),
            {
                'id': wired['teacher_id'],
                'folder': wired['teacher'],
                'dtype': algorithm.teacher_dtype,
                'algorithms': [],
                'layers': set(),
                'head': 0,
                'sequence_length': 0,
            },
        )
        entry['algorithms'].append(name)
        entry['sequence_length'] = max(entry['sequence_length'], lengths[name])
        final = wired['teacher_layers'] - 1
        if name == 'let':
            entry['layers'].add(wired['teacher_layer'])
            if algorithm.ce_tokens and not wired['cross_tokenizer']:  # let/teacher_ce: the head on ce_tokens rows
                entry['layers'].add(final)
                entry['head'] += min(algorithm.ce_tokens, tokens)
        else:  # salt: the final-norm state through the LM head on every position
            entry['layers'].add(final)
            entry['head'] += tokens
    return [{**entry, 'layers': sorted(entry['layers'])} for entry in teachers.values()]


def teacher_row(entry: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Parameters, FLOPs per microbatch and memory per rank of one teacher of ``teacher_usage``."""
    from composer_let.teacher import DTYPES, load_teacher_config

    config = load_teacher_config(entry['folder'])
    cost = teacher_cost(config, entry['layers'], entry['head'], batch_size, entry['sequence_length'])
    return {
        'teacher': entry['id'],
        'folder': entry['folder'],
        'algorithms': entry['algorithms'],
        'dtype': entry['dtype'],
        'architecture': f'{config.model_type}, {config.num_hidden_layers} blocks x {config.hidden_size}',
        'vocab_size': int(config.vocab_size),
        'layers_run': entry['layers'],
        'head_positions_per_microbatch': entry['head'],
        'sequence_length': entry['sequence_length'],
        **cost,
        'memory_per_rank': cost['params']['total'] * (torch.finfo(DTYPES[entry['dtype']]).bits // 8),
    }


def student_flops(model: nn.Module, params: dict[str, int], batch_size: int, seq_len: int) -> dict[str, Any]:
    """The student's FLOPs on one microbatch: counted on fake tensors, with the analytic formula beside them."""
    from composer_let.layers import find_block_list
    from composer_let.wiring import student_hidden_size

    width = student_hidden_size(model)
    try:
        layers = len(find_block_list(model)[1])
    except ValueError:  # no known block layout (let then uses student_module): read the config
        config = model.config
        layers = int(getattr(config, 'num_hidden_layers', None) or getattr(config, 'n_layers', 0))
    matmuls = params['non_embedding'] + (model_vocab_size(model) or 0) * width  # the blocks and the LM head
    analytic = 3 * analytic_forward_flops(matmuls, layers, width, batch_size, seq_len)
    try:
        counted = student_step_flops(model, batch_size, seq_len)
        method = (
            'torch.utils.flop_counter on a weightless forward (attention as full S x S matmuls); backward = 2 x forward'
        )
    except Exception as e:
        counted = {'forward': analytic // 3, 'forward_backward': analytic}
        method = f'analytic 2·params·tokens + 4·B·S²·width per layer, x3 (flop counter failed: {type(e).__name__})'
    return {**counted, 'forward_backward_analytic': analytic, 'method': method}


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def teacher_lengths(
    wiring: dict[str, dict[str, Any]], tokenizer: Any, seq_len: int, sample_text: str | None, notes: list[str]
) -> dict[str, int]:
    """The teacher's tokens per row, by algorithm: ``max_seq_len``, or with ``let``'s ``cross_tokenizer`` the
    teacher's own count of the row's text, estimated as ``max_seq_len`` x (teacher tokens / student tokens) on a
    sample text (``sample_text``, a file; default: the pydoc topics of this Python), within the teacher's context."""
    from composer_let.prep.teacher_prep import default_check_text
    from composer_let.teacher import load_teacher_config, load_teacher_tokenizer
    from composer_let.wiring import CROSS_TOKENIZER_MAX_LENGTH

    lengths = {name: seq_len for name in wiring}
    wired = wiring.get('let')
    if wired is None or not wired['cross_tokenizer']:
        return lengths
    if sample_text is None:
        text, source = default_check_text(), "this Python's pydoc topics (English prose; --sample-text FILE for yours)"
    else:
        with open(sample_text, encoding='utf-8') as f:
            text, source = f.read(), sample_text
    ratio = count_tokens(load_teacher_tokenizer(wired['teacher']), text) / count_tokens(tokenizer, text)
    context = load_teacher_config(wired['teacher']).max_position_embeddings or CROSS_TOKENIZER_MAX_LENGTH
    lengths['let'] = min(context, math.ceil(seq_len * ratio))
    notes.append(
        f'cross_tokenizer: the teacher reads its own tokens, {ratio:.3f} per student token on {source}: '
        f'{lengths["let"]} per row of {seq_len}; no LM head (no CEs across tokenizers)'
    )
    return lengths


def microbatch_shape(train_cfg: Any, notes: list[str]) -> tuple[int, int]:
    """``(device_train_microbatch_size, max_seq_len)``; ``auto`` counts as 1 (the ratio does not depend on it)."""
    microbatch = train_cfg.device_train_microbatch_size
    if not isinstance(microbatch, (int, float)):
        notes.append(f'device_train_microbatch_size={microbatch!r}: FLOPs counted for a microbatch of 1')
        microbatch = 1
    return max(1, int(microbatch)), int(train_cfg.max_seq_len)


def estimate(
    yaml_path: str, overrides: list[str], world_size: int, gpus_per_node: int, sample_text: str | None = None
) -> dict[str, Any]:
    """Run every check and compute every number; raises ``EstimateError`` naming the YAML key."""
    train_cfg = load_train_config(yaml_path, overrides, world_size)
    tokenizer, tokenizer_note = build_run_tokenizer(train_cfg)
    model, changed = build_student(train_cfg, tokenizer)
    notes = [tokenizer_note, 'student built weightless' + (f' ({", ".join(changed)})' if changed else '')]
    algorithms = build_algorithms(train_cfg)
    if not any(name in algorithms for name in CHECKED):
        raise EstimateError(f'algorithms: no let or salt block in {yaml_path}; nothing to check or estimate.')
    wiring = run_checks(algorithms, model)
    steps = schedule_steps(algorithms, train_cfg)
    batch_size, seq_len = microbatch_shape(train_cfg, notes)
    params = param_counts(model)
    vocab = model_vocab_size(model)
    lengths = teacher_lengths(wiring, tokenizer, seq_len, sample_text, notes)
    usage = teacher_usage(wiring, algorithms, batch_size * seq_len, lengths)
    teachers = [teacher_row(entry, batch_size) for entry in usage]
    for teacher in teachers:
        warning = check_vocabulary(teacher['algorithms'][0], vocab, tokenizer, teacher['vocab_size'])
        notes += [f'warning: {warning}'] if warning else []
    flops = student_flops(model, params, batch_size, seq_len)  # last: it turns the meta weights into fakes
    teacher_flops = sum(t['forward_flops'] for t in teachers)
    floor = teacher_flops / flops['forward_backward']
    fractions = [s['fraction_of_run'] for s in steps['stop'].values() if s['fraction_of_run'] is not None]
    return {
        'yaml': yaml_path,
        'overrides': overrides,
        'gpus': world_size,
        'gpus_per_node': gpus_per_node,
        'notes': notes,
        'wiring': wiring,
        'student': {
            'params': params,
            'vocab_size': vocab,
            'memory': student_memory(params['total'], train_cfg, world_size, gpus_per_node),
        },
        'teachers': teachers,
        'flops': {
            'microbatch': [batch_size, seq_len],
            'student_forward': flops['forward'],
            'student_forward_backward': flops['forward_backward'],
            'student_forward_backward_analytic': flops['forward_backward_analytic'],
            'student_method': flops['method'],
            'teacher_forward': teacher_flops,
            'overhead_floor': floor,
            'overhead_over_run': floor * max(fractions) if fractions else None,
        },
        'steps': steps,
        'batch': {
            'global_train_batch_size': train_cfg.global_train_batch_size,
            'device_train_batch_size': train_cfg.device_train_batch_size,
            'device_train_microbatch_size': train_cfg.device_train_microbatch_size,
            'device_train_grad_accum': train_cfg.device_train_grad_accum,
        },
        'activation_checkpointing': bool((train_cfg.fsdp_config or {}).get('activation_checkpointing')),
    }


# Output ---------------------------------------------------------------------------------------


def human(value: float, unit: str = '') -> str:
    """``1.42B``, ``576M``, ``49.7T`` (decimal prefixes)."""
    for factor, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'B' if not unit else 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(value) >= factor:
            return f'{value / factor:.3g}{prefix}{unit}'
    return f'{value:.3g}{unit}'


def gib(size: int) -> str:
    return f'{size / 2**30:.3g} GiB'


def params_text(params: dict[str, int]) -> str:
    return f'{params["total"]:,} total, {params["non_embedding"]:,} non-embedding'


def wiring_text(name: str, wired: dict[str, Any]) -> str:
    """Which teacher layer feeds which student block (``let``), or the vocabularies (``salt``)."""
    if name != 'let':
        return f'teacher vocabulary {wired["teacher_vocab"]}, student logits {wired["student_vocab"]}'
    blocks = '' if wired['student_blocks'] is None else f' of {wired["student_blocks"]}'
    return (
        f'teacher block {wired["teacher_layer"]} of {wired["teacher_layers"]} ({wired["teacher_width"]} wide) -> '
        f'student {wired["student_module"]}{blocks} ({wired["student_width"]} wide), {wired["projection"]}'
    )


def flop_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    flops = report['flops']
    batch, seq = flops['microbatch']
    rows = [
        ('microbatch', f'{batch} x {seq} tokens (device_train_microbatch_size x max_seq_len)'),
        ('student forward+backward', f'{human(flops["student_forward_backward"], "FLOP")} per microbatch'),
        ('teacher forward', f'{human(flops["teacher_forward"], "FLOP")} per microbatch'),
        ('teacher share (overhead floor)', f'{flops["overhead_floor"]:.1%} of a student step while the teacher runs'),
    ]
    if flops['overhead_over_run'] is not None:
        rows.append(('teacher FLOPs over the run', f'{flops["overhead_over_run"]:.2%} (floor x S_stop / duration)'))
    fallbacks = [t['flops_method'] for t in report['teachers'] if t['flops_method'] != 'counted']
    rows.append(('FLOPs counted by', '; '.join([flops['student_method'], *fallbacks])))
    return rows


def memory_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    memory = report['student']['memory']
    rows = [
        (
            f'teacher ({"+".join(t["algorithms"])}) memory per rank',
            f'{gib(t["memory_per_rank"])} ({t["dtype"]} weights; every rank holds a full replica)',
        )
        for t in report['teachers']
    ]
    shards = f'{memory["strategy"]} over {memory["shards"]} rank(s)'
    rows.append(
        (
            'student weights per rank',
            f'{gib(memory["weights_per_rank"])} ({memory["weight_bytes_per_param"]} B/param, {shards})',
        )
    )
    optimizer = f'{memory["optimizer"] or "optimizer"}: {memory["optimizer_states"]} states'
    if memory['gathered_weights_per_rank']:
        optimizer += f'; with {gib(memory["gathered_weights_per_rank"])} of full weights gathered forward to backward'
    rows.append(
        (
            'student weights+grads+optimizer',
            f'{gib(memory["training_state_per_rank"])} per rank ({optimizer}; no activations)',
        )
    )
    return rows


def step_rows(steps: dict[str, Any]) -> list[tuple[str, str]]:
    total, tokens = steps['max_batches'], steps['tokens_per_batch']
    duration = steps['max_duration']
    if total is not None:
        duration += f' = {math.ceil(total):,} batches ({human(total * tokens)} tokens)'
    rows = [('max_duration', duration)]
    for name, stop in steps['stop'].items():
        if stop['batches'] is None:
            value = f'{stop["stop"]}: not resolvable in batches without the dataset size'
        else:
            value = f'{stop["stop"]} = step {stop["batches"]:,} ({human(stop["batches"] * tokens)} tokens'
            value += ')' if stop['fraction_of_run'] is None else f', {stop["fraction_of_run"]:.0%} of the run)'
        rows.append((f'{name} stop (S_stop: teacher released)', value))
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The estimate as a Markdown table, with the notes under it."""
    rows = [('student parameters', params_text(report['student']['params']))]
    rows += [(f'{name} wiring', wiring_text(name, wired)) for name, wired in report['wiring'].items()]
    for t in report['teachers']:
        label = f'teacher ({"+".join(t["algorithms"])})'
        rows.append((label, f'{t["teacher"]}: {t["architecture"]}, vocabulary {t["vocab_size"]:,}'))
        rows.append((f'{label} parameters', params_text(t['params'])))
    rows += flop_rows(report) + memory_rows(report) + step_rows(report['steps'])
    width = max(len(name) for name, _ in rows)
    lines = [f'| {"quantity".ljust(width)} | value |', f'| {"-" * width} | --- |']
    lines += [f'| {name.ljust(width)} | {value} |' for name, value in rows]
    batch = report['batch']
    notes = [
        *report['notes'],
        f'{report["gpus"]} GPU(s): global batch {batch["global_train_batch_size"]}, {batch["device_train_batch_size"]} '
        f'per rank, grad accumulation {batch["device_train_grad_accum"]}; tokens = batches x global_train_batch_size '
        'x max_seq_len',
    ]
    if report['activation_checkpointing']:
        notes.append(
            'activation checkpointing recomputes the student forward: the real share is about 3/4 of the floor'
        )
    return '\n'.join([*lines, '', *(f'- {note}' for note in notes)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('yaml', help='llm-foundry train YAML')
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides, as for scripts/train.py')
    parser.add_argument('--gpus', type=int, default=8, help='world size of the planned run (default: 8)')
    parser.add_argument('--gpus-per-node', type=int, default=8, help='for HYBRID_SHARD (default: 8)')
    parser.add_argument('--json', metavar='PATH', help='also write the numbers as JSON')
    parser.add_argument(
        '--sample-text',
        metavar='FILE',
        help="with cross_tokenizer: text to measure the tokenizers' relative token counts on (default: pydoc topics)",
    )
    parser.add_argument('--verbose', action='store_true', help="show llm-foundry's and transformers' warnings")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.gpus_per_node < 1:
        parser.error('--gpus and --gpus-per-node must be >= 1')
    return args


def silence_libraries(stack: contextlib.ExitStack, loggers: tuple[str, ...]) -> None:
    """For the life of ``stack``: no Python warnings, and only errors from these libraries' loggers."""
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter('ignore')
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the checks' outcome and the cost table; exit with status 1 and the YAML key on a failed check."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.verbose:
            silence_libraries(stack, ('llmfoundry', 'transformers', 'composer'))
        try:
            report = estimate(args.yaml, args.overrides, args.gpus, args.gpus_per_node, args.sample_text)
        except EstimateError as e:
            print(f'estimate.py: error: {e}', file=sys.stderr)
            raise SystemExit(1) from None
    print(f'{args.yaml}: the let/salt INIT checks pass.\n')
    print(format_table(report))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2, default=str)
            f.write('\n')
    return report


if __name__ == '__main__':
    main()
