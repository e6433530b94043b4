"""Pure functions of eval curves and logged series: speedups, crossovers, spreads, summaries.

A curve is ``[{'step', 'train_s', 'loss'}]`` (held-out eval loss); a run is the JSON that
``bench/convergence.py`` writes per (arm, seed). Nothing here trains or plots.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from composer_let.curves import first_reach


def speedup(baseline: list[dict[str, float]], arm: list[dict[str, float]], axis: str = 'step') -> dict[str, Any]:
    """Baseline's steps to its own final loss / the arm's steps to that loss.

    When the arm never reaches it, the speedup is below 1: the baseline's steps to the arm's final
    loss / the arm's whole run (``reached: false``).
    """
    target = baseline[-1]['loss']
    reached = first_reach(arm, target, axis)
    if reached is not None and reached > 0:
        return {'speedup': baseline[-1][axis] / reached, 'reached': True, 'at': reached}
    base_at = first_reach(baseline, arm[-1]['loss'], axis)
    return {'speedup': (base_at or 0.0) / arm[-1][axis], 'reached': False, 'at': None}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, range and count."""
    if not values:
        return {'mean': math.nan, 'std': math.nan, 'min': math.nan, 'max': math.nan, 'n': 0}
    return {
        'mean': statistics.fmean(values),
        'std': statistics.stdev(values) if len(values) > 1 else 0.0,
        'min': min(values),
        'max': max(values),
        'n': len(values),
    }


def within_noise(diffs: list[float]) -> bool:
    """Whether paired differences (arm − baseline, one per seed) are within seed noise.

    A gap counts as real only when every seed has the same sign and the mean is more than two
    standard errors from 0; otherwise it is reported as within noise. With 2-3 seeds this is a
    deliberately conservative reading, not a significance test.
    """
    if len(diffs) < 2:
        return True
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return not (same_sign and abs(statistics.fmean(diffs)) > 2 * sem)


def series_mean(series: list[list[float]] | None, start: int = 0, end: int | None = None) -> float | None:
    """Mean of a logged ``[[step, value], ...]`` series over steps in ``[start, end)``."""
    values = [v for s, v in series or [] if s >= start and (end is None or s < end) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def pull_per_lambda(series: dict[str, list[list[float]]]) -> float | None:
    """``let/grad_ratio / let/lambda`` on batch 1: the alignment's pull per unit of λ, relative to the CE,
    at the hooked block of the untrained target (what one λ0 means at its width); None without LET's logs or
    a finite batch-1 ratio (``active_pull_per_lambda`` over batch 1 alone)."""
    return active_pull_per_lambda(series, range(1, 2))


def active_pull_per_lambda(series: dict[str, list[list[float]]], batches: range | None = None) -> float | None:
    """Σ ``let/grad_ratio`` / Σ ``let/lambda`` over the batches with λ > 0 (only those in ``batches`` if given):
    the pull per unit of λ a run met over its active phase (batch 1's can be far from it: the target changes
    under the guidance); None without LET's logs."""
    ratio, lam = (dict(series.get(k) or []) for k in ('let/grad_ratio', 'let/lambda'))
    steps = [
        s
        for s, v in lam.items()
        if v > 0 and s in ratio and math.isfinite(ratio[s]) and (batches is None or int(s) in batches)
    ]
    return sum(ratio[s] for s in steps) / sum(lam[s] for s in steps) if steps else None


def summarise(runs: list[dict], teacher_loss: float, arm_names: list[str]) -> dict[str, Any]:
    """Per arm: final loss, crossover with the teacher, speedup in steps against the same seed's baseline."""
    by = {(r['arm']['name'], r['seed']): r for r in runs}
    seeds = sorted({r['seed'] for r in runs})
    out: dict[str, Any] = {}
    for name in arm_names:
        rows = [(s, by[(name, s)]) for s in seeds if (name, s) in by]
        if not rows:
            continue
        steps_total = rows[0][1]['eval_curve'][-1]['step']
        crossings = {s: first_reach(r['eval_curve'], teacher_loss) for s, r in rows}
        entry: dict[str, Any] = {
            'seeds': [s for s, _ in rows],
            'final_loss': spread([r['final_loss'] for _, r in rows]),
            'final_perplexity': spread([math.exp(r['final_loss']) for _, r in rows]),
            'crosses_teacher_at_step': crossings,
            'crosses_teacher_at_fraction': {s: None if c is None else c / steps_total for s, c in crossings.items()},
        }
        if name != 'baseline':
            pairs = [(s, by[('baseline', s)], r) for s, r in rows if ('baseline', s) in by]
            steps = {s: speedup(b['eval_curve'], r['eval_curve'], 'step') for s, b, r in pairs}
            diffs = [r['final_loss'] - b['final_loss'] for _, b, r in pairs]
            entry['speedup_steps'] = {'per_seed': steps, **spread([v['speedup'] for v in steps.values()])}
            entry['final_loss_minus_baseline'] = {**spread(diffs), 'within_noise': within_noise(diffs)}
        out[name] = entry
    return out


def best_arm(summary: dict[str, Any], names: list[str], min_seeds: int = 2) -> str | None:
    """The arm among ``names`` with the lowest mean final loss (ties: the first), over arms with enough seeds."""
    scored = [
        (summary[n]['final_loss']['mean'], i, n)
        for i, n in enumerate(names)
        if n in summary and summary[n]['final_loss']['n'] >= min_seeds
    ]
    return min(scored)[2] if scored else None


def simulate_auto_stop(series: dict[str, list[list[float]]], **rule: Any) -> int | None:
    """The batch at which ``composer_let.control.AutoStop(**rule)`` would fire on a run's logged diagnostics.

    Exact for a run whose λ schedule equals ``stop: auto``'s up to that batch (the same ``stop_max``):
    until the decision, auto stop changes nothing, so the logged signals are the ones it would see.
    """
    from composer_let.control import AutoStop

    stop = AutoStop(**rule)
    teacher = dict((int(s), v) for s, v in series.get('let/teacher_ce', []))
    student = dict((int(s), v) for s, v in series.get('let/student_ce', []))
    cos = dict((int(s), v) for s, v in series.get('let/grad_cos', []))
    for batch in sorted(set(teacher) | set(cos)):
        stop.observe(batch, teacher.get(batch), student.get(batch), cos.get(batch))
        if stop.fired_at is not None:
            return stop.fired_at
    return None
