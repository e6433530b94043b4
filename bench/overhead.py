"""What does LET cost per step? Real llm-foundry Trainer steps with and without ``algorithms.let``, interleaved.

Each arm (``baseline``, ``let-fp32``, ``let-bf16``) is a real ``train_from_yaml`` run of
``yamls/bench/overhead-<family>.yaml`` in its own process. A callback hands a baton between them at
every batch, so the arms take strict turns (the order rotates each step) and machine contention
hits them alike; per-step ratios LET/baseline are taken within the same turn and summarised by
their median. The LET arms stop the teacher at ``S_stop`` (``stop: <warmup+rounds>ba``); the steps
after it measure what is left once the teacher is released. Each process's peak RSS is its own.

Then a component profile in this process explains the overhead: teacher backbone forward in fp32
and bf16 (and with its LM head, which LET skips), width interpolation, alignment loss, all as a
share of the student's forward+backward; and the FLOPs floor = teacher forward FLOPs / student
forward+backward FLOPs (counted by torch's FlopCounterMode).

    python bench/overhead.py                       # both families, ~10 min on 2 idle cores
    python bench/overhead.py --families llama --rounds 40
    python bench/overhead.py --smoke               # seconds: the CI smoke test
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_YAMLS,
    RESULTS,
    count_flops,
    current_rss_mb,
    machine_facts,
    param_counts,
    peak_rss_mb,
    write_json,
)

# Student ~10x the teacher's non-embedding parameters (the paper: SmolLM-135M teaching a 1.4B).
FULL = {
    'vocab': 2048,
    'seq': 128,
    'batch': 16,
    'teacher': {'hidden': 64, 'layers': 5, 'heads': 2},
    'llama': {'hidden': 192, 'intermediate': 768, 'layers': 6, 'heads': 3},
    'mpt': {'hidden': 192, 'layers': 8, 'heads': 3},
    'warmup': 4,
    'rounds': 24,
    'settle': 2,
    'after': 12,
    'profile_reps': 15,
    'text_chars': 1_000_000,
}
SMOKE = {
    'vocab': 512,
    'seq': 32,
    'batch': 4,
    'teacher': {'hidden': 32, 'layers': 2, 'heads': 2},
    'llama': {'hidden': 64, 'intermediate': 256, 'layers': 2, 'heads': 2},
    'mpt': {'hidden': 64, 'layers': 2, 'heads': 2},
    'warmup': 1,
    'rounds': 3,
    'settle': 1,
    'after': 2,
    'profile_reps': 3,
    'text_chars': 200_000,
}

_CONN: Any = None  # the child's end of the baton pipe


def _baton_callback() -> type:
    from composer.core import Callback, State
    from composer.loggers import Logger

    from composer_let import LET

    class Baton(Callback):
        """Waits for its turn at every batch start; reports the step's wall time at batch end."""

        def __init__(self) -> None:
            self.t0 = 0.0
            self.facts: dict[str, Any] = {}

        def batch_start(self, state: State, logger: Logger) -> None:
            if not self.facts:
                self.facts = self._first_batch_facts(state)
            _CONN.recv()
            self.t0 = time.perf_counter()

        def batch_end(self, state: State, logger: Logger) -> None:
            dt = time.perf_counter() - self.t0
            let = next((a for a in state.algorithms if isinstance(a, LET)), None)
            _CONN.send(('step', dt, bool(let and let.active), current_rss_mb()))

        def fit_end(self, state: State, logger: Logger) -> None:
            let = next((a for a in state.algorithms if isinstance(a, LET)), None)
            self.facts['let_active_at_end'] = bool(let and let.active)

        def _first_batch_facts(self, state: State) -> dict[str, Any]:
            import torch

            model = state.model
            batch = state.batch
            facts: dict[str, Any] = {
                'student_params': param_counts(model),
                'rss_before_first_step_mb': current_rss_mb(),
            }

            def student_step() -> None:
                loss = model.loss(model(batch), batch)
                (loss['total'] if isinstance(loss, dict) else loss).backward()

            facts['student_fwd_bwd_flops'] = count_flops(student_step)
            model.zero_grad(set_to_none=True)
            let = next((a for a in state.algorithms if isinstance(a, LET)), None)
            if let is not None and let.guidance is not None:
                runner = let.guidance.runner
                with torch.no_grad():
                    facts['teacher_fwd_flops'] = count_flops(
                        lambda: runner.backbone(input_ids=batch['input_ids'], use_cache=False)
                    )
                facts['teacher_params'] = param_counts(runner.model)
            return facts

    return Baton


def _child(conn: Any, arm: str, family: str, overrides: list[str], threads: int) -> None:
    """One arm: a real ``train_from_yaml`` run whose batches wait for the parent's go."""
    global _CONN
    _CONN = conn
    import streaming_prefix_lock  # the arms build their datasets at the same moment: see the module
    import torch

    streaming_prefix_lock.install()

    if arm != 'baseline' and not parse_arm(arm)['probe']:
        from composer_let.diagnostics import GradientProbe

        GradientProbe.watch = lambda self, hidden: hidden  # type: ignore[method-assign]

    torch.set_num_threads(threads)
    from llmfoundry.command_utils import train_from_yaml
    from llmfoundry.registry import callbacks

    baton = _baton_callback()
    callbacks.register('bench_baton', func=baton)
    trainer = train_from_yaml(str(BENCH_YAMLS / f'overhead-{family}.yaml'), overrides)
    facts = next(c for c in trainer.state.callbacks if isinstance(c, baton)).facts
    facts['peak_rss_mb'] = peak_rss_mb()
    conn.send(('end', facts))
    conn.close()


def _overrides(cfg: dict, family: str, arm: str, assets: dict[str, Path], total: int, stop: int) -> list[str]:
    student = cfg[family]
    args = [
        f'variables.teacher={assets["teacher"]}',
        f'variables.data_local={assets["data"]}',
        f'variables.max_seq_len={cfg["seq"]}',
        f'variables.batch={cfg["batch"]}',
        f'variables.steps={total}ba',
        f'variables.run_name=overhead-{family}-{arm}',
        *(f'variables.{k}={v}' for k, v in student.items()),
        *([f'variables.head_dim={student["hidden"] // student["heads"]}'] if family == 'llama' else []),
        'callbacks={bench_baton: {}}',
    ]
    if family == 'mpt':
        args.append(f'variables.vocab_size={cfg["vocab"]}')
    if arm != 'baseline':
        spec = parse_arm(arm)
        teacher = assets['teacher_cross'] if 'cross_tokenizer' in spec['let'] else assets['teacher']
        args += [
            f'algorithms.let.teacher={teacher}',
            f'algorithms.let.stop={stop}ba',
            f'algorithms.let.teacher_dtype={spec["dtype"]}',
            *(f'algorithms.let.{k}={v}' for k, v in spec['let'].items()),
        ]
    return args


def parse_arm(arm: str) -> dict[str, Any]:
    """``let-<dtype>[-ce<N>][-noprobe][-cross]``: teacher dtype, ``ce_tokens`` (default: LET's), probe off, cross.

    ``-cross`` uses the teacher on another tokenizer with ``cross_tokenizer: true`` (re-tokenized in the
    loader; ``num_workers: 0`` here, so inside the step's process but before its timed window).

    ``-noprobe`` replaces LET's gradient probe by the identity in that arm's process only, so the
    per-turn ratio against the same arm with the probe is the probe's cost in real steps.
    """
    parts = arm.split('-')
    if parts[0] != 'let' or len(parts) < 2 or parts[1] not in ('fp32', 'bf16', 'fp16'):
        raise ValueError(f'overhead: arm {arm!r} is not let-<fp32|bf16|fp16>[-ce<N>][-noprobe].')
    spec: dict[str, Any] = {'dtype': parts[1], 'let': {}, 'probe': True}
    for part in parts[2:]:
        if part.startswith('ce') and part[2:].isdigit():
            spec['let']['ce_tokens'] = int(part[2:])
        elif part == 'noprobe':
            spec['probe'] = False
        elif part == 'cross':
            spec['let']['cross_tokenizer'] = 'true'
        else:
            raise ValueError(f'overhead: arm {arm!r}: unknown part {part!r}.')
    return spec


def ratio_summary(ratios: list[float]) -> dict[str, float]:
    """Median and quartiles of per-turn step-time ratios."""
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {'median': median, 'q1': q1, 'q3': q3, 'n': len(ratios)}


def interleaved(cfg: dict, family: str, arms: list[str], assets: dict[str, Path], threads: int) -> dict[str, Any]:
    """Run the arms' Trainers in lockstep and return per-step times, ratios and memory."""
    warmup, rounds, settle, after = cfg['warmup'], cfg['rounds'], cfg['settle'], cfg['after']
    stop = warmup + rounds
    total = stop + settle + after
    ctx = mp.get_context('spawn')
    conns, procs = {}, {}
    for arm in arms:
        parent, child = ctx.Pipe()
        overrides = _overrides(cfg, family, arm, assets, total, stop)
        procs[arm] = ctx.Process(target=_child, args=(child, arm, family, overrides, threads), daemon=True)
        procs[arm].start()
        conns[arm] = parent
    times: dict[str, list[float]] = {a: [] for a in arms}
    active: dict[str, list[bool]] = {a: [] for a in arms}
    rss: dict[str, list[float]] = {a: [] for a in arms}
    try:
        for step in range(total):
            order = arms[step % len(arms) :] + arms[: step % len(arms)]
            for arm in order:
                conns[arm].send('go')
                _, dt, is_active, mem = _receive(conns[arm], procs[arm], arm)
                times[arm].append(dt)
                active[arm].append(is_active)
                rss[arm].append(mem)
        facts = {arm: _receive(conns[arm], procs[arm], arm)[1] for arm in arms}
    finally:
        for proc in procs.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    windows = {'teacher_active': range(warmup, stop), 'after_stop': range(stop + settle, total)}
    tokens = cfg['batch'] * cfg['seq']
    out: dict[str, Any] = {'steps': {'warmup': warmup, 'timed_active': rounds, 'settle': settle, 'timed_after': after}}
    base = times['baseline']
    for arm in arms:
        summary: dict[str, Any] = {
            'peak_rss_mb': facts[arm]['peak_rss_mb'],
            'rss_end_of_active_mb': rss[arm][stop - 1],
            'rss_end_mb': rss[arm][-1],
            'teacher_active_steps': sum(active[arm]),
            'teacher_active_at_end': facts[arm].get('let_active_at_end', False),
            'step_times_s': times[arm],
        }
        for name, window in windows.items():
            step_times = [times[arm][i] for i in window]
            summary[f'median_step_s_{name}'] = statistics.median(step_times)
            summary[f'tokens_per_s_{name}'] = tokens / statistics.median(step_times)
            if arm != 'baseline':
                summary[f'ratio_{name}'] = ratio_summary([times[arm][i] / base[i] for i in window])
        # Against every other LET arm, per turn, while the teacher is active (e.g. the probe's own cost).
        summary['ratio_teacher_active_vs'] = {
            other: ratio_summary([times[arm][i] / times[other][i] for i in windows['teacher_active']])
            for other in arms
            if other not in (arm, 'baseline') and arm != 'baseline'
        }
        out[arm] = summary
    flops = {k: v for f in facts.values() for k, v in f.items() if k.endswith('flops') or k.endswith('params')}
    out['counts'] = flops
    if 'teacher_fwd_flops' in flops:
        out['flops_floor'] = flops['teacher_fwd_flops'] / flops['student_fwd_bwd_flops']
    return out


def _receive(conn: Any, proc: Any, arm: str) -> tuple:
    while not conn.poll(5):
        if not proc.is_alive():
            raise RuntimeError(
                f'overhead: the {arm} process died (exit code {proc.exitcode}); see its traceback above.'
            )
    return conn.recv()


def profile_components(cfg: dict, assets: dict[str, Path], reps: int) -> dict[str, Any]:
    """Time LET's pieces (teacher fp32/bf16, LM head, interpolate, loss) against the student's fwd+bwd."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from composer_let.alignment import alignment_loss, interpolate_width, pool_width
    from composer_let.cross_tokenizer import TokenBridge
    from composer_let.diagnostics import GradientProbe, sampled_positions, token_nll
    from composer_let.teacher import load_teacher

    torch.manual_seed(0)
    student_cfg = AutoConfig.from_pretrained(assets['teacher'])
    s = cfg['llama']
    student_cfg.update(
        {
            'hidden_size': s['hidden'],
            'intermediate_size': s['intermediate'],
            'num_hidden_layers': s['layers'],
            'num_attention_heads': s['heads'],
            'num_key_value_heads': s['heads'],
            'head_dim': s['hidden'] // s['heads'],
        }
    )
    student_cfg._attn_implementation = 'sdpa'
    student = AutoModelForCausalLM.from_config(student_cfg)
    teachers = {
        d: load_teacher(str(assets['teacher']), getattr(torch, d), torch.device('cpu')) for d in ('float32', 'bfloat16')
    }
    ids = torch.randint(0, cfg['vocab'], (cfg['batch'], cfg['seq']))
    with torch.no_grad():
        h_teacher = teachers['float32'].base_model(input_ids=ids).last_hidden_state
    h_student = torch.randn(cfg['batch'], cfg['seq'], s['hidden'], requires_grad=True)
    h_interp = interpolate_width(h_teacher, s['hidden'])

    def student_fwd_bwd() -> None:
        student(input_ids=ids, labels=ids).loss.backward()
        student.zero_grad(set_to_none=True)

    def align() -> None:
        loss, _ = alignment_loss(h_student, h_interp)
        loss.backward()

    def align_probed() -> None:  # what LET runs: the alignment on the probed output, plus the probe's sums
        probe = GradientProbe()
        hidden = h_student * 1.0
        loss, _ = alignment_loss(probe.watch(hidden), h_interp)
        (loss + hidden.sum() * 1e-3).backward()  # a second consumer of h, as the next block is
        probe.take()

    def align_plain_two_consumers() -> None:  # the same graph without the probe
        hidden = h_student * 1.0
        loss, _ = alignment_loss(hidden, h_interp)
        (loss + hidden.sum() * 1e-3).backward()

    head = teachers['float32'].get_output_embeddings()
    labels = torch.randint(0, cfg['vocab'], (cfg['batch'], cfg['seq']))
    student_logits = torch.randn(cfg['batch'] * cfg['seq'], cfg['vocab'])

    def sampled_ce() -> None:  # let/teacher_ce and let/student_ce on ce_tokens positions
        rows, targets = sampled_positions(labels, LET_CE_TOKENS, 0)
        token_nll(head(h_teacher.reshape(-1, h_teacher.shape[-1]).index_select(0, rows)), targets)
        token_nll(student_logits.index_select(0, rows), targets)

    bridge = TokenBridge(
        AutoTokenizer.from_pretrained(assets['teacher']),
        AutoTokenizer.from_pretrained(assets['teacher_cross']),
        max_length=2 * cfg['seq'],
    )
    data_ids = _data_batch(assets, cfg)

    pieces = {
        'student_fwd_bwd': student_fwd_bwd,
        'teacher_backbone_fp32': lambda: teachers['float32'].base_model(input_ids=ids, use_cache=False),
        'teacher_backbone_bf16': lambda: teachers['bfloat16'].base_model(input_ids=ids, use_cache=False),
        'teacher_backbone_fp32_inference_mode': lambda: _inference(teachers['float32'].base_model, ids),
        'teacher_with_lm_head_fp32': lambda: teachers['float32'](input_ids=ids, use_cache=False),
        'interpolate_width': lambda: interpolate_width(h_teacher.float(), s['hidden']),
        'pool_width': lambda: pool_width(torch.randn(cfg['batch'], cfg['seq'], 576), s['hidden']),
        'alignment_loss_fwd_bwd': align,
        'alignment_two_consumers_fwd_bwd': align_plain_two_consumers,
        'alignment_two_consumers_probed_fwd_bwd': align_probed,
        'sampled_ce_256_positions': sampled_ce,
        'cross_tokenizer_bridge': lambda: bridge(data_ids),
    }
    samples: dict[str, list[float]] = {k: [] for k in pieces}
    names = list(pieces)
    for rep in range(reps + 1):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            grad = name in ('student_fwd_bwd',) or name.startswith('alignment')
            with torch.set_grad_enabled(grad):
                t0 = time.perf_counter()
                pieces[name]()
                dt = time.perf_counter() - t0
            if rep:  # the first pass is warm-up
                samples[name].append(dt)
    median = statistics.median
    ref = median(samples['student_fwd_bwd'])
    with torch.no_grad():
        teacher_flops = count_flops(lambda: teachers['float32'].base_model(input_ids=ids, use_cache=False))
        head_flops = count_flops(lambda: teachers['float32'](input_ids=ids, use_cache=False)) - teacher_flops
    student_flops = count_flops(student_fwd_bwd)
    out: dict[str, Any] = {
        name: {'median_ms': 1e3 * median(v), 'share_of_student_fwd_bwd': median(v) / ref} for name, v in samples.items()
    }
    out['flops'] = {
        'teacher_backbone_fwd': teacher_flops,
        'teacher_lm_head_fwd': head_flops,
        'student_fwd_bwd': student_flops,
        'floor': teacher_flops / student_flops,
    }
    out['achieved_gflops'] = {
        'student_fwd_bwd': student_flops / median(samples['student_fwd_bwd']) / 1e9,
        'teacher_backbone_fp32': teacher_flops / median(samples['teacher_backbone_fp32']) / 1e9,
        'teacher_backbone_bf16': teacher_flops / median(samples['teacher_backbone_bf16']) / 1e9,
    }
    out['params'] = {'student': param_counts(student), 'teacher': param_counts(teachers['float32'])}
    return out


LET_CE_TOKENS = 256  # LET's default ce_tokens


def _data_batch(assets: dict[str, Path], cfg: dict) -> Any:
    """A real batch of token rows from the shards (the bridge's cost depends on the text)."""
    import torch
    from streaming import StreamingDataset

    dataset = StreamingDataset(local=str(assets['data']), split='train', shuffle=False, batch_size=cfg['batch'])
    rows = [torch.as_tensor(dataset[i]['tokens'][: cfg['seq']], dtype=torch.long) for i in range(cfg['batch'])]
    return torch.stack(rows)


def _inference(backbone: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return backbone(input_ids=ids, use_cache=False)


def build_assets(cfg: dict, folder: Path) -> dict[str, Path]:
    """Tokenizer, random-init teacher and MDS shards from the stdlib's text (no shared data needed)."""
    from composer_let.prep.tiny import build_tokenizer, save_llama, stdlib_texts, write_token_shards

    t = cfg['teacher']
    folder = folder / f'v{cfg["vocab"]}-{t["hidden"]}x{t["layers"]}-s{cfg["seq"]}-c{cfg["text_chars"]}'
    marker = folder / 'ready-2'
    assets = {'teacher': folder / 'teacher', 'data': folder / 'data', 'teacher_cross': folder / 'teacher-cross'}
    if marker.exists():
        return assets
    shutil.rmtree(folder, ignore_errors=True)  # a half-built folder from an interrupted run
    texts = stdlib_texts(cfg['text_chars'])
    tokenizer = build_tokenizer(folder / 'tokenizer', texts, vocab_size=cfg['vocab'])
    save_llama(
        assets['teacher'], tokenizer, hidden=t['hidden'], layers=t['layers'], heads=t['heads'], max_positions=cfg['seq']
    )
    write_token_shards(assets['data'], tokenizer, texts, seq_len=cfg['seq'], splits={'train': 1.0})
    # The same teacher on another tokenizer (twice the vocabulary), for the cross-tokenizer arm and profile.
    other = build_tokenizer(folder / 'tokenizer-cross', texts[::-1], vocab_size=2 * cfg['vocab'])
    save_llama(
        assets['teacher_cross'],
        other,
        hidden=t['hidden'],
        layers=t['layers'],
        heads=t['heads'],
        max_positions=2 * cfg['seq'],
    )
    marker.touch()
    return assets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--families', default='llama,mpt', help='comma list of llama, mpt')
    parser.add_argument('--dtypes', default='fp32,bf16', help='teacher dtypes to time, comma list of fp32, bf16, fp16')
    parser.add_argument(
        '--extra-arms', default='', help='more LET arms, e.g. let-fp32-ce0,let-fp32-noprobe (see parse_arm)'
    )
    parser.add_argument('--rounds', type=int, help='timed steps while the teacher is active')
    parser.add_argument('--after', type=int, help='timed steps after S_stop')
    parser.add_argument('--threads', type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument('--no-profile', action='store_true', help='skip the component profile')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, a few steps (CI smoke test; not numbers)')
    parser.add_argument('--out', type=Path, default=None, help='result JSON (default bench/results/overhead.json)')
    parser.add_argument('--cache', type=Path, default=None, help='assets folder (default bench/results/cache)')
    args = parser.parse_args(argv)

    import torch

    cfg = dict(SMOKE if args.smoke else FULL)
    if args.rounds:
        cfg['rounds'] = args.rounds
    if args.after:
        cfg['after'] = args.after
    threads = args.threads or torch.get_num_threads()
    out_path = args.out or RESULTS / ('overhead-smoke.json' if args.smoke else 'overhead.json')
    cache = args.cache or RESULTS / 'cache' / ('overhead-smoke' if args.smoke else 'overhead')
    families = [f.strip() for f in args.families.split(',') if f.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(',') if d.strip()]
    for f in families:
        if f not in ('llama', 'mpt'):
            parser.error(f'--families: {f!r} is not llama or mpt')
    for d in dtypes:
        if d not in ('fp32', 'bf16', 'fp16'):
            parser.error(f'--dtypes: {d!r} is not fp32, bf16 or fp16')

    result: dict[str, Any] = {'config': cfg, 'threads_per_process': threads, 'machine_start': machine_facts()}
    assets = build_assets(cfg, cache)
    arms = ['baseline', *(f'let-{d}' for d in dtypes), *filter(None, args.extra_arms.split(','))]
    for arm in arms[1:]:
        parse_arm(arm)
    t0 = time.time()
    for family in families:
        print(f'overhead: {family}: {", ".join(arms)} in lockstep ...', flush=True)
        result[family] = interleaved(cfg, family, arms, assets, threads)
        _print_family(family, result[family], arms)
    if not args.no_profile:
        torch.set_num_threads(threads)
        result['components'] = profile_components(cfg, assets, cfg['profile_reps'])
        _print_components(result['components'])
    result['wall_s'] = time.time() - t0
    result['loadavg_end_1_5_15'] = list(os.getloadavg())
    write_json(out_path, result)
    print(f'overhead: wrote {out_path}')
    return result


def _print_family(family: str, res: dict[str, Any], arms: list[str]) -> None:
    floor = res.get('flops_floor')
    if floor is not None:
        print(f'  FLOPs floor (teacher fwd / student fwd+bwd): {100 * floor:.1f}%')
    for arm in arms:
        r = res[arm]
        line = f'  {arm:10s} peak RSS {r["peak_rss_mb"]:.0f} MB, {r["tokens_per_s_teacher_active"]:.0f} tok/s active'
        if arm != 'baseline':
            a, b = r['ratio_teacher_active'], r['ratio_after_stop']
            line += f', step ratio active {a["median"]:.3f} [{a["q1"]:.3f}-{a["q3"]:.3f}], after stop {b["median"]:.3f}'
        print(line, flush=True)


def _print_components(comp: dict[str, Any]) -> None:
    print(f'  components (share of the student fwd+bwd), FLOPs floor {100 * comp["flops"]["floor"]:.1f}%:')
    for name, v in comp.items():
        if isinstance(v, dict) and 'median_ms' in v:
            print(f'    {name:28s} {v["median_ms"]:8.2f} ms  {100 * v["share_of_student_fwd_bwd"]:6.1f}%')


if __name__ == '__main__':
    main()
