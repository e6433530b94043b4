"""Issue 29's verdict: which strength knob's best grid point carries across a wide range of pull per unit λ.

Reads report summaries (``bench/report.py``'s ``<name>.json``) of teacher-ahead experiments that differ only in
how hard one unit of λ pulls at the hooked block (target width 32-512; the width-free control: width 64 with the
tied embedding scaled at init, ``-e<scale>``), and for each the best absolute λ0 and the best ``strength:
relative`` grad_ratio: the arm with the lowest mean final loss among those that beat the baseline beyond seed
noise (arms with ≥ 2 seeds; a knob with one such arm in an experiment has no best point there, and none when no arm
helped). A knob *carries* when, over ≥ 8× of pull per λ, its best point stays within one grid step while the
other's moves ≥ 2 steps, each knob having a best point in ≥ 2 experiments, and it never *fails*: ≥ 2 of its arms
compared in an experiment, none helping, where the other knob helped (issue 29). Pull per λ is read two ways, and
the 8× must hold in both: on batch 1 of the untrained target (``bench/pull_per_lambda.py``, the issue's measure)
and over the active phase as the runs logged it (``analysis.active_pull_per_lambda``, median over LET runs)::

    python bench/strength_verdict.py bench/reported/strength --out bench/reported/strength/verdict

writes ``verdict.md`` (the table, the verdict, and the pull per λ by window of 25 batches of the active phase)
and ``verdict.png`` (speedup vs grid point, one line per pull).
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
from analysis import active_pull_per_lambda
from common import write_json

LAMBDA0_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
RATIO_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
MIN_SEEDS = 2
MIN_PULL_SPAN = 8.0  # issue 29: the weakest and strongest pull per λ at least this far apart
PULL_WINDOW = 25  # batches per window of the active phase in which pull per λ is also reported


def grid_step(value: float, grid: tuple[float, ...]) -> int:
    """Index of ``value`` on a ~3.3x grid (the nearest point in log space)."""
    return min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / value)))


def knob_points(summary: dict[str, Any], sweep: dict[str, str]) -> dict[float, dict[str, Any]]:
    """Grid value -> that arm's mean final loss, speedup and seeds (arms with fewer than MIN_SEEDS seeds left out)."""
    points = {}
    for value, arm in sweep.items():
        entry = summary.get(arm)
        if entry is None or entry['final_loss']['n'] < MIN_SEEDS:
            continue
        points[float(value)] = {
            'arm': arm,
            'final_loss': entry['final_loss']['mean'],
            'delta': entry.get('final_loss_minus_baseline', {}).get('mean'),
            'speedup': entry.get('speedup_steps', {}).get('mean'),
            'speedup_std': entry.get('speedup_steps', {}).get('std'),
            'seeds': entry['final_loss']['n'],
            'helps': helps(entry),
            'grad_ratio': (entry.get('diagnostics') or {}).get('grad_ratio'),
        }
    return points


def helps(entry: dict[str, Any]) -> bool:
    """Whether an arm ended below its seeds' baseline beyond seed noise (``analysis.within_noise``)."""
    gap = entry.get('final_loss_minus_baseline')
    return gap is not None and gap['mean'] < 0 and not gap['within_noise']


def best_point(points: dict[float, dict[str, Any]]) -> float | None:
    """The helping grid value with the lowest mean final loss; None with fewer than two points (nothing was
    compared) or when no point helped."""
    helping = [v for v in points if points[v]['helps']]
    return min(helping, key=lambda v: points[v]['final_loss']) if len(points) > 1 and helping else None


def median_pull(runs: list[dict[str, Any]], batches: range | None = None) -> float | None:
    """Median over LET runs of ``analysis.active_pull_per_lambda`` (over ``batches`` if given); None without LET
    runs."""
    values = [p for run in runs if (p := active_pull_per_lambda(run['series'], batches)) is not None]
    return statistics.median(values) if values else None


def pull_by_window(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Pull per λ in consecutive windows of PULL_WINDOW batches of the active phase (``'1-25'`` -> the median
    over LET runs): whether a weak pull on batch 1 stays weak while the guidance acts."""
    last = max((int(s) for run in runs for s, v in run['series'].get('let/lambda', []) if v > 0), default=0)
    out = {}
    for start in range(1, last + 1, PULL_WINDOW):
        window = range(start, min(start + PULL_WINDOW, last + 1))
        if (pull := median_pull(runs, window)) is not None:
            out[f'{window.start}-{window.stop - 1}'] = pull
    return out


def compared(row: dict[str, Any], knob: str) -> bool:
    """Whether an experiment compared ≥ 2 arms of a knob (each with enough seeds)."""
    return len(row[knob]) > 1


def study(folder: Path, pulls: dict[str, float]) -> list[dict[str, Any]]:
    """One row per experiment in ``folder`` that has a pull per λ: its best point of each knob."""
    rows = []
    for path in sorted(folder.glob('teacher-ahead*.json')):
        result = json.loads(path.read_text())
        name = result['name']
        pull = pulls.get(name, result.get('grad_ratio_per_lambda_batch_1'))
        if pull is None or 'cross-tokenizer' in name:
            continue
        summary = result['summary']
        absolute = knob_points(summary, result.get('lambda0_sweep', {}))
        relative = knob_points(summary, result.get('grad_ratio_sweep', {}))
        baseline = summary.get('baseline', {}).get('final_loss', {})
        rows.append(
            {
                'name': name,
                'pull_per_lambda': pull,
                'active_pull_per_lambda': median_pull(result['runs']),
                'pull_per_lambda_by_window': pull_by_window(result['runs']),
                'baseline_final': baseline.get('mean'),
                'baseline_seeds': baseline.get('n'),
                'lambda0': absolute,
                'grad_ratio': relative,
                'best_lambda0': best_point(absolute),
                'best_grad_ratio': best_point(relative),
            }
        )
    return sorted(rows, key=lambda r: -r['pull_per_lambda'])


def fold_range(values: list[float | None]) -> float | None:
    """Largest over smallest of the known values; None if any is unknown or there are none."""
    return max(values) / min(values) if values and None not in values else None


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How far each knob's best point moves (in grid steps) across the rows, where it fails, and which one
    carries."""
    moves, fails = {}, {}
    for knob, grid, other in (('lambda0', LAMBDA0_GRID, 'grad_ratio'), ('grad_ratio', RATIO_GRID, 'lambda0')):
        steps = [grid_step(r[f'best_{knob}'], grid) for r in rows if r[f'best_{knob}'] is not None]
        moves[knob] = max(steps) - min(steps) if len(steps) > 1 else None
        fails[knob] = [
            r['name']
            for r in rows
            if compared(r, knob) and r[f'best_{knob}'] is None and r[f'best_{other}'] is not None
        ]
    # The range the verdict rests on: the experiments where either knob has a best point.
    ranked = [r for r in rows if r['best_lambda0'] is not None or r['best_grad_ratio'] is not None]
    span, active_span = (fold_range([r.get(k) for r in ranked]) for k in ('pull_per_lambda', 'active_pull_per_lambda'))
    carries = [
        k
        for k, other in (('lambda0', 'grad_ratio'), ('grad_ratio', 'lambda0'))
        if moves[k] is not None and moves[other] is not None and moves[k] <= 1 and moves[other] >= 2 and not fails[k]
    ]
    if span is None or span < MIN_PULL_SPAN or active_span is None or active_span < MIN_PULL_SPAN:
        carries = []
    return {
        'pull_span': span,
        'active_pull_span': active_span,
        'moves_in_grid_steps': moves,
        'fails_in': fails,
        'carries': carries[0] if carries else 'neither',
    }


def markdown(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    def cell(points: dict[float, dict[str, Any]], value: float) -> str:
        p = points.get(value)
        if p is None:
            return '—'
        speed = '' if p['speedup'] is None else f'{p["speedup"]:.2f}×, '
        text = f'{speed}{p["delta"]:+.3f}' if p['delta'] is not None else speed
        return text if p['helps'] else f'{text} (no help)'

    def best(r: dict[str, Any], knob: str) -> str:
        if r[f'best_{knob}'] is not None:
            return f'{r[f"best_{knob}"]:g}'
        return 'none helped' if compared(r, knob) else '—'

    lambdas = sorted({v for r in rows for v in r['lambda0']})
    ratios = sorted({v for r in rows for v in r['grad_ratio']})
    head = ['experiment', 'pull per λ (batch 1)', 'pull per λ (active phase)', 'baseline final']
    head += [f'λ0 = {v:g}' for v in lambdas]
    head += [f'grad_ratio {v:g}' for v in ratios] + ['best λ0', 'best grad_ratio']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for r in rows:
        active = r.get('active_pull_per_lambda')
        cells = [r['name'], f'{r["pull_per_lambda"]:.3g}', '—' if active is None else f'{active:.3g}']
        cells += [f'{r["baseline_final"]:.3f} ({r["baseline_seeds"]})']
        cells += [cell(r['lambda0'], v) for v in lambdas] + [cell(r['grad_ratio'], v) for v in ratios]
        cells += [best(r, 'lambda0'), best(r, 'grad_ratio')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    moves = result['moves_in_grid_steps']

    def fmt(span: float | None) -> str:
        return '?' if span is None else f'{span:.1f}'

    fails_text = {k: ', '.join(v) or 'nowhere' for k, v in result['fails_in'].items()}
    lines += [
        '',
        "Cells: speedup in steps to the baseline's final loss (mean over seeds), then the mean final-loss gap to "
        f"the same seeds' baseline (nats); arms with ≥ {MIN_SEEDS} seeds. *No help*: not below the baseline "
        'beyond seed noise (every seed the same sign and the mean gap > 2 standard errors); such an arm is never a '
        'best point. Pull per λ: `let/grad_ratio / λ` on batch 1 of an untrained target (`bench/pull_per_lambda.py`), '
        'and Σ `let/grad_ratio` / Σ λ over the batches with λ > 0 of each LET run (median over runs).',
        '',
        f'Pull per λ spans {fmt(result["pull_span"])}× on batch 1 and {fmt(result["active_pull_span"])}× over the '
        'active phase across the experiments with a best point. The best λ0 moves '
        f'{moves["lambda0"]} grid step(s) across them, the best grad_ratio {moves["grad_ratio"]} (a verdict needs '
        f'≥ {MIN_PULL_SPAN:g}× of pull by both measures and a best point of each knob, ≥ 2 arms, in ≥ 2 experiments). '
        f'Where a knob had ≥ 2 arms and none helped while the other knob helped: λ0 {fails_text["lambda0"]}; '
        f'grad_ratio {fails_text["grad_ratio"]} (such a knob does not carry). **Verdict: {result["carries"]}.**',
    ]
    windows = list(dict.fromkeys(w for r in rows for w in r['pull_per_lambda_by_window']))
    if windows:
        lines += ['', f'Pull per λ by window of {PULL_WINDOW} batches of the active phase (median over LET runs):', '']
        lines += [
            '| experiment | ' + ' | '.join(f'batches {w}' for w in windows) + ' |',
            '|' + ' --- |' * (1 + len(windows)),
        ]
        for r in rows:
            by = r['pull_per_lambda_by_window']
            lines.append(f'| {r["name"]} | ' + ' | '.join(f'{by[w]:.3g}' if w in by else '—' for w in windows) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, knob, label in ((axes[0], 'lambda0', 'λ0 (strength: absolute)'), (axes[1], 'grad_ratio', 'grad_ratio')):
        for r in rows:
            points = r[knob]
            xs = sorted(points)
            ys = [points[x]['speedup'] for x in xs]
            errs = [points[x]['speedup_std'] or 0 for x in xs]
            ax.errorbar(
                xs, ys, yerr=errs, marker='o', capsize=3, label=f'{r["name"]} (pull {r["pull_per_lambda"]:.3g})'
            )
        ax.set_xscale('log')
        ax.axhline(1.0, color='black', linewidth=0.8, linestyle='--')
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup in steps to the baseline's final loss")
    axes[1].legend(fontsize=7)
    fig.suptitle('teacher-ahead: where each strength knob is best, as the pull per unit λ changes')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', type=Path, help="report.py's summaries (<name>.json)")
    parser.add_argument(
        '--pulls', type=Path, nargs='*', default=[], help="pull_per_lambda.py JSONs (override a summary's)"
    )
    parser.add_argument('--out', type=Path, required=True, help='writes OUT.md, OUT.png and OUT.json')
    args = parser.parse_args(argv)
    pulls: dict[str, float] = {}
    for file in args.pulls:
        for row in json.loads(file.read_text())['rows']:
            name = 'teacher-ahead' + ('' if row['width'] == 64 else f'-w{row["width"]}')
            if row.get('embed_scale', 1.0) != 1.0:
                name += f'-e{row["embed_scale"]:g}'
            pulls[name] = row['grad_ratio_per_lambda_batch_1']
    rows = study(args.folder, pulls)
    result = verdict(rows)
    text = markdown(rows, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix('.md').write_text(text)
    write_json(args.out.with_suffix('.json'), {'rows': rows, **result})
    plot(rows, args.out.with_suffix('.png'))
    print(text)
    return result


if __name__ == '__main__':
    main()
