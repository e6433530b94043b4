"""One GPU check: the environment, LET's cost on the 1.4B target, LET's correctness under bf16/CUDA.

    bash scripts/gpu_check.sh [--out runs/gpu_check]     # one CUDA GPU, offline, ~4 min (estimated: docs/gpu-check.md)
    bash scripts/gpu_check.sh --cpu-smoke --out /tmp/gc   # no GPU: the same path at tiny sizes in fp32

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` and prints the table:

1. Environment: device, versions, bf16 support, flash-attn. Nothing is installed: what is missing
   is reported, and without flash-attn the runs use ``sdpa`` attention.
2. Cost: ``yamls/gpu/llama1.4b-let-smollm2.yaml`` through llm-foundry's ``train_from_yaml`` with
   overrides only (local stdlib shards, fewer steps, batch sizes for one GPU, ``stop: <k>ba``); the
   baseline is the same YAML without ``algorithms.let``. The teacher is ``work/teacher`` when it
   exists (``--teacher``), else a random-init SmolLM2-135M-shaped Llama. Both arms run in their own
   process, taking strict turns at every batch (bench/overhead.py's baton, the order rotating), so
   per-turn step-time ratios cancel contention. Reported: the median ratio while the teacher is
   active and after ``stop``, tokens/s, MFU of the student's FLOPs against ``--peak-tflops``, peak
   memory of both arms, ``let/grad_ratio`` on the first batches and the teacher's share of a step.
3. Correctness: LET with λ0 = 0 (a third run, after the two) gives the baseline's losses within the
   precision's noise; ``let/cosine`` rises over the active steps, above the λ0 = 0 run's; the
   teacher is freed at ``stop`` (nothing references it; on CUDA, allocated memory drops by its size).

Exit status 0 when every part ran and every check passed, 1 otherwise (a failed part is recorded in
the JSON's ``errors`` and the rest still runs), 2 without CUDA and without ``--cpu-smoke``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import overhead  # noqa: E402  (the baton that interleaves the arms, and its ratio summary)
from common import current_rss_mb, param_counts, peak_rss_mb, write_json  # noqa: E402

YAML = ROOT / 'yamls' / 'gpu' / 'llama1.4b-let-smollm2.yaml'
PREPARED_TEACHER = ROOT / 'work' / 'teacher'  # scripts/prepare_teacher.py's (and the quickstart's) output
PEAK_TFLOPS = 989.0  # H100/H200 SXM, dense bf16
NO_CUDA = (
    'gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU, '
    'or pass --cpu-smoke for the same path at tiny sizes on CPU.'
)
ARMS = ('baseline', 'let')  # in lockstep; then LAMBDA0_ZERO on its own
LAMBDA0_ZERO = 'let-lambda0'
SERIES = ('loss/train/total', 'let/lambda', 'let/cosine', 'let/grad_ratio')
FSDP_NOTE = (
    'llm-foundry 0.22 drops fsdp_config when the world size is 1 ("FSDP is not applicable for single-GPU '
    'training. Reverting to DDP.", llmfoundry/command_utils/train.py), so the YAML\'s FULL_SHARD, PURE mixed '
    'precision and activation checkpointing are not exercised on one device'
)
SMOLLM2 = {'vocab': 49152, 'hidden': 576, 'intermediate': 1536, 'layers': 30, 'heads': 9, 'kv_heads': 3}


@dataclass(frozen=True)
class Plan:
    """Sizes and steps of a check. The GPU plan keeps the YAML's 1.4B model; the smoke shrinks everything."""

    seq: int = 2048
    batch: int = 8  # global_train_batch_size: 16,384 tokens per step
    microbatch: int = 2  # device_train_microbatch_size; the memory estimate is in docs/gpu-check.md
    warmup: int = 4  # untimed first steps (allocator, kernel selection); also the LR warmup
    active: int = 40  # timed steps with the teacher: stop = warmup + active
    settle: int = 2  # untimed steps after stop (the release)
    after: int = 20  # timed steps after stop
    precision: str = 'amp_bf16'
    lambda0: float | None = None  # None: the YAML's strength (relative, grad_ratio 3)
    num_workers: int = 2
    teacher: dict[str, int] = field(default_factory=lambda: dict(SMOLLM2))  # a random teacher's shape
    tokenizer_vocab: int = 4096  # a random teacher's tokenizer; its config keeps teacher['vocab'] rows
    text_bytes: int = 10_000_000  # of the Python stdlib's top-level modules (~4.7 MB in all)
    student: dict[str, int] | None = None  # None: the YAML's dims

    @property
    def stop(self) -> int:
        return self.warmup + self.active

    @property
    def total(self) -> int:
        return self.stop + self.settle + self.after


GPU = Plan()
CPU_SMOKE = Plan(
    seq=64,
    batch=4,
    microbatch=2,
    warmup=1,
    active=8,
    settle=1,
    after=4,
    precision='fp32',  # Composer refuses amp_bf16 on CPU
    # In one run at the paper's λ0 = 0.1 these 8 tiny steps ended with let/cosine below its start (0.035 -> 0.020),
    # above λ0 = 0's (0.011): too weak to rise within the smoke. λ0 = 1 rises (0.030 -> 0.073, λ0 = 0: 0.028).
    lambda0=1.0,
    num_workers=0,
    teacher={'vocab': 512, 'hidden': 32, 'intermediate': 64, 'layers': 2, 'heads': 2, 'kv_heads': 2},
    tokenizer_vocab=512,
    text_bytes=300_000,
    student={'hidden': 64, 'intermediate': 128, 'layers': 4, 'heads': 2},
)


# Part 1: environment ---------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Device, versions, bf16, flash-attn, the attention the runs will use and what is missing."""
    import composer
    import llmfoundry
    import torch
    import transformers
    from llmfoundry.models.layers.attention import is_flash_v2_installed

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        'cuda': cuda,
        'device': torch.cuda.get_device_name(0) if cuda else 'cpu',
        'versions': {
            'torch': torch.__version__,
            'cuda': torch.version.cuda,
            'composer': composer.__version__,
            'llm-foundry': llmfoundry.__version__,
            'transformers': transformers.__version__,
        },
        'bf16_supported': torch.cuda.is_bf16_supported() if cuda else None,
        'cpu_count': os.cpu_count(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(capability=f'{props.major}.{props.minor}', memory_gib=props.total_memory / 2**30)
    flash: dict[str, Any] = {'installed': importlib.util.find_spec('flash_attn') is not None}
    if flash['installed']:
        try:
            import flash_attn

            flash['version'] = flash_attn.__version__
        except Exception as e:  # installed but broken, e.g. built for another torch
            flash['import_error'] = f'{type(e).__name__}: {e}'[:300]
    flash['usable'] = bool(is_flash_v2_installed())  # what llm-foundry checks for use_flash_attention_2
    env['flash_attn'] = flash
    env['attention'] = 'flash_attention_2' if cuda and flash['usable'] else 'sdpa'
    env['missing'] = [] if flash['usable'] else ['flash-attn 2 (llm-foundry[gpu]): the runs use sdpa attention']
    if cuda and not env['bf16_supported']:
        env['missing'].append('bf16 on this device: amp_bf16 fails')
    return env


# Assets ------------------------------------------------------------------------------------------


def build_assets(plan: Plan, folder: Path, teacher: Path | None) -> dict[str, Any]:
    """MDS shards of the stdlib's source, the baseline YAML, and ``teacher`` or a random-init one (cached).

    A random teacher gets a small BPE tokenizer (``plan.tokenizer_vocab`` tokens) and a config with
    ``plan.teacher['vocab']`` rows, so the student built from its config has the real vocabulary.
    """
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from composer_let.prep.tiny import build_tokenizer, stdlib_texts, write_token_shards

    shape = plan.teacher
    name = 'prepared' if teacher else 'random-' + '-'.join(map(str, shape.values()))
    folder = folder / f'{name}-v{plan.tokenizer_vocab}-s{plan.seq}-t{plan.text_bytes}'
    sizes = f'{shape["layers"]} blocks x {shape["hidden"]}, vocabulary {shape["vocab"]:,}'
    random_kind = f'SmolLM2-135M-shaped ({sizes})' if shape == SMOLLM2 else f'Llama ({sizes})'
    assets = {
        'teacher': teacher.resolve() if teacher else folder / 'teacher',
        'teacher_kind': f'prepared ({teacher})' if teacher else f'random-init, {random_kind}',
        'data': folder / 'data',
        'baseline_yaml': folder / 'baseline.yaml',
    }
    if (folder / 'ready').exists():
        return assets
    texts = stdlib_texts(plan.text_bytes)
    if teacher:
        tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    else:
        tokenizer = build_tokenizer(folder / 'tokenizer', texts[: len(texts) // 4 + 1], plan.tokenizer_vocab)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=shape['vocab'],
            hidden_size=shape['hidden'],
            intermediate_size=shape['intermediate'],
            num_hidden_layers=shape['layers'],
            num_attention_heads=shape['heads'],
            num_key_value_heads=shape['kv_heads'],
            head_dim=shape['hidden'] // shape['heads'],
            max_position_embeddings=max(8192, plan.seq),
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(assets['teacher']))
        tokenizer.save_pretrained(str(assets['teacher']))
    write_token_shards(assets['data'], tokenizer, texts, seq_len=plan.seq, splits={'train': 1.0})
    cfg = OmegaConf.load(YAML)
    del cfg.algorithms['let']  # gradient clipping stays: both arms clip
    OmegaConf.save(cfg, assets['baseline_yaml'])
    (folder / 'ready').touch()
    return assets


def yaml_overrides(plan: Plan, assets: dict[str, Any], attention: str, arm: str) -> list[str]:
    """Command-line overrides of the 1.4B YAML for one arm; everything else is the YAML's."""
    args = [
        f'variables.teacher={assets["teacher"]}',
        f'variables.data_local={assets["data"]}',
        'variables.data_remote=null',
        f'variables.max_seq_len={plan.seq}',
        f'variables.run_name=gpu-check-{arm}',
        'model.init_device=cpu',  # the YAML's 'mixed' needs FSDP, which llm-foundry drops on one device
        f'model.use_flash_attention_2={str(attention == "flash_attention_2").lower()}',
        *(['model.attn_implementation=sdpa'] if attention == 'sdpa' else []),
        'eval_loader=null',
        f'train_loader.num_workers={plan.num_workers}',
        *([] if plan.num_workers else ['train_loader.prefetch_factor=null', 'train_loader.persistent_workers=false']),
        f'max_duration={plan.total}ba',
        f'scheduler.t_warmup={plan.warmup}ba',
        f'global_train_batch_size={plan.batch}',
        f'device_train_microbatch_size={plan.microbatch}',
        f'precision={plan.precision}',
        'save_folder=null',
        'autoresume=false',
        'log_to_console=false',
        'python_log_level=warning',
        'log_config=false',
        'loggers={inmemory: {}}',
        'callbacks={gpu_check_baton: {}}',
    ]
    if plan.student:
        s = plan.student
        sizes = {
            'hidden_size': s['hidden'],
            'intermediate_size': s['intermediate'],
            'num_hidden_layers': s['layers'],
            'num_attention_heads': s['heads'],
            'num_key_value_heads': s['heads'],
            'head_dim': s['hidden'] // s['heads'],
        }
        args += [f'model.config_overrides.{k}={v}' for k, v in sizes.items()]
    if arm != 'baseline':
        args.append(f'algorithms.let.stop={plan.stop}ba')
        lambda0 = 0.0 if arm == LAMBDA0_ZERO else plan.lambda0
        if lambda0 is not None:  # a fixed λ0 replaces the YAML's strength: relative
            args += [
                'algorithms.let.strength=absolute',
                'algorithms.let.grad_ratio=null',
                f'algorithms.let.lambda0={lambda0}',
            ]
    return args


# The arms: one process each ----------------------------------------------------------------------


class TimedBackbone:
    """Replaces the teacher runner's ``backbone``: the same call, its duration recorded (CUDA events on GPU)."""

    def __init__(self, backbone: Any, spans: list[Any], cuda: bool):
        self.backbone, self.spans, self.cuda = backbone, spans, cuda

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start, end = time.perf_counter(), None
        try:
            return self.backbone(*args, **kwargs)
        finally:
            if self.cuda:
                end.record()
                self.spans.append((start, end))
            else:
                self.spans.append(time.perf_counter() - start)


def baton() -> type:
    """bench/overhead.py's baton (each batch waits for its turn), reporting what this check needs."""
    import torch
    from composer.core import State
    from composer.loggers import Logger

    from composer_let import LET

    cuda = torch.cuda.is_available()

    def let_of(state: State) -> Any:
        return next((a for a in state.algorithms if isinstance(a, LET)), None)

    class Baton(overhead._baton_callback()):
        def __init__(self) -> None:
            super().__init__()
            self.spans: list[Any] = []
            self.teacher: weakref.ref | None = None
            self.teacher_alive_after_stop: bool | None = None

        def _first_batch_facts(self, state: State) -> dict[str, Any]:
            # Not the bench's FLOP count (an extra forward+backward of the whole batch): MFU is from counts.
            hf = state.model.model
            config = hf.config
            head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
            return {
                'student_params': param_counts(state.model),
                'linear_params': sum(m.weight.numel() for m in hf.modules() if isinstance(m, torch.nn.Linear)),
                'layers': config.num_hidden_layers,
                'attention_width': config.num_attention_heads * head_dim,
                'attention': config._attn_implementation,
            }

        def fit_start(self, state: State, logger: Logger) -> None:
            self.facts.update(self._first_batch_facts(state))
            let = let_of(state)
            if let is not None and let.guidance is not None:  # loaded by LET at this event, before callbacks
                model = let.guidance.runner.model
                self.teacher = weakref.ref(model)
                self.facts['teacher_params'] = sum(p.numel() for p in model.parameters())
                self.facts['teacher_mb'] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
                let.guidance.runner.backbone = TimedBackbone(let.guidance.runner.backbone, self.spans, cuda)

        def batch_end(self, state: State, logger: Logger) -> None:
            if cuda:
                torch.cuda.synchronize()  # the step's kernels finish within its own turn
            dt = time.perf_counter() - self.t0
            let = let_of(state)
            active = bool(let and let.active)
            if self.teacher is not None and not active and self.teacher_alive_after_stop is None:
                gc.collect()
                self.teacher_alive_after_stop = self.teacher() is not None
            teacher_s = sum(s.elapsed_time(e) / 1e3 for s, e in self.spans) if cuda else sum(self.spans)
            self.spans.clear()
            memory = torch.cuda.memory_allocated() / 2**20 if cuda else current_rss_mb()
            overhead._CONN.send(('step', dt, active, memory, teacher_s))

    return Baton


def run_arm(conn: Any, yaml_path: str, overrides: list[str], threads: int) -> None:
    """One arm: a real ``train_from_yaml`` run whose batches wait for their turn; sends its facts at the end."""
    overhead._CONN = conn
    try:
        import streaming_prefix_lock  # the arms build their datasets at the same moment: see the module
        import torch
        from composer.loggers import InMemoryLogger
        from llmfoundry.command_utils import train_from_yaml
        from llmfoundry.registry import callbacks

        streaming_prefix_lock.install()
        torch.set_num_threads(threads)
        callback_class = baton()
        callbacks.register('gpu_check_baton', func=callback_class)
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            trainer = train_from_yaml(yaml_path, overrides)
        callback = next(c for c in trainer.state.callbacks if isinstance(c, callback_class))
        logged = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger)).data
        facts = {
            **callback.facts,
            'seconds': time.perf_counter() - started,
            'fsdp_enabled': bool(trainer.state.fsdp_enabled),
            'precision': str(trainer.state.precision.value),
            'peak_memory_mb': torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else peak_rss_mb(),
            'series': {key: [float(v) for _, v in logged.get(key, [])] for key in SERIES},
            'teacher_alive_after_stop': callback.teacher_alive_after_stop,
            'warnings': sorted({f'{w.category.__name__}: {str(w.message)[:200]}' for w in caught}),
        }
        conn.send(('end', facts))
    except BaseException as e:
        conn.send(('error', f'{type(e).__name__}: {e}\n{traceback.format_exc()[-4000:]}'))
        raise
    finally:
        conn.close()


def lockstep(arms: dict[str, tuple[Path, list[str]]], steps: int, threads: int) -> dict[str, dict[str, Any]]:
    """One process per arm, taking turns at every batch (the order rotating each step); returns their records."""
    ctx = mp.get_context('spawn')
    names, conns, procs = list(arms), {}, {}
    for name, (yaml_path, overrides) in arms.items():
        conns[name], child = ctx.Pipe()
        procs[name] = ctx.Process(target=run_arm, args=(child, str(yaml_path), overrides, threads), daemon=True)
        procs[name].start()
    records: dict[str, dict[str, Any]] = {
        n: {'times': [], 'active': [], 'memory_mb': [], 'teacher_s': []} for n in names
    }
    ended = False
    try:
        for step in range(steps):
            for name in names[step % len(names) :] + names[: step % len(names)]:
                conns[name].send('go')
                _, *values = expect(conns[name], procs[name], name, 'step')
                for key, value in zip(('times', 'active', 'memory_mb', 'teacher_s'), values, strict=True):
                    records[name][key].append(value)
            if (step + 1) % max(1, steps // 4) == 0:
                last = ', '.join(f'{n} {statistics.median(records[n]["times"][-5:]):.3f} s' for n in names)
                print(f'[gpu_check]   step {step + 1}/{steps}; median of the last 5 steps: {last}', flush=True)
        for name in names:
            records[name]['facts'] = expect(conns[name], procs[name], name, 'end')[1]
        ended = True
    finally:
        STARTED.extend(procs.values())
        if not ended:  # the others wait for a turn that never comes
            reap(timeout=1)
    return records  # the arms exit on their own (a few seconds) while the check goes on: reap() at the end


STARTED: list[Any] = []  # the arms' processes


def reap(timeout: float) -> None:
    """Wait for the arms' processes to exit; kill those still alive after ``timeout`` seconds."""
    for proc in STARTED:
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
    STARTED.clear()


def expect(conn: Any, proc: Any, arm: str, tag: str) -> tuple:
    message = overhead._receive(conn, proc, arm)
    if message[0] == 'error':
        raise RuntimeError(f'the {arm} run failed: {message[1]}')
    assert message[0] == tag, message
    return message


# Summary: pure functions of the records ----------------------------------------------------------


def flops_per_token(facts: dict[str, Any], seq: int) -> float:
    """The student's training FLOPs per token (the MFU convention: no recomputation, causal attention not halved).

    6 x the weights of its matmuls (LM head included) + 12 x layers x attention width x sequence length.
    """
    return 6.0 * facts['linear_params'] + 12.0 * facts['layers'] * facts['attention_width'] * seq


def summarize(records: dict[str, Any], plan: Plan, peak_tflops: float) -> dict[str, Any]:
    """Per arm: median step time, tokens/s, MFU and peak memory; LET against the baseline, turn by turn."""
    windows = {
        'teacher_active': range(plan.warmup, plan.stop),
        'after_stop': range(plan.stop + plan.settle, plan.total),
    }
    tokens = plan.batch * plan.seq
    arms: dict[str, Any] = {}
    for name, rec in records.items():
        facts = rec['facts']
        arm = {k: facts[k] for k in ('student_params', 'attention', 'fsdp_enabled', 'precision', 'peak_memory_mb')}
        arm.update(
            student_flops_per_token=flops_per_token(facts, plan.seq),
            teacher_active_steps=sum(rec['active']),
            step_times_s=rec['times'],
            memory_mb_at_batch_end=rec['memory_mb'],
            process_seconds=facts['seconds'],
            warnings=facts['warnings'],
        )
        for window, steps in windows.items():
            median = statistics.median(rec['times'][i] for i in steps)
            arm[f'median_step_s_{window}'] = median
            arm[f'tokens_per_s_{window}'] = tokens / median
            arm[f'mfu_{window}'] = arm['student_flops_per_token'] * tokens / median / (peak_tflops * 1e12)
        arms[name] = arm
    if not {'baseline', 'let'} <= records.keys():
        return {'arms': arms}
    let, base = records['let'], records['baseline']
    cost = {
        f'step_ratio_{window}': overhead.ratio_summary([let['times'][i] / base['times'][i] for i in steps])
        for window, steps in windows.items()
    }
    cost.update(
        teacher_s_per_step=statistics.median(let['teacher_s'][i] for i in windows['teacher_active']),
        teacher_share_of_let_step=statistics.median(
            let['teacher_s'][i] / let['times'][i] for i in windows['teacher_active']
        ),
        grad_ratio_first_batches=let['facts']['series']['let/grad_ratio'][:5],
        peak_memory_let_minus_baseline_mb=let['facts']['peak_memory_mb'] - base['facts']['peak_memory_mb'],
        teacher_params=let['facts'].get('teacher_params'),
        teacher_mb=let['facts'].get('teacher_mb'),
    )
    return {'arms': arms, 'overhead': cost}


def checks(records: dict[str, Any], plan: Plan, cuda: bool) -> dict[str, Any]:
    """λ0 = 0 gives the baseline's losses; ``let/cosine`` rises; the teacher is freed at ``stop``."""
    out: dict[str, Any] = {}
    if {LAMBDA0_ZERO, 'baseline'} <= records.keys():
        zero = records[LAMBDA0_ZERO]['facts']['series']['loss/train/total']
        base = records['baseline']['facts']['series']['loss/train/total']
        diffs = [abs(a - b) / abs(b) for a, b in zip(zero, base, strict=True)]
        # fp32 on CPU is bit-identical (tests/test_let_train.py). On CUDA the embedding and attention backward
        # kernels are non-deterministic, so runs drift apart after step 1; 1% of the loss is far below what a
        # teacher pulling at λ0 = 0 or a hook changing the student's outputs would do.
        tolerance = 1e-6 if plan.precision == 'fp32' else 1e-2
        out['lambda0_zero_matches_baseline'] = {
            'passed': len(diffs) == plan.total and max(diffs) <= tolerance,
            'max_relative_difference': max(diffs),
            'first_step_relative_difference': diffs[0],
            'tolerance': tolerance,
            'steps_compared': len(diffs),
            'teacher_active_steps': sum(records[LAMBDA0_ZERO]['active']),
        }
    if 'let' not in records:
        return out
    let = records['let']
    cosine = let['facts']['series']['let/cosine']
    q = max(1, len(cosine) // 4)
    rises: dict[str, Any] = {
        'first_quarter_mean': statistics.mean(cosine[:q]),
        'last_quarter_mean': statistics.mean(cosine[-q:]),
        'values': cosine,
    }
    control = records.get(LAMBDA0_ZERO, {}).get('facts', {}).get('series', {}).get('let/cosine', [])
    if len(control) >= len(cosine):  # the same steps without the pull
        rises['lambda0_zero_last_quarter_mean'] = statistics.mean(control[len(cosine) - q : len(cosine)])
    rises['passed'] = len(cosine) == plan.stop and rises['last_quarter_mean'] > max(
        rises['first_quarter_mean'], rises.get('lambda0_zero_last_quarter_mean', -math.inf)
    )
    out['cosine_rises'] = rises
    before, after = let['memory_mb'][plan.stop - 1], let['memory_mb'][plan.stop]  # batch ends around the release
    teacher_mb = let['facts'].get('teacher_mb', 0.0)
    freed: dict[str, Any] = {
        'teacher_alive_after_stop': let['facts']['teacher_alive_after_stop'],
        'teacher_active_steps': sum(let['active']),
        'memory': 'CUDA allocated' if cuda else 'process RSS (not checked: freed CPU memory stays in the process)',
        'memory_mb_last_active_batch': before,
        'memory_mb_first_batch_after_stop': after,
        'teacher_mb': teacher_mb,
    }
    freed['passed'] = (
        freed['teacher_alive_after_stop'] is False
        and freed['teacher_active_steps'] == plan.stop
        and not let['facts'].get('let_active_at_end', True)
        and (not cuda or before - after >= 0.9 * teacher_mb)
    )
    out['teacher_freed'] = freed
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report: environment, one row per arm, LET's cost, the three checks."""
    env, plan = result['environment'], result['plan']
    versions = ', '.join(f'{k} {v}' for k, v in env['versions'].items())
    memory = f' ({env["memory_gib"]:.0f} GiB, sm {env["capability"]})' if env['cuda'] else ''
    lines = [
        '# composer-let GPU check' + (' (CPU smoke: tiny sizes, not GPU numbers)' if result['mode'] != 'gpu' else ''),
        '',
        f'Device: {env["device"]}{memory}; {versions}; bf16: {env["bf16_supported"]}; flash-attn: '
        f'{env["flash_attn"].get("version", "not installed")}; attention used: {env["attention"]}. '
        f'Missing: {"; ".join(env["missing"]) or "nothing"}.',
        '',
        f'Student: {result.get("student", "?")}; teacher: {result["teacher"]}. {plan["batch"]} x {plan["seq"]} tokens '
        f'per step (microbatch {plan["microbatch"]}), {plan["precision"]}; stop at step {plan["stop"]}; timed: steps '
        f'{plan["warmup"] + 1}-{plan["stop"]} (teacher active) and the last {plan["after"]} of {plan["total"]}. '
        f'FSDP: {result.get("fsdp_enabled", "?")} ({FSDP_NOTE}).',
    ]
    if result.get('arms'):
        lines += [
            '',
            '| arm | step s, active | step s, after stop | tokens/s, active | MFU, active | peak memory MiB |',
            '| --- | ---: | ---: | ---: | ---: | ---: |',
        ]
        lines += [
            f'| {name} | {a["median_step_s_teacher_active"]:.3f} | {a["median_step_s_after_stop"]:.3f} | '
            f'{a["tokens_per_s_teacher_active"]:,.0f} | {a["mfu_teacher_active"]:.1%} | {a["peak_memory_mb"]:,.0f} |'
            for name, a in result['arms'].items()
        ]
        lines.append(
            f"MFU: the student's FLOPs (6 x matmul weights + attention, per token) x tokens/s / "
            f'{result["peak_tflops"]:g} TFLOP/s (--peak-tflops). {LAMBDA0_ZERO} ran alone, after the lockstep pair.'
        )
    cost = result.get('overhead')
    if cost:
        a, b = cost['step_ratio_teacher_active'], cost['step_ratio_after_stop']
        lines += [
            '',
            f'LET / baseline step time, per turn, median [quartiles] (turns): teacher active **{a["median"]:.3f}** '
            f'[{a["q1"]:.3f}-{a["q3"]:.3f}] ({a["n"]}); after stop **{b["median"]:.3f}** [{b["q1"]:.3f}-{b["q3"]:.3f}] '
            f'({b["n"]}). Teacher forward {1e3 * cost["teacher_s_per_step"]:.1f} ms per step = '
            f'{cost["teacher_share_of_let_step"]:.1%} of a LET step. Peak memory LET - baseline '
            f'{cost["peak_memory_let_minus_baseline_mb"]:+,.0f} MiB (teacher weights {cost["teacher_mb"]:,.0f} MiB). '
            'let/grad_ratio, first batches: ' + ', '.join(f'{g:.3g}' for g in cost['grad_ratio_first_batches']) + '.',
        ]
    found = result.get('checks', {})
    if found:
        lines += ['', '| check | result | numbers |', '| --- | --- | --- |']
    if 'lambda0_zero_matches_baseline' in found:
        c = found['lambda0_zero_matches_baseline']
        lines.append(
            f"| λ0 = 0 gives the baseline's losses | {'PASS' if c['passed'] else 'FAIL'} | max relative difference "
            f'{c["max_relative_difference"]:.2e} over {c["steps_compared"]} steps (step 1: '
            f'{c["first_step_relative_difference"]:.2e}; tolerance {c["tolerance"]:g}) |'
        )
    if 'cosine_rises' in found:
        c = found['cosine_rises']
        control = c.get('lambda0_zero_last_quarter_mean')
        lines.append(
            f'| let/cosine rises over the active steps | {"PASS" if c["passed"] else "FAIL"} | first quarter '
            f'{c["first_quarter_mean"]:.4f}, last quarter {c["last_quarter_mean"]:.4f} (λ0 = 0, same steps: '
            f'{"n/a" if control is None else f"{control:.4f}"}) |'
        )
    if 'teacher_freed' in found:
        c = found['teacher_freed']
        lines.append(
            f'| the teacher is freed at stop | {"PASS" if c["passed"] else "FAIL"} | still referenced: '
            f'{c["teacher_alive_after_stop"]}; {c["memory"]}: {c["memory_mb_last_active_batch"]:,.0f} -> '
            f'{c["memory_mb_first_batch_after_stop"]:,.0f} MiB (teacher {c["teacher_mb"]:,.1f} MiB) |'
        )
    lines += [f'\n**{part} failed**: {error.splitlines()[0][:300]}' for part, error in result['errors'].items()]
    seconds = ', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items())
    lines += ['', f'Wall-clock: {seconds}.']
    return '\n'.join(lines) + '\n'


# Driver -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('runs/gpu_check'), help='output folder (runs/gpu_check)')
    parser.add_argument('--cpu-smoke', action='store_true', help='without a GPU: the same path, tiny sizes, fp32')
    parser.add_argument('--teacher', type=Path, help='prepared teacher folder (default: work/teacher if it exists)')
    parser.add_argument('--peak-tflops', type=float, default=PEAK_TFLOPS, help='peak TFLOP/s for MFU (989: H100/H200)')
    parser.add_argument('--active', type=int, help=f'timed steps with the teacher (default {GPU.active})')
    parser.add_argument('--after', type=int, help=f'timed steps after stop (default {GPU.after})')
    parser.add_argument('--microbatch', type=int, help=f'device_train_microbatch_size (default {GPU.microbatch})')
    parser.add_argument(
        '--budget-min', type=float, default=8.0, help='on GPU: skip the λ0 = 0 run if it would end later'
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        os.environ['CUDA_VISIBLE_DEVICES'] = ''  # this process and the arms: Composer picks the CPU
    started = time.perf_counter()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA, flush=True)
        return 2
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    plan = CPU_SMOKE if args.cpu_smoke else GPU
    plan = dataclasses.replace(
        plan,
        active=args.active or plan.active,
        after=args.after or plan.after,
        microbatch=args.microbatch or plan.microbatch,
    )
    teacher = args.teacher or (PREPARED_TEACHER if PREPARED_TEACHER.is_dir() and not args.cpu_smoke else None)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        'mode': 'cpu-smoke' if args.cpu_smoke else 'gpu',
        'plan': {**dataclasses.asdict(plan), 'stop': plan.stop, 'total': plan.total},
        'peak_tflops': args.peak_tflops,
        'seconds': {},
        'errors': {},
    }

    def say(text: str) -> None:
        print(f'[gpu_check] {text}', flush=True)

    def part(name: str, run: Any) -> None:
        """Run one part, timing it; a failure is recorded and the check goes on."""
        mark = time.perf_counter()
        try:
            run()
        except Exception as e:
            result['errors'][name] = f'{type(e).__name__}: {e}'
            say(f'{name} failed: {result["errors"][name].splitlines()[0][:300]}')
        result['seconds'][name] = time.perf_counter() - mark
        write_json(out / 'gpu_check.json', result)  # what is known so far survives a later crash or timeout

    mark = time.perf_counter()
    result['environment'] = env = environment()
    result['seconds']['environment'] = time.perf_counter() - mark
    say(f'{env["device"]}; attention: {env["attention"]}; missing: {"; ".join(env["missing"]) or "nothing"}')
    say(f'assets: stdlib shards of {plan.seq} tokens; teacher: {teacher or "random init"}')
    assets: dict[str, Any] = {}
    part('assets', lambda: assets.update(build_assets(plan, out / 'assets', teacher)))
    result.update(teacher=assets.get('teacher_kind'), assets={k: str(v) for k, v in assets.items()})
    records: dict[str, Any] = {}

    def run(arms: tuple[str, ...], threads: int) -> None:
        yamls = {a: (assets['baseline_yaml'] if a == 'baseline' else YAML) for a in arms}
        records.update(
            lockstep(
                {a: (yamls[a], yaml_overrides(plan, assets, env['attention'], a)) for a in arms}, plan.total, threads
            )
        )

    threads = 1 if args.cpu_smoke else max(1, (os.cpu_count() or 2) // len(ARMS))
    if assets:
        say(f'baseline and LET in lockstep, {plan.total} steps each (stop at {plan.stop}) ...')
        part('baseline_and_let', lambda: run(ARMS, threads))
        budget = math.inf if args.cpu_smoke else args.budget_min * 60  # the GPU slot's; a smoke always finishes
        left = budget - (time.perf_counter() - started)
        if left < 0.7 * result['seconds']['baseline_and_let']:  # half the steps, the same start-up
            result['errors']['lambda0_zero'] = f'skipped: {left:.0f} s left of --budget-min {args.budget_min:g}'
            say(result['errors']['lambda0_zero'])
        else:
            say(f'LET with λ0 = 0, {plan.total} steps ...')
            part('lambda0_zero', lambda: run((LAMBDA0_ZERO,), threads if args.cpu_smoke else threads * len(ARMS)))
        reap(timeout=60)
    if records:
        facts = next(iter(records.values()))['facts']
        params = facts['student_params']
        result['student'] = (
            f'{params["total"] / 1e6:,.1f}M parameters ({params["non_embedding"] / 1e6:,.1f}M non-embedding)'
        )
        result['fsdp_enabled'] = facts['fsdp_enabled']
        result.update(summarize(records, plan, args.peak_tflops))
    result['checks'] = checks(records, plan, bool(env.get('cuda')))
    result['ok'] = (
        not result['errors'] and len(result['checks']) == 3 and all(c['passed'] for c in result['checks'].values())
    )
    result['seconds']['total'] = time.perf_counter() - started
    write_json(out / 'gpu_check.json', result)
    table = markdown(result)
    (out / 'gpu_check.md').write_text(table)
    print('\n' + table)
    say(f'{"every check passed" if result["ok"] else "NOT OK: see above"}; wrote {out}/gpu_check.json and gpu_check.md')
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
