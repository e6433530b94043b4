"""Measure the alignment strength an llm-foundry YAML's ``let`` block applies, on CPU, before renting GPUs.

    python scripts/check_strength.py yamls/gpu/llama1.4b-let-smollm2.yaml variables.teacher=work/teacher \\
        [key=value ...] [--batches 3] [--targets 0.1,0.3,1,3,10] [--json strength.json]

The YAML and its overrides go through llm-foundry's config handling (as ``train_from_yaml``, via
``scripts/estimate.py``). The student is built at its real size on CPU with its real initialisation
(same seed; flash attention -> sdpa/torch, fused CE -> torch CE; fp32, or bf16 weights when fp32 does
not fit ``--max-memory``), its parameters frozen. ``algorithms.let`` (and ``salt``) are constructed
from llm-foundry's registry and driven through a Trainer's events on a real Composer ``State`` (INIT
checks, teacher loading, alignment loss, metrics), without an optimizer step: the hooked block's output
is made an autograd leaf, so the backward runs through the blocks after it only.

Data: the YAML's ``train_loader`` when its MDS shards are local; else (remote or absent) text tokenized
with the run's tokenizer (the teacher's), packed into rows of ``max_seq_len``: ``--text FILE``,
``../shared/data/text/wikitext2-*.txt``, or Python's pydoc topics. A batch is the YAML's per-rank batch,
capped at ``--tokens`` (default 4096 = 2 x 2048): the ratio is one of norms, so a small batch suffices.

Printed (and written with ``--json``): ``let/grad_ratio`` per batch at the λ the run's first batch
applies (``lambda0``; ``strength: relative`` starts at 1e-3), the pull per unit λ (``grad_ratio / λ``),
and the λ0 that would start the run at each target ratio. Exit status 1 with the YAML key on bad input;
2 when the check needs more memory than ``--max-memory`` (the need is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import estimate  # scripts/estimate.py: config, tokenizer, weightless student, registry)

DTYPE_BYTES = {'fp32': 4, 'bf16': 2}


class NeedsMemory(Exception):
    """The check does not fit the memory budget; the message says what it needs."""


def parse_targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'--targets {text!r}: a comma list of numbers, e.g. 0.1,1,10') from None
    if not targets or any(t <= 0 or not math.isfinite(t) for t in targets):
        raise argparse.ArgumentTypeError(f'--targets {text!r}: every target ratio must be > 0')
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from composer_let.strength_check import DEFAULT_TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('yaml', help='llm-foundry train YAML with an algorithms.let block')
    parser.add_argument('overrides', nargs='*', help='dotted key=value overrides, as for scripts/train.py')
    parser.add_argument('--batches', type=int, default=3, help='batches to measure (default: 3)')
    parser.add_argument(
        '--targets',
        type=parse_targets,
        default=list(DEFAULT_TARGETS),
        help='target let/grad_ratio values to convert to λ0 (default: 0.1,0.3,1,3,10)',
    )
    parser.add_argument('--tokens', type=int, default=4096, help='cap on tokens per batch (default: 4096)')
    parser.add_argument('--batch-size', type=int, help='rows per batch (default: the per-rank batch, capped)')
    parser.add_argument('--microbatch-size', type=int, help='rows per forward (default: up to 2048 tokens)')
    parser.add_argument('--seq-len', type=int, help="tokens per row (default: the YAML's max_seq_len)")
    parser.add_argument('--text', help='text file for the fallback data (default: WikiText-2 from ../shared)')
    parser.add_argument('--dtype', choices=('auto', 'fp32', 'bf16'), default='auto', help='student weights')
    parser.add_argument(
        '--precision',
        choices=('yaml', 'fp32', 'amp_bf16'),
        default='yaml',
        help="compute precision (default: the YAML's precision; amp_bf16 runs under CPU bf16 autocast)",
    )
    parser.add_argument('--max-memory', type=float, default=24.0, help='GiB budget (default: 24, capped by free)')
    parser.add_argument('--json', metavar='PATH', help='also write the numbers as JSON')
    parser.add_argument('--verbose', action='store_true', help="show llm-foundry's and transformers' warnings")
    args = parser.parse_args(argv)
    for flag in ('batches', 'tokens', 'batch_size', 'microbatch_size', 'seq_len'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f'--{flag.replace("_", "-")} must be >= 1')
    return args


# Plan -----------------------------------------------------------------------------------------


def batch_shape(train_cfg: Any, args: argparse.Namespace) -> tuple[int, int, int]:
    """``(rows, seq_len, microbatch_rows)`` of each measured batch."""
    dataset = (train_cfg.train_loader or {}).get('dataset') or {}
    seq_len = args.seq_len or int(dataset.get('max_seq_len') or train_cfg.max_seq_len)
    per_rank = train_cfg.device_train_batch_size
    rows = args.batch_size or max(1, min(int(per_rank), args.tokens // seq_len))
    microbatch = train_cfg.device_train_microbatch_size
    yaml_microbatch = int(microbatch) if isinstance(microbatch, (int, float)) else rows
    microbatch_rows = args.microbatch_size or max(1, min(rows, yaml_microbatch, 2048 // seq_len))
    return rows, seq_len, min(microbatch_rows, rows)


def explicit_attention(model_cfg: dict[str, Any]) -> bool:
    """Whether the student keeps S x S attention matrices for the backward (MPT's torch attention)."""
    attn = model_cfg.get('attn_config')
    return isinstance(attn, dict) and attn.get('attn_impl') in ('flash', 'torch')  # flash runs as torch here


def student_heads(model: Any) -> int:
    config = getattr(getattr(model, 'model', model), 'config', None)
    return int(getattr(config, 'num_attention_heads', None) or getattr(config, 'n_heads', 0) or 0)


def precision_plan(train_cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """How the run computes, as this check reproduces it on CPU.

    ``autocast``: the forward and the loss under bf16 autocast (``amp_bf16``; Composer's precision context).
    ``weights``: the dtype the run's forward reads its weights in: bf16 under FSDP's ``DEFAULT``/``PURE``
    mixed precision with ``amp_*`` (``estimate.gathered_weight_bytes``) or ``master_weights_dtype: bf16``,
    else fp32.
    """
    precision = str(train_cfg.precision if args.precision == 'yaml' else args.precision)
    autocast = precision in ('amp_bf16', 'amp_fp8')  # fp8 runs its matmuls on GPUs only: bf16 here
    weight_bytes = estimate.STUDENT_WEIGHT_BYTES.get(str(train_cfg.model.get('master_weights_dtype')), 4)
    if train_cfg.fsdp_config and args.precision == 'yaml':
        weight_bytes = estimate.gathered_weight_bytes(train_cfg, weight_bytes)
    weights = 'bf16' if weight_bytes == 2 else 'fp32'
    if precision == 'amp_fp16':
        note = 'amp_fp16: fp32 on CPU (fp16 autocast is for GPUs)'
    elif autocast:
        note = f'{precision}: forward and loss under bf16 autocast'
    else:
        note = f'{precision}: fp32'
    return {'autocast': autocast, 'weights': weights, 'note': note}


def need_for(plan: dict[str, Any], dtype: str, seq_len: int, microbatch_rows: int) -> dict[str, int]:
    """The memory need of the check with ``dtype`` weights and microbatches of ``microbatch_rows`` x ``seq_len``."""
    from composer_let.strength_check import memory_need

    compute = 'bf16' if dtype == 'bf16' or plan['precision']['autocast'] else 'fp32'
    attention = 2 * plan['heads'] * seq_len * seq_len * microbatch_rows if plan['explicit_attention'] else 0
    return memory_need(
        plan['params'],
        DTYPE_BYTES[dtype],
        DTYPE_BYTES[compute],
        plan['teacher_bytes'],
        plan['shape'],
        microbatch_rows * seq_len,
        attention,
    )


def plan_memory(args: argparse.Namespace, plan: dict[str, Any]) -> tuple[str, dict[str, int], int]:
    """The weight dtype (the run's, unless only bf16 fits), its memory need and the budget; raises ``NeedsMemory``.

    The budget is ``--max-memory``, or less when less is available now.
    """
    from composer_let.strength_check import GIB, available_memory

    free = available_memory()
    budget = int(args.max_memory * GIB) if free is None else min(int(args.max_memory * GIB), free)
    preferred = plan['precision']['weights'] if args.dtype == 'auto' else args.dtype
    candidates = [preferred, 'bf16'] if args.dtype == 'auto' and preferred == 'fp32' else [preferred]
    need: dict[str, int] = {}
    for dtype in candidates:
        need = need_for(plan, dtype, plan['seq_len'], plan['microbatch_rows'])
        if need['total'] <= budget:
            return dtype, need, budget
    dtype = candidates[-1]
    parts = ', '.join(f'{k.replace("_", " ")} {v / GIB:.1f}' for k, v in need.items() if k != 'total')
    free_text = '' if free is None else f', {free / GIB:.1f} GiB available now'
    lines = [
        f'the check needs ~{need["total"] / GIB:.1f} GiB with {dtype} weights ({parts} GiB; microbatches of '
        f'{plan["microbatch_rows"]} x {plan["seq_len"]} tokens), over its budget of {budget / GIB:.1f} GiB '
        f'(--max-memory {args.max_memory:g}{free_text}).'
    ]
    seq_len = plan['seq_len'] // 2
    while seq_len >= 128:
        shorter = need_for(plan, dtype, seq_len, 1)['total']
        if shorter <= budget:
            lines.append(
                f'Shorter rows need less (the activations): --seq-len {seq_len} --microbatch-size 1 needs '
                f'~{shorter / GIB:.1f} GiB.'
            )
            break
        seq_len //= 2
    else:
        lines.append('Free memory or raise --max-memory.')
    raise NeedsMemory(' '.join(lines))


def teacher_bytes(folder: str, dtype: str) -> int:
    """The teacher's weights in ``teacher_dtype``, counted on its weightless skeleton."""
    import torch

    from composer_let.teacher import DTYPES, load_teacher_config, shapes_only, teacher_skeleton

    with shapes_only():
        params = sum(p.numel() for p in teacher_skeleton(load_teacher_config(folder)).parameters())
    return params * (torch.finfo(DTYPES[dtype]).bits // 8)


def plan_check(yaml_path: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Config, tokenizer, algorithms and every INIT check on a weightless student; sizes for the memory plan."""
    from composer_let.strength_check import StrengthCheckError
    from composer_let.teacher import TeacherError, resolve_teacher

    train_cfg = estimate.load_train_config(yaml_path, overrides, world_size=1)
    algorithms = estimate.build_algorithms(train_cfg)
    let = algorithms.get('let')
    if let is None:
        raise StrengthCheckError(
            f"algorithms.let: {yaml_path} has no let block; this checks the strength of LET's alignment. "
            'Add an algorithms.let block (see README).'
        )
    if let.lambda0 == 0:
        raise StrengthCheckError(
            'algorithms.let.lambda0=0 applies no alignment, so there is no pull to measure. Set lambda0 > 0 '
            '(e.g. 1): the pull per unit λ does not depend on it.'
        )
    try:
        resolve_teacher(let.teacher)
    except TeacherError as e:
        raise StrengthCheckError(f'algorithms.let.{e} In the shipped YAMLs: variables.teacher=<folder>.') from None
    tokenizer, note = estimate.build_run_tokenizer(train_cfg)
    if tokenizer is None:
        raise StrengthCheckError(
            f'{note.split(": tokenizer contract")[0]}. The data is tokenized with it: point tokenizer.name at a '
            'local folder (in the shipped YAMLs it follows variables.teacher).'
        )
    meta, _ = estimate.build_student(train_cfg, tokenizer)
    try:
        wiring = let.check(meta)  # the INIT checks (again at INIT on the real student)
    except Exception as e:
        raise StrengthCheckError(estimate.keyed('algorithms.let', e)) from e
    index = wiring['student_module'].rsplit('.', 1)[-1]
    blocks = wiring['student_blocks']
    rows, seq_len, microbatch_rows = batch_shape(train_cfg, args)
    return {
        'train_cfg': train_cfg,
        'algorithms': {k: v for k, v in algorithms.items() if k in estimate.CHECKED},
        'let': let,
        'tokenizer': tokenizer,
        'wiring': wiring,
        'params': estimate.param_counts(meta)['total'],
        'width': wiring['student_width'],
        'shape': {
            'width': wiring['student_width'],
            'vocab': estimate.model_vocab_size(meta) or len(tokenizer),
            'blocks': blocks or 1,
            'blocks_after': blocks - 1 - int(index) if blocks is not None and index.isdigit() else (blocks or 1),
        },
        'heads': student_heads(meta),
        'explicit_attention': explicit_attention(train_cfg.model),
        'precision': precision_plan(train_cfg, args),
        'teacher_bytes': teacher_bytes(wiring['teacher'], let.teacher_dtype),
        'rows': rows,
        'seq_len': seq_len,
        'microbatch_rows': microbatch_rows,
    }


# Run ------------------------------------------------------------------------------------------


def data_loader(plan: dict[str, Any], args: argparse.Namespace, scratch: Path) -> tuple[Any, str]:
    """The measured batches' DataSpec and where they come from."""
    from composer_let.strength_check import build_loader, fallback_text, loader_config, local_mds, write_text_shards

    train_cfg, seq_len, rows = plan['train_cfg'], plan['seq_len'], plan['rows']
    loader = dict(train_cfg.train_loader)
    dataset = dict(loader.get('dataset') or {})
    local = local_mds(dataset) if loader.get('name') == 'text' else None
    if local is not None:
        cfg = loader_config(loader, seq_len)
        if args.seq_len:
            cfg['dataset'] = {**cfg['dataset'], 'max_seq_len': seq_len}
        return build_loader(cfg, plan['tokenizer'], rows), f"the YAML's train_loader ({local})"
    text, source = fallback_text(args.text)
    write_text_shards(scratch, plan['tokenizer'], text, seq_len, rows * args.batches)
    where = dataset.get('remote') or dataset.get('local') or dataset.get('hf_name') or loader.get('name')
    return build_loader(loader_config(loader, seq_len, str(scratch)), plan['tokenizer'], rows), (
        f"{source}, tokenized with the run's tokenizer (the YAML's data, {where}, is not here)"
    )


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, build, measure; returns the report."""
    import torch
    from composer.utils import reproducibility

    from composer_let.algorithm import RELATIVE_FIRST_WEIGHT
    from composer_let.strength_check import build_student, lambda0_for_ratio, measure, peak_rss, pulls

    start = time.perf_counter()
    plan = plan_check(args.yaml, args.overrides, args)
    dtype, need, budget = plan_memory(args, plan)
    train_cfg, let, wiring, precision = plan['train_cfg'], plan['let'], plan['wiring'], plan['precision']
    # Initialise in fp32 (the run's draw) unless fp32 weights alone would not fit.
    init = 'fp32' if plan['params'] * 4 + need['base'] + need['teacher_weights'] <= budget else dtype
    weights_note = f'{dtype} weights' + (f' (initialised in {init})' if init != dtype else '')
    if dtype != precision['weights']:
        weights_note += f'; the run reads {precision["weights"]} weights, which do not fit here'
    elif dtype == 'bf16':
        weights_note += ', as the run reads them (FSDP mixed precision or master_weights_dtype)'
    print(f'{args.yaml}: the let INIT checks pass.', flush=True)
    with tempfile.TemporaryDirectory(prefix='check-strength-') as scratch:
        reproducibility.seed_all(train_cfg.seed)  # as train(): seed, the train loader, then the model
        spec, source = data_loader(plan, args, Path(scratch))
        built = time.perf_counter()
        dtypes = {'fp32': torch.float32, 'bf16': torch.bfloat16}
        model, changed = build_student(train_cfg, plan['tokenizer'], dtypes[dtype], dtypes[init])
        build_seconds = time.perf_counter() - built
        print(header(args, plan, weights_note, need, changed, source, build_seconds), flush=True)
        print('| batch | let/lambda | let/grad_ratio | pull per unit λ | let/grad_cos | let/cosine | seconds |')
        print('| --- | --- | --- | --- | --- | --- | --- |', flush=True)
        clock = [time.perf_counter()]

        def show(index: int, row: dict[str, float]) -> None:
            now = time.perf_counter()
            lam = row.get('let/lambda', 0.0)
            pull = row.get('let/grad_ratio', math.nan) / lam if lam else math.nan
            print(
                f'| {index + 1} | {lam:.4g} | {row.get("let/grad_ratio", math.nan):.4g} | {pull:.4g} | '
                f'{row.get("let/grad_cos", math.nan):.3f} | {row.get("let/cosine", math.nan):.4f} | '
                f'{now - clock[0]:.0f} |',
                flush=True,
            )
            clock[0] = now

        rows = measure(
            model,
            list(plan['algorithms'].values()),
            spec,
            batches=args.batches,
            microbatch_rows=plan['microbatch_rows'],
            seed=train_cfg.seed,
            max_duration=train_cfg.max_duration,
            hooked=wiring['student_module'],
            autocast=torch.bfloat16 if precision['autocast'] else None,
            on_batch=show,
        )
        del spec
    per_batch = pulls(rows)
    pull = sum(per_batch) / len(per_batch)
    report = {
        'yaml': args.yaml,
        'overrides': args.overrides,
        'grad_ratio': [row['let/grad_ratio'] for row in rows],
        'lambda': [row['let/lambda'] for row in rows],
        'pull_per_lambda': per_batch,
        'pull_per_lambda_mean': pull,
        'lambda0': let.lambda0,
        'strength': let.strength,
        'grad_ratio_target': let.grad_ratio,
        'first_lambda': let.lambda0 if let.strength == 'absolute' else RELATIVE_FIRST_WEIGHT,
        'width': plan['width'],
        'lambda0_for_ratio': {f'{t:g}': v for t, v in lambda0_for_ratio(pull, args.targets).items()},
        'grad_cos': [row.get('let/grad_cos') for row in rows],
        'cosine': [row.get('let/cosine') for row in rows],
        'teacher_ce': [row.get('let/teacher_ce') for row in rows],
        'student_ce': [row.get('let/student_ce') for row in rows],
        'teacher': let.teacher,
        'teacher_layer': wiring['teacher_layer'],
        'teacher_width': wiring['teacher_width'],
        'student_module': wiring['student_module'],
        'student_blocks': wiring['student_blocks'],
        'student_params': plan['params'],
        'projection': wiring['projection'],
        'loss': let.loss,
        'algorithms': list(plan['algorithms']),
        'batch': {'rows': plan['rows'], 'seq_len': plan['seq_len'], 'microbatch_rows': plan['microbatch_rows']},
        'data': source,
        'weights': weights_note,
        'precision': precision['note'],
        'model_changes': changed,
        'memory_need_bytes': need,
        'memory_budget_bytes': budget,
        'peak_rss_bytes': peak_rss(),
        'build_seconds': build_seconds,
        'wall_seconds': time.perf_counter() - start,
    }
    return report


def header(
    args: argparse.Namespace,
    plan: dict[str, Any],
    weights: str,
    need: dict[str, int],
    changed: list[str],
    source: str,
    build_seconds: float,
) -> str:
    from composer_let.strength_check import GIB

    let, wiring, train_cfg = plan['let'], plan['wiring'], plan['train_cfg']
    strength = (
        f'absolute, lambda0 {let.lambda0:g}'
        if let.strength == 'absolute'
        else f'relative, grad_ratio {let.grad_ratio:g} (the first batch runs at λ = 1e-3)'
    )
    yaml_batch = f'{train_cfg.device_train_batch_size} x {train_cfg.max_seq_len} per rank on 1 rank'
    lines = [
        f'- student: {plan["params"]:,} parameters, width {plan["width"]}, built on cpu in {build_seconds:.0f} s '
        f'with {weights}' + (f' ({"; ".join(changed)})' if changed else ''),
        f'- precision: {plan["precision"]["note"]}',
        f'- let: {estimate.wiring_text("let", wiring)}, loss {let.loss}; strength {strength}',
        f'- data: {source}',
        f'- batch: {plan["rows"]} x {plan["seq_len"]} tokens in microbatches of {plan["microbatch_rows"]} row(s) '
        f'(YAML: {yaml_batch}; the ratio is one of norms)',
        f'- memory planned: ~{need["total"] / GIB:.1f} GiB',
    ]
    if 'salt' in plan['algorithms']:
        lines.append('- salt runs too: the rest of the loss (L_rest) includes its distillation term, as in the run')
    return '\n'.join(['', *lines, ''])


def summary(report: dict[str, Any]) -> str:
    from composer_let.strength_check import GIB

    pull = report['pull_per_lambda_mean']
    lines = [
        '',
        f'pull per unit λ (let/grad_ratio / λ, mean of {len(report["grad_ratio"])} batches): {pull:.4g}',
    ]
    if report['strength'] == 'absolute':
        lines.append(f"let/grad_ratio at the YAML's lambda0 {report['lambda0']:g}: {report['lambda0'] * pull:.4g}")
    else:
        target = report['grad_ratio_target']
        lines.append(f'strength: relative, grad_ratio {target:g}: λ settles near {target / pull:.4g}')
    lines.append('λ0 for a starting let/grad_ratio of:')
    lines += [f'  {target}: lambda0 = {value:.4g}' for target, value in report['lambda0_for_ratio'].items()]
    lines.append(
        f'wall time {report["wall_seconds"]:.0f} s (student build {report["build_seconds"]:.0f} s), '
        f'peak RSS {report["peak_rss_bytes"] / GIB:.1f} GiB'
    )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the measurement; exit 1 with the YAML key on bad input, 2 when memory does not suffice."""
    from composer_let.strength_check import StrengthCheckError

    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.verbose:
            estimate.silence_libraries(stack, ('llmfoundry', 'transformers', 'composer', 'streaming', 'composer_let'))
        try:
            report = run_check(args)
        except (estimate.EstimateError, StrengthCheckError) as e:
            print(f'check_strength.py: error: {e}', file=sys.stderr)
            raise SystemExit(1) from None
        except NeedsMemory as e:
            print(f'{args.yaml}: {e}')
            raise SystemExit(2) from None
    print(summary(report))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
            f.write('\n')
    return report


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    main()
