"""Summarise convergence runs into the per-arm tables and figures bench/README.md quotes.

From the run cache (the default): every experiment with a LET or SALT run in ``bench/results/runs/``
(written by ``bench/convergence.py``; an experiment is named by its plan, ``<regime>[-w<width>][-l<layers>]
[-v<vocab>][-e<scale>][-cross-tokenizer]``, so a new one needs no entry here; nothing is trained, teachers
must be cached). For each, into ``--out``:

* ``<name>.json``: the summary (per arm: final loss mean ± std over seeds, speedup in steps, whether the gap
  to the baseline is within seed noise, where each seed passes the teacher, LET's diagnostics averaged over
  the active phase) plus every run's eval curve; repository paths are written relative to it;
* ``<name>.md``: the per-arm table; ``width-study.md``: a regime's widths side by side (two widths or more);
* ``<name>.png``: eval loss vs step, whole run and second half; ``lambda0-sweeps.png`` (speedup vs λ0 per
  regime) and ``<regime>-width-{lambda0,grad-ratio}.png`` (per target width, where two widths have run).

``--from-reported DIR`` rewrites only the markdown, from the committed summaries ``DIR/*.json`` alone (no
run cache, no teacher): the tables can be regenerated on any clone. ``--markdown FILE`` also writes every
table into one file. The markdown is printed either way.

    python bench/report.py                                          # the cache, into bench/results/report/
    python bench/report.py --out bench/reported/regimes             # the cache, into the reported copies
    python bench/report.py --from-reported bench/reported/regimes   # the tables, from the committed JSONs
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
from convergence import (
    CROSS_TOKENIZER_RUNS,
    LET_DEFAULTS,
    REGIMES,
    RELATIVE_CONTROLLER,
    is_relative,
    make_plan,
    plan_options,
    run_path,
)
from plots import plot_curves, plot_lambda_sweeps

LAMBDA0S = ('0.01', '0.03', '0.1', '0.3', '1', '3', '10', '30', '100')
GRAD_RATIOS = ('0.1', '0.3', '1', '3', '10')  # strength: relative
MARKS = ('relative_controller', 'cross_tokenizer')  # what convergence.py's import checks on a run: kept with it
FEED_FORWARD = (
    '† `strength: relative` run with the feed-forward-only controller (before 2026-12-03): kept as reported, '
    'not imported; the controller now has a feedback term (`RELATIVE_CONTROLLER = '
    f'{RELATIVE_CONTROLLER}` in bench/convergence.py keys the runs made with it).'
)
WITHDRAWN = (
    '**Withdrawn: not a cross-tokenizer measurement.** These LET runs were made before 2026-12-03, when '
    "bench/convergence.py built the cross-tokenizer target from the teacher's folder (its 4,096-token "
    "tokenizer and embedding), so LET found the tokenizers equal and the teacher read the student's 2,048-BPE "
    f'ids as its own. Runs made since are keyed apart (`CROSS_TOKENIZER_RUNS = {CROSS_TOKENIZER_RUNS}`); '
    'these are not imported.'
)


def order(name: str) -> tuple:
    """Experiments in a stable order: by regime, then the regime's own, then its variants (width ascending)."""
    try:
        o = plan_options(name)
    except ValueError:
        return (len(REGIMES), name)
    variant = (o.get('cross_teacher', False), o.get('embed_scale', 1), o.get('layers', 0), o.get('student_vocab', 0))
    return (list(REGIMES).index(o['regime']), *variant, o.get('width', 0), name)


def width_studies(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Each regime's width study (issue 10 §3) by target width: the experiments ``<regime>`` and
    ``<regime>-w<width>`` (same teacher and tokenizer, the default depth and embedding)."""
    studies: dict[str, dict[str, int]] = {}
    for name, result in results.items():
        try:
            options = plan_options(name)
        except ValueError:
            continue
        if set(options) <= {'regime', 'width'}:
            studies.setdefault(options['regime'], {})[name] = result['plan']['target']['hidden']
    return {
        regime: dict(sorted(studies[regime].items(), key=lambda item: item[1]))
        for regime in REGIMES
        if regime in studies
    }


def cached_records(runs_dir: Path) -> list[dict[str, Any]]:
    """``{'arm', 'plan'}`` of every cached run (the plan's name: the experiment that made it)."""
    records = []
    for path in sorted(runs_dir.glob('*.json')):
        if not path.name.endswith(('.tmp.json', '.job.json')):
            record = json.loads(path.read_text())
            records.append({'arm': record['arm'], 'plan': record.get('plan')})
    return records


def all_arms(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every distinct arm of the cached runs, baseline first, in a stable order."""
    arms: dict[str, dict[str, Any]] = {}
    for record in records:
        arms.setdefault(record['arm']['name'], record['arm'])
    return sorted(arms.values(), key=lambda a: (a['name'] != 'baseline', a['name'] != 'let', a['name']))


def cached_experiments(records: list[dict[str, Any]]) -> list[str]:
    """The experiments with a LET or SALT run in the cache (a baseline is shared by the plans of one target)."""
    names = {r['plan'] for r in records if r['plan'] and r['arm']['name'] != 'baseline'}
    for name in sorted(names):
        try:
            plan_options(name)
        except ValueError as error:
            print(f'report: skipping runs of plan {name!r}: {error}', file=sys.stderr)
            names.discard(name)
    return sorted(names, key=order)


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


def experiment(name: str, arms: list[dict[str, Any]], runs_dir: Path, cache: Path) -> dict[str, Any] | None:
    """The summary of experiment ``name`` over the cached runs of ``arms`` (None: no LET/SALT run, or its
    teacher is not cached here)."""
    try:
        plan = make_plan(cache=cache, train_teacher=False, **plan_options(name))
    except SystemExit:
        return None
    teacher = plan['teacher']
    runs = []
    for arm in arms:
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
        'runs': [
            {k: r[k] for k in ('arm', 'seed', 'eval_curve', 'final_loss', 'series', 'params', *MARKS) if k in r}
            for r in runs
        ],
    }


def _mean(values: list[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def feed_forward_arms(result: dict[str, Any]) -> set[str]:
    """The ``strength: relative`` arms with a run of the feed-forward-only controller (before 2026-12-03)."""
    return {
        r['arm']['name']
        for r in result['runs']
        if is_relative(r['arm']) and r.get('relative_controller') != RELATIVE_CONTROLLER
    }


def withdrawn(result: dict[str, Any]) -> bool:
    """A cross-tokenizer experiment with LET runs made before the 2026-12-03 fix (the tokenizers were equal).

    Those runs carry no ``cross_tokenizer`` mark; runs since carry ``CROSS_TOKENIZER_RUNS`` (or, for phase
    ``cross-old-rule`` of ``bench/regimes.sh``, ``bench/old-rule.patch``'s variant of it).
    """
    return bool(result['plan'].get('cross_tokenizer')) and any(
        r['arm'].get('let') and r.get('cross_tokenizer') is None for r in result['runs']
    )


def _num(value: float | None, spec: str, scale: float = 1.0, missing: str = '—') -> str:
    return missing if value is None else f'{value / scale:{spec}}'


def markdown(result: dict[str, Any]) -> str:
    """The per-arm table of one experiment (``### <name>``); arms marked † ran the feed-forward controller."""
    teacher = result['teacher']
    steps = result['plan']['run']['steps']
    old = feed_forward_arms(result)
    tokens = teacher['tokens_seen']  # None: pretrained elsewhere
    ratio = result['params_ratio_non_embedding']
    lines = [
        f'### {result["name"]}',
        '',
        *([WITHDRAWN, ''] if withdrawn(result) else []),
        f'Teacher ({teacher["kind"]}): eval loss {_num(teacher["eval_loss"], ".3f")}, '
        f'{teacher["params"]["non_embedding"] / 1e6:.3f}M non-embedding parameters, '
        f'{"pretrained elsewhere" if tokens is None else f"{tokens / 1e6:.1f}M tokens"}. '
        f'Target: {result["target_params"]["non_embedding"] / 1e6:.3f}M non-embedding '
        f'({ratio:{".1f" if ratio >= 1 else ".2g"}}x), {steps} steps.',
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
        until = sorted(set(e.get('teacher_active_until', {}).values()) - {None})
        lines.append(
            f'| {arm}{" †" * (arm in old)} | {len(e["seeds"])} | {loss["mean"]:.3f} ± {loss["std"]:.3f} | '
            f'{delta_text} | {speed_text} | {", ".join(fractions)} | {_num(diag.get("grad_ratio"), ".3g")} | '
            f'{_num(diag.get("grad_cos"), "+.2f")} | {", ".join(map(str, until)) or "—"} |'
        )
    for key, label in (('best_lambda0_arm', 'λ0'), ('best_grad_ratio_arm', 'grad_ratio (strength: relative)')):
        if result[key]:
            mark = ' †' * (result[key] in old)
            lines += ['', f'Best {label} arm (mean final loss, ≥ 2 seeds): `{result[key]}`{mark}.']
    if old:
        lines += ['', FEED_FORWARD]
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
            teacher_loss = result['teacher']['eval_loss']
            label = name if teacher_loss is None else f'{name} (teacher {teacher_loss:.2f})'
            panels.append((label, means, bands))
    return panels


def width_table(results: dict[str, dict[str, Any]], regime: str, study: dict[str, int]) -> str:
    """A width study in one table: what one λ0 means at each width, and the best point of each sweep."""

    def best(result: dict[str, Any], key: str) -> str:
        arm = result[key]
        if not arm:
            return '—'
        speed = result['summary'][arm].get('speedup_steps') or {}
        ratio = result['summary'][arm].get('diagnostics', {}).get('grad_ratio')
        mark = ' †' * (arm in feed_forward_arms(result))
        return f'`{arm}`{mark} {speed.get("mean", math.nan):.2f}x (grad_ratio {_num(ratio, ".3g", missing="None")})'

    lines = [
        f'### width study ({regime})',
        '',
        '| width | target non-embedding | grad_ratio per unit λ, batch 1 | best absolute λ0 '
        '| best relative grad_ratio |',
        '| --- | --- | --- | --- | --- |',
    ]
    old = False
    for name, width in study.items():
        result = results[name]
        old = old or bool(feed_forward_arms(result))
        lines.append(
            f'| {width} | {result["target_params"]["non_embedding"] / 1e6:.3f}M | '
            f'{_num(result["grad_ratio_per_lambda_batch_1"], ".2f")} | '
            f'{best(result, "best_lambda0_arm")} | {best(result, "best_grad_ratio_arm")} |'
        )
    if old:
        lines += ['', FEED_FORWARD]
    return '\n'.join(lines) + '\n'


def write_markdown(results: dict[str, dict[str, Any]], out: Path, regenerate: str) -> str:
    """``<out>/<name>.md`` per experiment and ``<out>/width-study.md`` (regimes with two widths or more);
    returns every table, in order. ``regenerate``: the command that writes them, named in each file."""
    note = f'<!-- Generated by `{regenerate}` from {{source}}: do not edit by hand. -->\n\n'
    tables = []
    for name in sorted(results, key=order):
        table = markdown(results[name])
        (out / f'{name}.md').write_text(note.format(source=f'`{name}.json`') + table)
        tables.append(table)
    studies = {regime: study for regime, study in width_studies(results).items() if len(study) >= 2}
    widths = [width_table(results, regime, study) for regime, study in studies.items()]
    if widths:
        sources = ', '.join(f'`{name}.json`' for study in studies.values() for name in study)
        (out / 'width-study.md').write_text(note.format(source=sources) + '\n'.join(widths))
    return '\n'.join(tables + widths)


def reported(folder: Path) -> dict[str, dict[str, Any]]:
    """The experiment summaries committed in ``folder`` (``<name>.json`` with a plan, a summary and runs)."""
    results = {}
    for path in sorted(folder.glob('*.json')):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {'name', 'plan', 'summary', 'runs'} <= set(data):
            results[data['name']] = data
    return results


def from_cache(results_root: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Summarise the cached runs: ``<out>/<name>.{json,png}`` per experiment and the sweep figures."""
    records = cached_records(results_root / 'runs')
    arms = all_arms(records)
    results = {}
    for name in cached_experiments(records):
        result = experiment(name, arms, results_root / 'runs', results_root / 'cache')
        if result is None:
            continue
        results[name] = result
        write_json(out / f'{name}.json', repo_relative(result))  # committed under bench/reported: no machine paths
        plot_curves(result, out / f'{name}.png')
    figures = [([n for n in results if n in REGIMES], 'lambda0', 'lambda0-sweeps.png', 1)]
    for regime, study in width_studies(results).items():
        figures += [
            (list(study), 'lambda0', f'{regime}-width-lambda0.png', 2),
            (list(study), 'grad_ratio', f'{regime}-width-grad-ratio.png', 2),
        ]
    for names, sweep, png, needed in figures:
        panels = sweep_panels(results, names, sweep)
        if len(panels) >= needed:  # no figure for a study that has not run (a width study needs 2 widths)
            xlabel = 'λ0' if sweep == 'lambda0' else 'grad_ratio (strength: relative)'
            plot_lambda_sweeps(panels, out / png, xlabel=xlabel)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', type=Path, default=RESULTS, help='results root (default bench/results)')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default <results>/report)')
    parser.add_argument(
        '--from-reported',
        type=Path,
        metavar='DIR',
        help='rewrite the markdown from the summaries DIR/*.json alone (no run cache): DIR/<name>.md, width-study.md',
    )
    parser.add_argument('--markdown', type=Path, help='also write every table into this one file')
    args = parser.parse_args(argv)
    if args.from_reported:
        if args.out:
            parser.error('--from-reported writes beside the summaries it reads: drop --out')
        out = args.from_reported
        results = reported(out)
        if not results:
            raise SystemExit(f'report: no experiment summary (<name>.json with a plan and runs) in {out}')
    else:
        out = args.out or args.results / 'report'
        results = from_cache(args.results, out)
    out.mkdir(parents=True, exist_ok=True)
    # Either way the tables are those of the summaries beside them: the note names the command that needs only those.
    text = write_markdown(results, out, f'python bench/report.py --from-reported {repo_relative(out.resolve())}')
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return results


if __name__ == '__main__':
    main()
