"""Figures of the benchmarks, from their JSON results (no training here)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: list[dict]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Steps, mean, min and max eval loss over the seeds of one arm (evals at the same steps)."""
    steps = [p['step'] for p in runs[0]['eval_curve']]
    columns = list(zip(*[[p['loss'] for p in r['eval_curve']] for r in runs], strict=True))
    return steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot_curves(result: dict[str, Any], path: Path, arms: list[str] | None = None) -> None:
    """Eval loss vs step for every arm (mean over seeds, band = min..max), the whole run and its second half.

    The teacher's final eval loss is the dashed line; LET arms' student and teacher CE (the
    diagnostics on sampled training positions) are drawn in the right panel's inset when present.
    """
    plt = _pyplot()
    runs = result['runs']
    names = arms or list(dict.fromkeys(r['arm']['name'] for r in runs))
    colours = {n: plt.get_cmap('tab10')(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    teacher = result['teacher']['eval_loss']
    total = max(p['step'] for r in runs for p in r['eval_curve'])
    for ax, start in ((axes[0], 0), (axes[1], total // 2)):
        lows = []
        for name in names:
            mine = [r for r in runs if r['arm']['name'] == name]
            if not mine:
                continue
            steps, mean, low, high = _mean_curve(mine)
            keep = [i for i, s in enumerate(steps) if s >= start]
            ax.plot(
                [steps[i] for i in keep],
                [mean[i] for i in keep],
                color=colours[name],
                marker='.',
                label=f'{name} ({len(mine)} seeds)',
            )
            ax.fill_between(
                [steps[i] for i in keep],
                [low[i] for i in keep],
                [high[i] for i in keep],
                color=colours[name],
                alpha=0.15,
            )
            lows += [low[i] for i in keep]
        if teacher is not None:  # None: the teacher's loss is over other tokens than the target's
            ax.axhline(teacher, color='black', linestyle='--', linewidth=1, label=f'teacher ({teacher:.3f})')
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
        if start and lows:
            bounds = lows if teacher is None else [*lows, teacher]
            ax.set_ylim(min(bounds) - 0.05, max(bounds) + 0.05)
    axes[0].set_ylabel('held-out eval loss (nats/token)')
    axes[0].set_title('whole run')
    axes[1].set_title('second half (zoom)')
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='center right', fontsize=7)
    plan = result['plan']
    fig.suptitle(
        f'{plan["name"]}: target {result["target_params"]["non_embedding"] / 1e6:.2f}M vs teacher '
        f'{result["teacher"]["params"]["non_embedding"] / 1e6:.3f}M non-embedding parameters '
        f'({result["teacher"]["kind"]} teacher), {plan["run"]["steps"]} steps',
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lambda_sweeps(
    panels: list[tuple[str, dict[str, float], dict[str, tuple[float, float]]]],
    path: Path,
    ylabel: str = 'speedup in steps (x)',
    xlabel: str = 'λ0',
) -> None:
    """One line per panel entry: ``(label, {x: mean}, {x: (low, high)})`` against x (λ0) on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, means, bands in panels:
        xs = sorted(means, key=float)
        ax.errorbar(
            [float(x) for x in xs],
            [means[x] for x in xs],
            yerr=[[means[x] - bands[x][0] for x in xs], [bands[x][1] - means[x] for x in xs]],
            marker='o',
            capsize=3,
            label=label,
        )
    ax.axhline(1.0, color='black', linewidth=1, linestyle='--')
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]
