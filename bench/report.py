"""Summarise every cached convergence run into the tables and figures bench/README.md quotes.

Reads ``bench/results/runs/*.json`` (written by ``bench/convergence.py``; nothing is trained here,
teachers must already be cached) and writes, for each experiment that has runs:

* ``<out>/<name>.json``: the summary (per arm: final loss mean ± std over seeds, speedup in steps,
  whether the gap to the baseline is within seed noise, where each seed passes the teacher, LET's
  diagnostics averaged over the active phase) plus every run's eval curve; paths inside the
  repository are written relative to it;
* ``<out>/<name>.png``: eval loss vs step, whole run and second half;
* ``<out>/lambda0-sweeps.png`` (speedup vs λ0 per regime) and ``<out>/<regime>-width-{lambda0,grad-ratio}.png``
  (speedup vs λ0 and vs relative strength per target width, for each regime where two widths have run);
* a markdown report on stdout (``--markdown FILE`` also writes it).

    python bench/report.py                         # into bench/results/report/
    python bench/report.py --out bench/reported    # the copies README and bench/README quote
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis import best_arm, pull_per_lambda, series_mean, summarise
from common import RESULTS, repo_relative, write_json
from convergence import LET_DEFAULTS, TARGET, make_plan, run_path
from plots import plot_curves, plot_lambda_sweeps

# name: (regime, width, cross_teacher)
EXPERIMENTS: dict[str, tuple[str, int | None, bool]] = {
    'teacher-ahead': ('teacher-ahead', None, False),
    'overtake': ('overtake', None, False),
    'weak-teacher': ('weak-teacher', None, False),
    'teacher-ahead-w32': ('teacher-ahead', 32, False),
    'teacher-ahead-w128': ('teacher-ahead', 128, False),
    'teacher-ahead-cross-tokenizer': ('teacher-ahead', None, True),
    'overtake-w32': ('overtake', 32, False),  # the width study in overtake: bench/regimes.sh width-overtake
    'overtake-w128': ('overtake', 128, False),
}
LAMBDA0S = ('0.01', '0.03', '0.1', '0.3', '1', '3', '10', '30')
GRAD_RATIOS = ('0.1', '0.3', '1', '3', '10')  # strength: relative


def width_study(regime: str) -> dict[str, int]:
    """The experiments of ``regime``'s width study (issue 10 §3) by target width: its same-tokenizer ones."""
    study = {name: w or TARGET['hidden'] for name, (r, w, cross) in EXPERIMENTS.items() if r == regime and not cross}
    return dict(sorted(study.items(), key=lambda item: item[1]))


def all_arms(runs_dir: Path) -> list[dict[str, Any]]:
    """Every distinct arm of the cached runs, baseline first, in a stable order."""
    arms: dict[str, dict[str, Any]] = {}
    for path in sorted(runs_dir.glob('*.json')):
        if path.name.endswith(('.tmp.json', '.job.json')):
            continue
        arm = json.loads(path.read_text())['arm']
        arms.setdefault(arm['name'], arm)
    return sorted(arms.values(), key=lambda a: (a['name'] != 'baseline', a['name'] != 'let', a['name']))


def strength_of(arm: dict[str, Any]) -> tuple[str, str] | None:
    """``('lambda0', '3')`` or ``('grad_ratio', '1')`` for a plain sweep arm (default settings but the
    strength); else None."""
    let = arm.get('let')
    if not let or arm.get('salt'):
        return None
    strength_keys = ('lambda0', 'strength', 'grad_ratio')
    rest = {k: v for k, v in let.items() if k not in strength_keys}
    if rest != {k: v for k, v in LET_DEFAULTS.items() if k not in strength_keys}:
        return None
    if let.get('strength') == 'relative':
        return 'grad_ratio', f'{let["grad_ratio"]:g}'
    return 'lambda0', f'{let["lambda0"]:g}'


def diagnostics(run: dict[str, Any]) -> dict[str, float | None]:
    """LET's logged diagnostics averaged over the batches where the teacher was active."""
    series = run.get('series', {})
    active = [s for s, v in series.get('let/lambda', []) if v > 0]
    if not active:
        return {}
    last = max(active)
    out: dict[str, float | None] = {'active_until': last}  # a fixed stop's S_stop; stop: auto's ramp end
    end = int(last) + 1
    out.update({k.split('/')[1]: series_mean(series.get(k), 0, end) for k in ('let/grad_ratio', 'let/grad_cos')})
    out['grad_ratio_first_10pct'] = series_mean(series.get('let/grad_ratio'), 0, max(2, end // 10))
    out['cosine_last'] = series.get('let/cosine', [[0, math.nan]])[-1][1]
    gaps = [
        (s, st - te)
        for (s, st), (_, te) in zip(series.get('let/student_ce', []), series.get('let/teacher_ce', []), strict=False)
    ]
    crossing = next((s for s, g in gaps if g < 0), None)
    out['student_below_teacher_ce_at'] = crossing
    return out


def experiment(name: str, runs_dir: Path, cache: Path) -> dict[str, Any] | None:
    regime, width, cross = EXPERIMENTS[name]
    try:
        plan = make_plan(regime, cache, width=width, cross_teacher=cross, train_teacher=False)
    except SystemExit:
        return None
    teacher = plan['teacher']
    runs = []
    for arm in all_arms(runs_dir):
        for seed in (1, 2, 3, 4, 5):
            path = run_path(runs_dir, arm, seed, plan, teacher)
            if path.exists():
                runs.append(json.loads(path.read_text()))
    if not any(r['arm']['name'] != 'baseline' for r in runs):
        return None
    names = list(dict.fromkeys(r['arm']['name'] for r in runs))
    summary = summarise(runs, teacher['eval_loss'], names)
    for arm_name, entry in summary.items():
        mine = [r for r in runs if r['arm']['name'] == arm_name]
        diag = [diagnostics(r) for r in mine]
        entry['teacher_active_until'] = {r['seed']: d.get('active_until') for r, d in zip(mine, diag, strict=True)}
        if diag and diag[0]:
            entry['diagnostics'] = {k: _mean([d.get(k) for d in diag]) for k in diag[0]}
    sweeps: dict[str, dict[str, str]] = {'lambda0': {}, 'grad_ratio': {}}
    for arm in (r['arm'] for r in runs):
        if key := strength_of(arm):
            sweeps[key[0]][key[1]] = arm['name']
    lambda0s = {k: sweeps['lambda0'][k] for k in LAMBDA0S if k in sweeps['lambda0']}
    ratios = {k: sweeps['grad_ratio'][k] for k in GRAD_RATIOS if k in sweeps['grad_ratio']}
    first = [pull_per_lambda(r['series']) for r in runs if r['arm']['name'] in lambda0s.values()]
    return {
        'name': name,
        'plan': plan,
        'teacher': teacher,
        'target_params': runs[0]['params'],
        'params_ratio_non_embedding': runs[0]['params']['non_embedding'] / teacher['params']['non_embedding'],
        'summary': summary,
        'lambda0_sweep': lambda0s,
        'best_lambda0_arm': best_arm(summary, list(lambda0s.values())),
        'grad_ratio_sweep': ratios,
        'best_grad_ratio_arm': best_arm(summary, list(ratios.values())),
        'grad_ratio_per_lambda_batch_1': _mean(first),
        'runs': [{k: r[k] for k in ('arm', 'seed', 'eval_curve', 'final_loss', 'series', 'params')} for r in runs],
    }


def _mean(values: list[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def markdown(result: dict[str, Any]) -> str:
    teacher = result['teacher']
    steps = result['plan']['run']['steps']
    lines = [
        f'### {result["name"]}',
        '',
        f'Teacher ({teacher["kind"]}): eval loss {teacher["eval_loss"]:.3f}, '
        f'{teacher["params"]["non_embedding"] / 1e6:.3f}M non-embedding parameters, '
        f'{teacher["tokens_seen"] / 1e6:.1f}M tokens. '
        f'Target: {result["target_params"]["non_embedding"] / 1e6:.3f}M non-embedding '
        f'({result["params_ratio_non_embedding"]:.1f}x), {steps} steps.',
        '',
        '| arm | seeds | final loss | Δ vs baseline | speedup (steps) | passes teacher at (fraction) | grad_ratio | '
        'grad_cos | λ > 0 until batch |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for arm, e in result['summary'].items():
        loss = e['final_loss']
        delta = e.get('final_loss_minus_baseline')
        delta_text = (
            '—'
            if delta is None
            else f'{delta["mean"]:+.3f} ± {delta["std"]:.3f}' + (' (noise)' if delta['within_noise'] else '')
        )
        speed = e.get('speedup_steps')
        speed_text = '—' if speed is None else f'{speed["mean"]:.2f} ± {speed["std"]:.2f}'
        fractions = [f'{v:.2f}' if v is not None else 'never' for v in e['crosses_teacher_at_fraction'].values()]
        diag = e.get('diagnostics', {})
        ratio = diag.get('grad_ratio')
        cos = diag.get('grad_cos')
        until = sorted(set(e.get('teacher_active_until', {}).values()) - {None})
        lines.append(
            f'| {arm} | {len(e["seeds"])} | {loss["mean"]:.3f} ± {loss["std"]:.3f} | {delta_text} | {speed_text} | '
            f'{", ".join(fractions)} | {"—" if ratio is None else f"{ratio:.3g}"} | '
            f'{"—" if cos is None else f"{cos:+.2f}"} | {", ".join(map(str, until)) or "—"} |'
        )
    for key, label in (('best_lambda0_arm', 'λ0'), ('best_grad_ratio_arm', 'grad_ratio (strength: relative)')):
        if result[key]:
            lines += ['', f'Best {label} arm (mean final loss, ≥ 2 seeds): `{result[key]}`.']
    return '\n'.join(lines) + '\n'


def sweep_panels(results: dict[str, dict[str, Any]], names: list[str], sweep: str = 'lambda0') -> list[tuple]:
    panels = []
    for name in names:
        result = results.get(name)
        if not result:
            continue
        means, bands = {}, {}
        for value, arm in result[f'{sweep}_sweep'].items():
            speed = result['summary'][arm].get('speedup_steps')
            if speed and speed['n']:
                means[value] = speed['mean']
                bands[value] = (speed['min'], speed['max'])
        if means:
            panels.append((f'{name} (teacher {result["teacher"]["eval_loss"]:.2f})', means, bands))
    return panels


def width_table(results: dict[str, dict[str, Any]], regime: str) -> str:
    """A width study in one table: what one λ0 means at each width, and the best point of each sweep."""

    def best(result: dict[str, Any], key: str) -> str:
        arm = result[key]
        if not arm:
            return '—'
        speed = result['summary'][arm].get('speedup_steps') or {}
        ratio = result['summary'][arm].get('diagnostics', {}).get('grad_ratio')
        return f'`{arm}` {speed.get("mean", math.nan):.2f}x (grad_ratio {ratio if ratio is None else f"{ratio:.3g}"})'

    lines = [
        f'### width study ({regime})',
        '',
        '| width | target non-embedding | grad_ratio per unit λ, batch 1 | best absolute λ0 '
        '| best relative grad_ratio |',
        '| --- | --- | --- | --- | --- |',
    ]
    for name, width in width_study(regime).items():
        if result := results.get(name):
            per_lambda = result['grad_ratio_per_lambda_batch_1']
            lines.append(
                f'| {width} | {result["target_params"]["non_embedding"] / 1e6:.3f}M | '
                f'{"—" if per_lambda is None else f"{per_lambda:.2f}"} | '
                f'{best(result, "best_lambda0_arm")} | {best(result, "best_grad_ratio_arm")} |'
            )
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', type=Path, default=RESULTS, help='results root (default bench/results)')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default <results>/report)')
    parser.add_argument('--markdown', type=Path, help='also write the markdown report here')
    args = parser.parse_args(argv)
    out = args.out or args.results / 'report'
    results = {}
    for name in EXPERIMENTS:
        result = experiment(name, args.results / 'runs', args.results / 'cache')
        if result is None:
            continue
        results[name] = result
        write_json(out / f'{name}.json', repo_relative(result))  # committed under bench/reported: no machine paths
        plot_curves(result, out / f'{name}.png')
    figures = [(['teacher-ahead', 'overtake', 'weak-teacher'], 'lambda0', 'lambda0-sweeps.png', 1)]
    regimes = list(dict.fromkeys(regime for regime, _, _ in EXPERIMENTS.values()))
    for regime in regimes:
        widths = list(width_study(regime))
        figures += [
            (widths, 'lambda0', f'{regime}-width-lambda0.png', 2),
            (widths, 'grad_ratio', f'{regime}-width-grad-ratio.png', 2),
        ]
    for names, sweep, png, needed in figures:
        panels = sweep_panels(results, names, sweep)
        if len(panels) >= needed:  # no figure for a study that has not run (a width study needs 2 widths)
            xlabel = 'λ0' if sweep == 'lambda0' else 'grad_ratio (strength: relative)'
            plot_lambda_sweeps(panels, out / png, xlabel=xlabel)
    text = '\n'.join(markdown(r) for r in results.values())
    for regime in regimes:
        if sum(name in results for name in width_study(regime)) >= 2:
            text += '\n' + width_table(results, regime)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return results


if __name__ == '__main__':
    main()
