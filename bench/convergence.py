"""Does LET pay off? The paper's main experiment in miniature, on real text, through llm-foundry YAMLs.

1. Corpus: ``../shared/data/text`` (Wikipedia, Shakespeare, Python docs), a byte-level BPE tokenizer
   trained on the training documents, MDS shards with a held-out split of unseen documents (val).
2. Teacher: a small Llama pretrained with llm-foundry's ``train_from_yaml`` on
   ``yamls/bench/convergence.yaml`` to the end of its schedule, saved as a Hugging Face folder and
   cached (reruns skip it).
3. Targets: a ~10x larger Llama (non-embedding parameters) from scratch, same YAML, one run per
   (seed, arm). Arms: ``baseline``, ``let`` (L2E, λ0 = 0.1, S_stop = 0.25dur), optional ``salt`` and
   ``let+salt``, and ablation variants (``--lambda0s``, ``--strategies``, ``--projections``,
   ``--losses``). Baseline and LET of a seed share the init seed and the data order.
4. Report: speedup = baseline steps to its final eval loss / arm steps to that loss (and the same in
   train wall-clock), final loss/perplexity, the teacher's eval loss and where each run crosses it,
   a PNG of eval loss vs steps and vs wall-clock. Finished runs are cached, so an interrupted
   benchmark resumes where it stopped.

    python bench/convergence.py                    # full: 3 seeds, ~2 h on 2 idle cores
    python bench/convergence.py --reduced          # 10.7x smaller pair, 300 steps, ~1/4 of the full compute
    python bench/convergence.py --quick            # same code path, minutes (not for numbers)
    python bench/convergence.py --lambda0s 0.01,0.3,1,3 --seeds 1,2,3   # + the λ0 sweep
    python bench/convergence.py --arms baseline,let,salt,let+salt       # + SALT arms
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_YAMLS,
    RESULTS,
    SHARED_TEXT,
    machine_facts,
    param_counts,
    shared_corpus,
    write_json,
)

YAML = BENCH_YAMLS / 'convergence.yaml'
EVAL_KEY = 'metrics/eval/LanguageCrossEntropy'

FULL: dict[str, Any] = {
    'corpus_chars': None,  # the whole corpus (~13 MB)
    'vocab': 2048,
    'seq': 128,
    'batch': 16,
    'val_share': 0.05,
    # The teacher sees 1/3 of the target's tokens (at 1/10 of its size, ~1/30 of its compute): trained on
    # as many tokens as the target, it is not surpassed within a CPU-sized run (measured; see README).
    'teacher': {'hidden': 64, 'intermediate': 256, 'layers': 5, 'heads': 2, 'steps': 235, 'lr': 3e-3, 'warmup': 12},
    'target': {'hidden': 192, 'intermediate': 768, 'layers': 6, 'heads': 3, 'steps': 700, 'lr': 2e-3, 'warmup': 35},
    'eval_interval': 50,
    'eval_batches': 16,
    'seeds': [1, 2, 3],
    'let': {'strategy': 'L2E', 'lambda0': 0.1, 'stop': '0.25dur', 'teacher_dtype': 'fp32'},
    'salt': {'stop': '0.25dur', 'teacher_dtype': 'fp32'},
}
# The same experiment at ~1/4 of the full compute (for a busy machine): 10.7x non-embedding ratio kept.
REDUCED: dict[str, Any] = {
    **FULL,
    'corpus_chars': 4_000_000,
    'teacher': {'hidden': 48, 'intermediate': 192, 'layers': 4, 'heads': 2, 'steps': 100, 'lr': 3e-3, 'warmup': 5},
    'target': {'hidden': 128, 'intermediate': 512, 'layers': 6, 'heads': 2, 'steps': 300, 'lr': 2e-3, 'warmup': 15},
    'eval_interval': 25,
    'eval_batches': 8,
}
QUICK: dict[str, Any] = {
    **FULL,
    'corpus_chars': 1_500_000,
    'vocab': 1024,
    'teacher': {'hidden': 32, 'intermediate': 128, 'layers': 4, 'heads': 2, 'steps': 120, 'lr': 3e-3, 'warmup': 10},
    'target': {'hidden': 96, 'intermediate': 384, 'layers': 4, 'heads': 2, 'steps': 120, 'lr': 2e-3, 'warmup': 10},
    'eval_interval': 20,
    'eval_batches': 8,
    'seeds': [1],
}
SMOKE: dict[str, Any] = {
    **QUICK,
    'corpus_chars': 300_000,
    'vocab': 512,
    'seq': 64,
    'batch': 4,
    'val_share': 0.1,
    'teacher': {'hidden': 32, 'intermediate': 128, 'layers': 2, 'heads': 2, 'steps': 8, 'lr': 3e-3, 'warmup': 2},
    'target': {'hidden': 64, 'intermediate': 256, 'layers': 2, 'heads': 2, 'steps': 10, 'lr': 2e-3, 'warmup': 2},
    'eval_interval': 5,
    'eval_batches': 2,
}
ARM_KINDS = ('baseline', 'let', 'salt', 'let+salt')


def signature(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Assets ---------------------------------------------------------------------------------------------


def prepare_corpus(cfg: dict, cache: Path) -> dict[str, Any]:
    """Tokenizer (trained on the training documents only) and MDS train/val shards, cached."""
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import build_tokenizer, write_token_shards

    key = signature({'layout': 2, **{k: cfg[k] for k in ('corpus_chars', 'vocab', 'seq', 'val_share')}})
    folder = cache / f'corpus-{key}'
    meta_path = folder / 'meta.json'
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    texts = shared_corpus(cfg['corpus_chars'])
    if texts is None:
        raise SystemExit(f'convergence: the real corpus is absent ({SHARED_TEXT}); nothing to benchmark on.')
    n_train_docs = int(len(texts) * (1 - cfg['val_share']))
    train_docs, held_out = texts[:n_train_docs], texts[n_train_docs:]
    build_tokenizer(folder / 'tokenizer', train_docs, vocab_size=cfg['vocab'])
    tokenizer = AutoTokenizer.from_pretrained(folder / 'tokenizer')
    # Held-out documents cut into ~1,000-character pieces and shuffled, so that any prefix of the val
    # split (an eval subset) mixes all three domains instead of a couple of long documents.
    pieces = [doc[i : i + 1000] for doc in held_out for i in range(0, len(doc), 1000)]
    random.Random(0).shuffle(pieces)
    counts = write_token_shards(folder / 'data', tokenizer, train_docs, seq_len=cfg['seq'], splits={'train': 1.0})
    counts.update(write_token_shards(folder / 'data', tokenizer, pieces, seq_len=cfg['seq'], splits={'val': 1.0}))
    meta = {
        'folder': str(folder),
        'tokenizer': str(folder / 'tokenizer'),
        'data': str(folder / 'data'),
        'documents': {'train': len(train_docs), 'val': len(held_out)},
        'characters': sum(len(t) for t in texts),
        'rows': counts,
        'tokens': {split: n * cfg['seq'] for split, n in counts.items()},
    }
    write_json(meta_path, meta)
    return meta


def _model_args(size: dict, cfg: dict, init: str, data: str, seed: int, name: str) -> list[str]:
    return [
        f'variables.init={init}',
        f'variables.data_local={data}',
        f'variables.max_seq_len={cfg["seq"]}',
        f'variables.batch={cfg["batch"]}',
        f'variables.hidden={size["hidden"]}',
        f'variables.intermediate={size["intermediate"]}',
        f'variables.layers={size["layers"]}',
        f'variables.heads={size["heads"]}',
        f'variables.head_dim={size["hidden"] // size["heads"]}',
        f'variables.tie={str(size.get("tie", True)).lower()}',
        f'variables.lr={size["lr"]}',
        f'variables.warmup={size["warmup"]}ba',
        f'variables.steps={size["steps"]}ba',
        f'variables.eval_interval={cfg["eval_interval"]}ba',
        f'variables.eval_batches={cfg["eval_batches"]}',
        f'variables.seed={seed}',
        f'variables.run_name={name}',
    ]


def train(args: list[str]) -> tuple[Any, float]:
    from llmfoundry.command_utils import train_from_yaml

    t0 = time.time()
    trainer = train_from_yaml(str(YAML), args)
    return trainer, time.time() - t0


def eval_curve(trainer: Any) -> list[dict[str, float]]:
    """``[{step, train_s, loss}]``: eval loss on the held-out split with the train wall-clock (eval excluded)."""
    from composer.loggers import InMemoryLogger

    logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    return [
        {'step': ts.batch.value, 'train_s': ts.total_wct.total_seconds(), 'loss': float(v)}
        for ts, v in logger.data.get(EVAL_KEY, [])
    ]


def mean_logged(trainer: Any, key: str) -> float | None:
    from composer.loggers import InMemoryLogger

    logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    values = [float(v) for _, v in logger.data.get(key, [])]
    return statistics.median(values) if values else None


def prepare_teacher(cfg: dict, corpus: dict, cache: Path) -> dict[str, Any]:
    """Pretrain the small teacher with llm-foundry to the end of its schedule; save it as an HF folder."""
    from transformers import AutoTokenizer

    from composer_let.prep.tiny import save_llama

    t = cfg['teacher']
    key = signature({'corpus': corpus['folder'], 'teacher': t, 'seq': cfg['seq'], 'batch': cfg['batch']})
    folder = cache / f'teacher-{key}'
    meta_path = folder / 'bench_teacher.json'
    if meta_path.exists():
        print(f'convergence: cached teacher {folder}', flush=True)
        return json.loads(meta_path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(corpus['tokenizer'])
    init = cache / f'teacher-{key}-config'
    save_llama(init, tokenizer, hidden=t['hidden'], layers=t['layers'], heads=t['heads'], max_positions=cfg['seq'])
    print(f'convergence: pretraining the teacher ({t["steps"]} steps) ...', flush=True)
    trainer, wall = train(_model_args(t, cfg, str(init), corpus['data'], 0, 'teacher'))
    model = trainer.state.model.model
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    curve = eval_curve(trainer)
    meta = {
        'folder': str(folder),
        'config': t,
        'params': param_counts(model),
        'eval_curve': curve,
        'eval_loss': curve[-1]['loss'],
        'tokens_seen': t['steps'] * cfg['batch'] * cfg['seq'],
        'wall_s': wall,
    }
    trainer.close()
    write_json(meta_path, meta)
    return meta


# Arms -------------------------------------------------------------------------------------------------


def parse_arms(args: argparse.Namespace, cfg: dict) -> list[dict[str, Any]]:
    """``[{name, let: {...} | None, salt: {...} | None}]``: the base arms plus one LET arm per ablation value."""
    arms = []
    for kind in (a.strip() for a in args.arms.split(',') if a.strip()):
        if kind not in ARM_KINDS:
            raise SystemExit(f'convergence: --arms {kind!r} is not one of {", ".join(ARM_KINDS)}.')
        arms.append(
            {
                'name': kind,
                'let': dict(cfg['let']) if 'let' in kind else None,
                'salt': dict(cfg['salt']) if 'salt' in kind else None,
            }
        )
    sweeps = {
        'lambda0': args.lambda0s,
        'strategy': args.strategies,
        'projection': args.projections,
        'loss': args.losses,
    }
    for key, values in sweeps.items():
        for raw in (v.strip() for v in (values or '').split(',') if v.strip()):
            value: Any = float(raw) if key == 'lambda0' else raw
            if value == cfg['let'].get(key, {'projection': 'interpolate', 'loss': 'cosine'}.get(key)):
                continue  # that is the default `let` arm
            arms.append({'name': f'let:{key}={raw}', 'let': {**cfg['let'], key: value}, 'salt': None})
    if 'baseline' not in [a['name'] for a in arms]:
        raise SystemExit('convergence: --arms must include baseline (speedups are measured against it).')
    if any(a['salt'] for a in arms):
        from llmfoundry.registry import algorithms

        try:
            algorithms.get('salt')
        except Exception:
            raise SystemExit(
                'convergence: --arms asks for SALT, but no `salt` algorithm is registered with llm-foundry '
                '(composer_let.salt missing or not installed). Drop salt from --arms or reinstall composer-let.'
            ) from None
    return arms


def run_arm(arm: dict, seed: int, cfg: dict, corpus: dict, teacher: dict, runs: Path) -> dict[str, Any]:
    """One target run (cached by its exact settings)."""
    key = signature(
        {'arm': arm, 'seed': seed, 'target': cfg['target'], 'teacher': teacher['folder'], 'eval': cfg['eval_interval']}
    )
    path = runs / f'{arm["name"].replace("/", "_")}-seed{seed}-{key}.json'
    if path.exists():
        return json.loads(path.read_text())
    args = _model_args(cfg['target'], cfg, teacher['folder'], corpus['data'], seed, f'{arm["name"]}-s{seed}')
    for algo in ('let', 'salt'):
        for k, v in (arm[algo] or {}).items():
            args.append(f'algorithms.{algo}.{k}={v}')
        if arm[algo]:
            args.append(f'algorithms.{algo}.teacher={teacher["folder"]}')
    print(f'convergence: {arm["name"]} seed {seed} ...', flush=True)
    trainer, wall = train(args)
    curve = eval_curve(trainer)
    result = {
        'arm': arm,
        'seed': seed,
        'eval_curve': curve,
        'final_loss': curve[-1]['loss'],
        'tokens_per_s': mean_logged(trainer, 'throughput/tokens_per_sec'),
        'train_s': curve[-1]['train_s'],
        'wall_s': wall,
        'params': param_counts(trainer.state.model.model),
        'let_cosine_first_last': _first_last(trainer, 'let/cosine'),
    }
    trainer.close()
    write_json(path, result)
    print(f'  final eval loss {result["final_loss"]:.4f}, {result["tokens_per_s"] or 0:.0f} tok/s', flush=True)
    return result


def _first_last(trainer: Any, key: str) -> list[float] | None:
    from composer.loggers import InMemoryLogger

    logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    values = [float(v) for _, v in logger.data.get(key, [])]
    return [values[0], values[-1]] if values else None


# Analysis (pure functions of the curves) ------------------------------------------------------------------


def first_reach(curve: list[dict[str, float]], loss: float, axis: str = 'step') -> float | None:
    """Where the eval curve first reaches ``loss`` (linear interpolation between evals), or None."""
    prev = None
    for point in curve:
        if point['loss'] <= loss:
            if prev is None or prev['loss'] == point['loss']:
                return point[axis]
            frac = (prev['loss'] - loss) / (prev['loss'] - point['loss'])
            return prev[axis] + frac * (point[axis] - prev[axis])
        prev = point
    return None


def speedup(baseline: list[dict[str, float]], arm: list[dict[str, float]], axis: str = 'step') -> dict[str, Any]:
    """Baseline's steps (or seconds) to its own final loss / the arm's to that loss.

    When the arm never reaches it, the speedup is below 1: the baseline's time to the arm's final
    loss / the arm's whole run (``reached: false``).
    """
    target = baseline[-1]['loss']
    reached = first_reach(arm, target, axis)
    if reached is not None and reached > 0:
        return {'speedup': baseline[-1][axis] / reached, 'reached': True, 'at': reached}
    base_at = first_reach(baseline, arm[-1]['loss'], axis)
    return {'speedup': (base_at or 0.0) / arm[-1][axis], 'reached': False, 'at': None}


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {'mean': float('nan'), 'std': float('nan'), 'min': float('nan'), 'max': float('nan'), 'n': 0}
    return {
        'mean': statistics.fmean(values),
        'std': statistics.stdev(values) if len(values) > 1 else 0.0,
        'min': min(values),
        'max': max(values),
        'n': len(values),
    }


def summarise(runs: list[dict], teacher_loss: float, arm_names: list[str]) -> dict[str, Any]:
    by = {(r['arm']['name'], r['seed']): r for r in runs}
    seeds = sorted({r['seed'] for r in runs})
    out: dict[str, Any] = {}
    for name in arm_names:
        rows = [(s, by[(name, s)]) for s in seeds if (name, s) in by]
        entry: dict[str, Any] = {
            'seeds': [s for s, _ in rows],
            'final_loss': spread([r['final_loss'] for _, r in rows]),
            'final_perplexity': spread([math.exp(r['final_loss']) for _, r in rows]),
            'tokens_per_s': spread([r['tokens_per_s'] for _, r in rows if r['tokens_per_s']]),
            'crosses_teacher_at_step': {s: first_reach(r['eval_curve'], teacher_loss) for s, r in rows},
        }
        if name != 'baseline':
            pairs = [(s, by[('baseline', s)], r) for s, r in rows if ('baseline', s) in by]
            steps = {s: speedup(b['eval_curve'], r['eval_curve'], 'step') for s, b, r in pairs}
            wall = {s: speedup(b['eval_curve'], r['eval_curve'], 'train_s') for s, b, r in pairs}
            entry['speedup_steps'] = {'per_seed': steps, **spread([v['speedup'] for v in steps.values()])}
            entry['speedup_wallclock'] = {'per_seed': wall, **spread([v['speedup'] for v in wall.values()])}
            entry['final_loss_minus_baseline'] = spread([r['final_loss'] - b['final_loss'] for _, b, r in pairs])
        out[name] = entry
    sweep = {n: e for n, e in out.items() if n == 'let' or n.startswith('let:lambda0=')}
    if len(sweep) > 1:
        best = max(sweep, key=lambda n: sweep[n]['speedup_steps']['mean'])
        out['best_lambda0'] = {'arm': best, 'speedup_steps': sweep[best]['speedup_steps']['mean']}
    return out


def plot(runs: list[dict], teacher_loss: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r['arm']['name'] for r in runs))
    colours = {n: plt.get_cmap('tab10')(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, axis, label in ((axes[0], 'step', 'step'), (axes[1], 'train_s', 'train wall-clock (s, eval excluded)')):
        for r in runs:
            curve = r['eval_curve']
            ax.plot(
                [p[axis] for p in curve],
                [p['loss'] for p in curve],
                color=colours[r['arm']['name']],
                alpha=0.8,
                marker='.',
                label=f'{r["arm"]["name"]} (seed {r["seed"]})',
            )
        ax.axhline(teacher_loss, color='black', linestyle='--', linewidth=1, label='teacher (final)')
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('held-out eval loss (nats/token)')
    losses = [p['loss'] for r in runs for p in r['eval_curve']]
    if losses:
        low = min(*losses, teacher_loss)
        axes[0].set_ylim(low - 0.05, min(max(losses), low + 1.5) + 0.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='center right', fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true', help='small sizes, 1 seed: minutes; exercises the full path')
    mode.add_argument('--reduced', action='store_true', help='smaller target/teacher, 300 steps (~1/4 of full)')
    mode.add_argument('--smoke', action='store_true', help='tiny sizes, seconds (the CI smoke test)')
    parser.add_argument('--arms', default='baseline,let', help=f'comma list of {", ".join(ARM_KINDS)}')
    parser.add_argument('--seeds', help='comma list of seeds (full: 1,2,3)')
    parser.add_argument('--target-steps', type=int, help='override the target run length (steps)')
    parser.add_argument('--teacher-steps', type=int, help='override the teacher pretraining length (steps)')
    parser.add_argument('--stop', help="LET's S_stop (default 0.25dur)")
    parser.add_argument('--teacher-dtype', choices=('fp32', 'bf16', 'fp16'), help='default fp32 (faster on CPU)')
    parser.add_argument('--lambda0s', help='λ0 sweep, e.g. 0.01,0.3,1,3 (one extra LET arm each)')
    parser.add_argument('--strategies', help='e.g. L2M,L2L,M2E,M2M,M2L')
    parser.add_argument('--projections', help='e.g. linear')
    parser.add_argument('--losses', help='e.g. mse,smooth_l1')
    parser.add_argument('--untied-target', action='store_true', help='targets get an LM head of their own')
    parser.add_argument('--threads', type=int, help="torch threads (default: torch's; 1 is steadier on a busy machine)")
    parser.add_argument('--tag', help='results subfolder name (default: full, quick or smoke)')
    parser.add_argument('--results', type=Path, default=RESULTS, help='results root (default bench/results)')
    args = parser.parse_args(argv)

    mode = 'smoke' if args.smoke else 'quick' if args.quick else 'reduced' if args.reduced else 'full'
    cfg = json.loads(json.dumps({'smoke': SMOKE, 'quick': QUICK, 'reduced': REDUCED, 'full': FULL}[mode]))
    tag = args.tag or mode
    if args.seeds:
        cfg['seeds'] = [int(s) for s in args.seeds.split(',') if s.strip()]
    if args.target_steps:
        cfg['target']['steps'] = args.target_steps
    if args.teacher_steps:
        cfg['teacher']['steps'] = args.teacher_steps
    if args.untied_target:
        cfg['target']['tie'] = False
    if args.stop:
        cfg['let']['stop'] = cfg['salt']['stop'] = args.stop
    if args.teacher_dtype:
        cfg['let']['teacher_dtype'] = cfg['salt']['teacher_dtype'] = args.teacher_dtype
    arms = parse_arms(args, cfg)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    out_dir = args.results / f'convergence-{tag}'
    cache = args.results / 'cache'
    machine = machine_facts()
    t0 = time.time()
    corpus = prepare_corpus(cfg, cache)
    teacher = prepare_teacher(cfg, corpus, cache)
    print(f'convergence: teacher eval loss {teacher["eval_loss"]:.4f} ({teacher["params"]})', flush=True)
    runs = []
    for seed in cfg['seeds']:  # seed-major: a partial benchmark still has complete pairs
        for arm in arms:
            runs.append(run_arm(arm, seed, cfg, corpus, teacher, out_dir / 'runs'))
    names = [a['name'] for a in arms]
    summary = summarise(runs, teacher['eval_loss'], names)
    target_params = runs[0]['params']
    result = {
        'mode': mode,
        'tag': tag,
        'config': cfg,
        'arms': arms,
        'corpus': corpus,
        'teacher': teacher,
        'params_ratio_non_embedding': target_params['non_embedding'] / teacher['params']['non_embedding'],
        'params_ratio_total': target_params['total'] / teacher['params']['total'],
        'target_params': target_params,
        'summary': summary,
        'runs': runs,
        'machine_start': machine,
        'loadavg_end_1_5_15': list(__import__('os').getloadavg()),
        'wall_s_this_invocation': time.time() - t0,
    }
    write_json(out_dir / 'convergence.json', result)
    title = (
        f'{tag}: target {target_params["non_embedding"] / 1e6:.2f}M vs teacher '
        f'{teacher["params"]["non_embedding"] / 1e6:.2f}M non-emb params, {cfg["target"]["steps"]} steps, '
        f'seeds {cfg["seeds"]}'
    )
    plot(runs, teacher['eval_loss'], out_dir / 'convergence.png', title)
    print_report(result)
    print(f'convergence: wrote {out_dir / "convergence.json"} and convergence.png')
    return result


def print_report(result: dict[str, Any]) -> None:
    s = result['summary']
    print(
        f'teacher eval loss {result["teacher"]["eval_loss"]:.4f}; target/teacher params '
        f'{result["params_ratio_non_embedding"]:.1f}x non-embedding, {result["params_ratio_total"]:.1f}x total'
    )
    for name, e in s.items():
        if name == 'best_lambda0':
            print(f'best λ0 arm: {e["arm"]} (speedup {e["speedup_steps"]:.2f}x)')
            continue
        line = (
            f'{name:22s} final loss {e["final_loss"]["mean"]:.4f} ± {e["final_loss"]["std"]:.4f} '
            f'(ppl {e["final_perplexity"]["mean"]:.1f}), crosses teacher at {e["crosses_teacher_at_step"]}'
        )
        if 'speedup_steps' in e:
            line += (
                f', speedup steps {e["speedup_steps"]["mean"]:.2f} ± {e["speedup_steps"]["std"]:.2f}, '
                f'wall {e["speedup_wallclock"]["mean"]:.2f} ± {e["speedup_wallclock"]["std"]:.2f}'
            )
        print(line)


if __name__ == '__main__':
    main()
