"""Summarise every cached convergence run into the tables and figures bench/README.md quotes.

Reads ``bench/results/runs/*.json`` (written by ``bench/convergence.py``; nothing is trained here,
teachers must already be cached) and writes, for each experiment that has runs:

* ``<out>/<name>.json``: the summary (per arm: final loss mean ± std over seeds, speedup in steps,
  whether the gap to the baseline is within seed noise, where each seed passes the teacher, LET's
  diagnostics averaged over the active phase) plus every run's eval curve;
* ``<out>/<name>.png``: eval loss vs step, whole run and second half;
* ``<out>/lambda0-sweeps.png`` (speedup vs λ0 per regime) and ``<out>/width-lambda0.png`` (when run);
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
from analysis import best_arm, series_mean, summarise
from common import RESULTS, write_json
from convergence import LET_DEFAULTS, make_plan, run_key
from plots import plot_curves, plot_lambda_sweeps

# name: (regime, width, cross_teacher)
EXPERIMENTS: dict[str, tuple[str, int | None, bool]] = {
    'teacher-ahead': ('teacher-ahead', None, False),
    'overtake': ('overtake', None, False),
    'weak-teacher': ('weak-teacher', None, False),
    'overtake-w48': ('overtake', 48, False),
    'overtake-w96': ('overtake', 96, False),
    'teacher-ahead-cross-tokenizer': ('teacher-ahead', None, True),
}
LAMBDA0S = ('0.01', '0.03', '0.1', '0.3', '1', '3')


def all_arms(runs_dir: Path) -> list[dict[str, Any]]:
    """Every distinct arm of the cached runs, baseline first, in a stable order."""
    arms: dict[str, dict[str, Any]] = {}
    for path in sorted(runs_dir.glob('*.json')):
        if path.name.endswith(('.tmp.json', '.job.json')):
            continue
        arm = json.loads(path.read_text())['arm']
        arms.setdefault(arm['name'], arm)
    return sorted(arms.values(), key=lambda a: (a['name'] != 'baseline', a['name'] != 'let', a['name']))


def lambda0_of(arm: dict[str, Any]) -> str | None:
    """The λ0 of a plain λ0-sweep arm (default settings but λ0), as written in LAMBDA0S; else None."""
    let = arm.get('let')
    if (
        not let
        or arm.get('salt')
        or {k: v for k, v in let.items() if k != 'lambda0'} != {k: v for k, v in LET_DEFAULTS.items() if k != 'lambda0'}
    ):
        return None
    return f'{let["lambda0"]:g}'


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
            path = runs_dir / f'{arm["name"].replace("/", "_")}-s{seed}-{run_key(arm, seed, plan, teacher)}.json'
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
    sweep = {lambda0_of(a): a['name'] for a in (r['arm'] for r in runs) if lambda0_of(a)}
    best = best_arm(summary, [sweep[k] for k in LAMBDA0S if k in sweep])
    return {
        'name': name,
        'plan': plan,
        'teacher': teacher,
        'target_params': runs[0]['params'],
        'params_ratio_non_embedding': runs[0]['params']['non_embedding'] / teacher['params']['non_embedding'],
        'summary': summary,
        'lambda0_sweep': {k: sweep[k] for k in LAMBDA0S if k in sweep},
        'best_lambda0_arm': best,
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
    if result['best_lambda0_arm']:
        lines += ['', f'Best λ0 arm (mean final loss, ≥ 2 seeds): `{result["best_lambda0_arm"]}`.']
    return '\n'.join(lines) + '\n'


def sweep_panels(results: dict[str, dict[str, Any]], names: list[str]) -> list[tuple]:
    panels = []
    for name in names:
        result = results.get(name)
        if not result:
            continue
        means, bands = {}, {}
        for lam, arm in result['lambda0_sweep'].items():
            speed = result['summary'][arm].get('speedup_steps')
            if speed and speed['n']:
                means[lam] = speed['mean']
                bands[lam] = (speed['min'], speed['max'])
        if means:
            panels.append((f'{name} (teacher {result["teacher"]["eval_loss"]:.2f})', means, bands))
    return panels


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
        write_json(out / f'{name}.json', result)
        plot_curves(result, out / f'{name}.png')
    for names, png, needed in (
        (['teacher-ahead', 'overtake', 'weak-teacher'], 'lambda0-sweeps.png', 1),
        (['overtake-w48', 'overtake', 'overtake-w96'], 'width-lambda0.png', 2),
    ):
        panels = sweep_panels(results, names)
        if len(panels) >= needed:  # no figure for a study that has not run (a width study needs 2 widths)
            plot_lambda_sweeps(panels, out / png)
    text = '\n'.join(markdown(r) for r in results.values())
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return results


if __name__ == '__main__':
    main()
