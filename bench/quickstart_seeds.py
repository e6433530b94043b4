"""The quickstart's result over seeds, with its placebo: issue 28's acceptance for the real SmolLM2-135M teacher.

Trains the quickstart's own arms (its worker and ``yamls/cpu/quickstart-*.yaml``, the demo's ``Plan``) at each seed:
``baseline``, ``let`` (the demo's LET block), ``placebo`` (the same block at λ0 = 0.001: the teacher runs,
the guidance does not pull, so its gap to the baseline is the noise floor of pairing) and ``let@<variable>=<value>``
(the demo's LET block with one of its YAML variables changed, e.g. ``let@lambda0=10``). One run per process, one
record per arm and seed under ``--out``; runs already recorded are skipped, so lanes can share a folder::

    OMP_NUM_THREADS=1 python bench/quickstart_seeds.py run --seeds 18 --arms baseline,let,placebo
    python bench/quickstart_seeds.py summarize --out bench/results/quickstart-seeds \\
        --json bench/reported/quickstart-seeds/summary.json

``summarize`` pairs each arm with the baseline of its seed: final-eval-loss gap, and the speedup in steps to the
baseline's final loss (baseline steps / LET's, interpolated between evals), as mean ± sample std over seeds;
with ``--json`` also ``.md`` and ``.png`` (eval loss per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from analysis import first_reach, spread

from composer_let.prep import quickstart as qs

PLACEBO_LAMBDA0 = 0.001


def run(args: argparse.Namespace) -> None:
    plan = qs.FULL
    assets = argparse.Namespace(work=args.work, teacher=None, data=None)
    teacher, data = qs.prepare_assets(assets, plan)
    yamls = qs.yamls_folder()
    for seed in args.seeds.split(','):
        for arm in args.arms.split(','):
            folder = (Path(args.out) / f'{arm}-s{seed}').resolve()
            record = folder / 'record.json'
            if record.exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            overrides = [
                f'variables.teacher={teacher.resolve()}',
                f'variables.data_local={data.resolve()}',
                f'variables.run_name=qs-{arm}-s{seed}',
                *plan.overrides(),
                f'variables.seed={seed}',
            ]
            if arm == 'placebo':
                overrides.append(f'variables.lambda0={PLACEBO_LAMBDA0}')
            elif arm.startswith('let@'):  # e.g. let@lambda0=10: another value of one of the demo's variables
                overrides.append(f'variables.{arm[4:]}')
            yaml_arm = 'baseline' if arm == 'baseline' else 'let'
            command = [
                sys.executable, '-m', 'composer_let.prep.quickstart', '--worker',
                str(yamls / 'cpu' / f'quickstart-{yaml_arm}.yaml'), str(record), arm, *overrides,
            ]  # fmt: skip
            started, load = time.time(), os.getloadavg()
            with open(folder / 'log.txt', 'w') as log:
                subprocess.run(command, cwd=folder, check=True, stdout=log, stderr=subprocess.STDOUT)
            result = json.loads(record.read_text())
            result['wall_seconds'] = time.time() - started
            result['load_average'] = {'start': load[0], 'end': os.getloadavg()[0]}
            result['threads'] = os.environ.get('OMP_NUM_THREADS')
            record.write_text(json.dumps(result) + '\n')
            print(f'{arm} seed {seed}: final eval loss {result["evals"][-1]["loss"]:.4f}', flush=True)


def summarize(out: Path) -> dict[str, Any]:
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob('*-s*/record.json')):
        records[path.parent.name] = json.loads(path.read_text())
    seeds = sorted({name.rsplit('-s', 1)[1] for name in records}, key=int)
    per_seed: dict[str, dict[str, Any]] = {}
    arms: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        baseline = records.get(f'baseline-s{seed}')
        if baseline is None:
            continue
        target = baseline['evals'][-1]['loss']
        final_step = baseline['evals'][-1]['batch']
        row: dict[str, Any] = {'baseline': target}
        for name, record in records.items():
            arm, _, record_seed = name.rpartition('-s')
            if arm == 'baseline' or record_seed != seed:
                continue
            loss = record['evals'][-1]['loss']
            step = first_reach(record['evals'], target, axis='batch')
            speedup = None if step is None else final_step / step
            row[arm] = {'final_eval_loss': loss, 'gap': loss - target, 'speedup_steps': speedup}
            arms.setdefault(arm, {'gap': [], 'speedup_steps': []})
            arms[arm]['gap'].append(loss - target)
            arms[arm]['speedup_steps'].append(0.0 if speedup is None else speedup)
        per_seed[seed] = row
    summary: dict[str, Any] = {
        'plan': {**asdict(qs.FULL), 'seed': None},
        'placebo_lambda0': PLACEBO_LAMBDA0,
        'per_seed': per_seed,
        'arms': {arm: {key: {'values': v, **spread(v)} for key, v in stats.items()} for arm, stats in arms.items()},
        'load_average': {name: r.get('load_average') for name, r in records.items()},
        'threads': {name: r.get('threads') for name, r in records.items()},
        'train_seconds': {name: r['evals'][-1]['train_seconds'] for name, r in records.items()},
    }
    let, placebo = arms.get('let'), arms.get('placebo')
    if let and placebo and len(let['gap']) == len(placebo['gap']) and len(let['gap']) >= 3:
        floor = max(abs(g) for g in placebo['gap'])
        summary['verdict'] = {
            'seeds': len(let['gap']),
            'let_ahead_on_every_seed': all(g < 0 for g in let['gap']),
            'placebo_max_abs_gap': floor,
            'let_ahead_by_more_than_placebo_on_every_seed': all(g < -floor for g in let['gap']),
        }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        '| seed | baseline | LET | LET − baseline | speedup | placebo − baseline |',
        '|---|---|---|---|---|---|',
    ]
    for seed, row in summary['per_seed'].items():
        let, placebo = row.get('let', {}), row.get('placebo', {})
        speedup = let.get('speedup_steps')
        lines.append(
            f'| {seed} | {row["baseline"]:.3f} | {let.get("final_eval_loss", float("nan")):.3f} '
            f'| {let.get("gap", float("nan")):+.3f} | {"—" if speedup is None else f"{speedup:.2f}×"} '
            f'| {placebo.get("gap", float("nan")):+.3f} |'
        )
    for arm, stats in summary['arms'].items():
        gap, speed = stats['gap'], stats['speedup_steps']
        std = '' if gap['n'] < 2 else f' ± {gap["std"]:.3f}'
        speed_std = '' if speed['n'] < 2 else f' ± {speed["std"]:.2f}'
        count = len(gap['values'])
        lines.append(
            f'\n{arm}: gap {gap["mean"]:+.3f}{std} nats, speedup {speed["mean"]:.2f}{speed_std}× '
            f'(n={count}; a seed that never reached the baseline counts 0)'
        )
    if 'verdict' in summary:
        lines.append(f'\nverdict: {json.dumps(summary["verdict"])}')
    return '\n'.join(lines) + '\n'


def plot(out: Path, path: Path) -> None:
    """Eval loss vs step, one panel per seed, every arm of that seed."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    records = {r.parent.name: json.loads(r.read_text()) for r in sorted(out.glob('*-s*/record.json'))}
    seeds = sorted({name.rsplit('-s', 1)[1] for name in records}, key=int)
    arms = sorted({name.rpartition('-s')[0] for name in records})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 3.6), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        for name, record in records.items():
            arm, _, record_seed = name.rpartition('-s')
            if record_seed == seed:
                steps, losses = [e['batch'] for e in record['evals']], [e['loss'] for e in record['evals']]
                ax.plot(steps, losses, label=arm, color=f'C{arms.index(arm)}')
        ax.set_title(f'seed {seed}')
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel('eval loss (held-out)')
    fig.suptitle('quickstart over seeds: SmolLM2-135M teacher, teacher_norm: standardize')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=('run', 'summarize'))
    parser.add_argument('--seeds', default='17,18,19')
    parser.add_argument('--arms', default='baseline,let,placebo')
    parser.add_argument('--work', default='work', help="the quickstart's prepared teacher and corpus")
    parser.add_argument('--out', default='bench/results/quickstart-seeds')
    parser.add_argument('--json', type=Path, help='summarize: write the summary here (and .md beside it)')
    args = parser.parse_args()
    if args.command == 'run':
        run(args)
        return 0
    summary = summarize(Path(args.out))
    text = markdown(summary)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + '\n')
        args.json.with_suffix('.md').write_text(text)
        plot(Path(args.out), args.json.with_suffix('.png'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
