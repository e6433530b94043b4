"""Smoke tests of the benchmark kit: both scripts run end to end at tiny sizes (not for numbers)."""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA


def _bench(name: str):
    return importlib.import_module(name)


def test_speedup_reads_steps_to_the_baseline_final_loss() -> None:
    convergence = _bench('analysis')
    baseline = [{'step': s, 'train_s': 2.0 * s, 'loss': loss} for s, loss in ((10, 5.0), (20, 4.0), (30, 3.0))]
    faster = [{'step': s, 'train_s': 3.0 * s, 'loss': loss} for s, loss in ((10, 4.0), (20, 3.0), (30, 2.5))]
    slower = [{'step': s, 'train_s': 2.0 * s, 'loss': loss} for s, loss in ((10, 5.5), (20, 4.5), (30, 3.5))]
    assert convergence.first_reach(baseline, 3.5) == pytest.approx(25.0)
    assert convergence.first_reach(baseline, 2.0) is None
    fast = convergence.speedup(baseline, faster)
    assert fast['reached'] and fast['speedup'] == pytest.approx(1.5)
    assert convergence.speedup(baseline, faster, 'train_s')['speedup'] == pytest.approx(1.0)  # 1.5x slower steps
    slow = convergence.speedup(baseline, slower)
    assert not slow['reached'] and slow['speedup'] == pytest.approx(25.0 / 30.0)


def test_overhead_smoke(tmp_path: Path) -> None:
    overhead = _bench('overhead')
    out = tmp_path / 'overhead.json'
    result = overhead.main(
        [
            '--smoke',
            '--families',
            'llama',
            '--dtypes',
            'fp32',
            '--threads',
            '1',
            '--out',
            str(out),
            '--cache',
            str(tmp_path / 'cache'),
        ]
    )
    assert json.loads(out.read_text())['config'] == result['config']
    steps = result['config']['warmup'] + result['config']['rounds']
    for family in ('llama',):  # the MPT path is the same code with another YAML; too slow to add here
        res = result[family]
        let, base = res['let-fp32'], res['baseline']
        assert let['teacher_active_steps'] == steps  # active exactly until S_stop ...
        assert not let['teacher_active_at_end'] and base['teacher_active_steps'] == 0  # ... then released
        steps_total = steps + result['config']['settle'] + result['config']['after']
        assert len(let['step_times_s']) == len(base['step_times_s']) == steps_total
        # The reported ratios are the medians of per-turn LET/baseline step-time ratios over each window.
        config = result['config']
        stop = config['warmup'] + config['rounds']
        windows = {
            'teacher_active': range(config['warmup'], stop),
            'after_stop': range(stop + config['settle'], steps_total),
        }
        for window, turns in windows.items():
            ratios = [let['step_times_s'][i] / base['step_times_s'][i] for i in turns]
            assert let[f'ratio_{window}']['n'] == len(ratios) > 0
            assert let[f'ratio_{window}']['median'] == pytest.approx(statistics.median(ratios), rel=1e-12)
        assert 0 < res['flops_floor'] < 1
        assert let['peak_rss_mb'] > 0 and base['peak_rss_mb'] > 0
    comp = result['components']
    assert comp['flops']['teacher_lm_head_fwd'] > 0  # the head LET skips is real work
    assert all(
        comp[k]['median_ms'] > 0 for k in ('teacher_backbone_fp32', 'teacher_backbone_bf16', 'interpolate_width')
    )
    assert len(result['machine_start']['loadavg_1_5_15']) == 3


def test_within_noise_needs_a_consistent_gap() -> None:
    analysis = _bench('analysis')
    assert analysis.within_noise([0.1, -0.05, 0.02])  # signs disagree
    assert analysis.within_noise([0.1])  # one seed says nothing
    assert not analysis.within_noise([-0.10, -0.12, -0.11])  # every seed, far beyond its spread
    assert analysis.within_noise([-0.01, -0.30, -0.02])  # same sign, but the spread swallows the mean


def test_a_killed_invocations_lock_is_taken_over(tmp_path: Path) -> None:
    convergence = _bench('convergence')
    run = tmp_path / 'run.json'
    assert convergence.claim(run) and not convergence.claim(run)  # held by this process, which lives
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, check=True)
    run.with_suffix('.lock').write_text(dead.stdout.decode().strip())
    assert convergence.claim(run) and run.with_suffix('.lock').read_text() == convergence.process_identity(os.getpid())
    # A live pid whose start time is not the lock's (the pid reused, e.g. after a reboot) does not hold it.
    pid, start = convergence.process_identity(os.getpid()).split()
    run.with_suffix('.lock').write_text(f'{pid} {int(start) - 1}')
    assert convergence.claim(run)


def test_arm_specs_name_sweeps_and_fold_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    convergence = _bench('convergence')
    args = convergence.argparse.Namespace(arms='baseline;let', lambda0s='0.1,1', stops='0.1dur', stop_lambda0s='0.1,1')
    arms = convergence.arm_specs(args)
    assert [a['name'] for a in arms] == [
        'baseline',
        'let',
        'let:lambda0=1',
        'let:lambda0=0.1,stop=0.1dur',
        'let:lambda0=1,stop=0.1dur',
    ]
    assert arms[2]['let'] == {**convergence.LET_DEFAULTS, 'lambda0': 1}
    relative = convergence.parse_arm('let:strength=relative,grad_ratio=0.3')['let']
    assert relative['grad_ratio'] == 0.3 and 'lambda0' not in relative  # λ0 is refused beside grad_ratio
    auto = convergence.parse_arm('let:stop=auto')  # the rule's default is named: runs of an older one stay apart
    assert auto == convergence.parse_arm('let:stop=auto,stop_horizon=0') and auto['name'].endswith('stop_horizon=0')
    assert convergence.parse_arm('let:stop=auto,stop_horizon=1')['let']['stop_horizon'] == 1
    with pytest.raises(SystemExit, match='must include baseline'):
        convergence.arm_specs(convergence.argparse.Namespace(arms='let', lambda0s=None, stops=None, stop_lambda0s=''))


def test_report_sorts_arms_into_the_absolute_and_relative_sweeps() -> None:
    convergence, report = _bench('convergence'), _bench('report')
    assert report.strength_of(convergence.parse_arm('let:lambda0=3')) == ('lambda0', '3')
    assert report.strength_of(convergence.parse_arm('let:strength=relative,grad_ratio=0.3')) == ('grad_ratio', '0.3')
    for spec in ('baseline', 'let:lambda0=3,stop=0.5dur', 'let:strength=relative,grad_ratio=1,stop=auto'):
        assert report.strength_of(convergence.parse_arm(spec)) is None  # not a plain point of either sweep


def test_plan_options_invert_make_plans_names() -> None:
    convergence = _bench('convergence')
    cases = {
        'teacher-ahead': {'regime': 'teacher-ahead'},
        'overtake-w128': {'regime': 'overtake', 'width': 128},
        'teacher-ahead-e8': {'regime': 'teacher-ahead', 'embed_scale': 8.0},
        'teacher-ahead-w256-e0.5-cross-tokenizer': {
            'regime': 'teacher-ahead',
            'width': 256,
            'embed_scale': 0.5,
            'cross_teacher': True,
        },
        'real-teacher-l4-v2048': {'regime': 'real-teacher', 'layers': 4, 'student_vocab': 2048},
    }
    for name, options in cases.items():
        assert convergence.plan_options(name) == options
    for name in ('smoke', 'teacher-ahead-x3', 'my-tag', 'teacher-ahead-w'):
        with pytest.raises(ValueError, match='not an experiment name'):
            convergence.plan_options(name)
    for path in (ROOT / 'bench' / 'reported' / 'regimes').glob('*.json'):  # every committed summary's name parses
        plan = json.loads(path.read_text()).get('plan')
        if plan:
            options = convergence.plan_options(plan['name'])
            assert (
                options['regime'] == plan['regime'] and options.get('cross_teacher', False) == plan['cross_tokenizer']
            )


def test_report_regenerates_the_committed_tables_from_the_committed_json(tmp_path: Path) -> None:
    report = _bench('report')
    committed = ROOT / 'bench' / 'reported' / 'regimes'
    for path in committed.glob('*.json'):
        (tmp_path / path.name).symlink_to(path)
    results = report.main(['--from-reported', str(tmp_path)])
    tables = sorted(p.name for p in committed.glob('*.md'))
    assert tables == sorted([f'{name}.md' for name in results] + ['width-study.md'])
    for name in tables:  # the committed tables are the JSONs' (line 1 names the folder it was run on)
        assert (tmp_path / name).read_text().splitlines()[1:] == (committed / name).read_text().splitlines()[1:], name
    # Runs that convergence.py would not import are marked as such: the feed-forward relative controller, and the
    # cross-tokenizer runs made before the target had its own tokenizer.
    ahead = (tmp_path / 'teacher-ahead.md').read_text()
    assert '| let:strength=relative,grad_ratio=3 † | 2 | 4.483 ± 0.010 |' in ahead and report.FEED_FORWARD in ahead
    assert report.WITHDRAWN in (tmp_path / 'teacher-ahead-cross-tokenizer.md').read_text()
    assert report.WITHDRAWN not in ahead


def test_report_marks_follow_the_runs(tmp_path: Path) -> None:
    convergence, report = _bench('convergence'), _bench('report')
    curve = [{'step': 10, 'train_s': 1.0, 'loss': 5.0}, {'step': 20, 'train_s': 2.0, 'loss': 4.0}]
    arms = [convergence.parse_arm(spec) for spec in ('baseline', 'let:strength=relative,grad_ratio=3')]
    runs = [
        {'arm': arm, 'seed': seed, 'eval_curve': curve, 'final_loss': 4.0 + 0.01 * seed, 'series': {}, 'params': {}}
        for arm in arms
        for seed in (1, 2)
    ]
    summary = _bench('analysis').summarise(runs, 3.0, [a['name'] for a in arms])
    teacher = {'kind': 'late', 'eval_loss': 3.0, 'params': {'non_embedding': 10}, 'tokens_seen': None}
    result = {
        'name': 'teacher-ahead-w256-cross-tokenizer',
        'plan': {'run': {'steps': 20}, 'cross_tokenizer': True, 'target': {'hidden': 256}},
        'teacher': teacher,
        'target_params': {'non_embedding': 100},
        'params_ratio_non_embedding': 10.0,
        'summary': summary,
        'best_lambda0_arm': None,
        'best_grad_ratio_arm': 'let:strength=relative,grad_ratio=3',
        'runs': runs,
    }
    old = report.markdown(result)
    assert report.WITHDRAWN in old and report.FEED_FORWARD in old and 'grad_ratio=3` †.' in old
    for run in runs:  # made by today's code: convergence.py marks them, and report.py keeps the marks
        run.update(
            relative_controller=convergence.RELATIVE_CONTROLLER, cross_tokenizer=convergence.CROSS_TOKENIZER_RUNS
        )
    new = report.markdown(result)
    assert '†' not in new and report.WITHDRAWN not in new and 'pretrained elsewhere' in new
    assert report.width_studies({result['name']: result}) == {}  # another tokenizer: not a point of a width study


def strings(data: object) -> list[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(data, dict):
        return [s for key, value in data.items() for s in (key, *strings(value))]
    if isinstance(data, list):
        return [s for value in data for s in strings(value)]
    return [data] if isinstance(data, str) else []


@pytest.mark.skipif(not (SHARED_DATA / 'text').is_dir(), reason=f'the real corpus {SHARED_DATA / "text"} is absent')
def test_convergence_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    convergence = _bench('convergence')
    # The results folder stands for the repository (bench/results/ in it): paths under it are the machine's own.
    monkeypatch.setattr(_bench('common'), 'ROOT', tmp_path)
    argv = ['--smoke', '--seeds', '1', '--results', str(tmp_path)]
    monkeypatch.setattr('sys.argv', [str(tmp_path / 'bench' / 'convergence.py'), *argv])  # as launched
    result = convergence.main(argv)
    written = json.loads((tmp_path / 'smoke' / 'convergence.json').read_text())  # the record bench/reported copies
    assert written['teacher']['folder'] == f'cache/{Path(result["teacher"]["folder"]).name}'
    assert not [s for s in strings(written) if s.startswith('/') or str(tmp_path) in s]  # no absolute path
    teacher = AutoModelForCausalLM.from_pretrained(result['teacher']['folder'])
    vocab = convergence.SMOKE['corpus']['vocab']
    assert teacher.config.vocab_size == vocab
    assert result['teacher']['eval_loss'] < math.log(vocab)  # pretraining learned something
    runs = {r['arm']['name']: r for r in result['runs']}
    assert set(runs) == {'baseline', 'let'}
    steps = convergence.SMOKE['run']['steps']
    for run in runs.values():
        assert [p['step'] for p in run['eval_curve']] == list(range(5, steps + 1, 5))
        assert len(run['series']['loss/train/total']) == steps
    let_series = runs['let']['series']
    # stop 0.25dur of 10 steps: λ is positive for the first 3 batches, the diagnostics are logged there only.
    assert [s for s, v in let_series['let/lambda'] if v > 0] == [1, 2, 3]
    assert [s for s, _ in let_series['let/grad_ratio']] == [1, 2, 3]
    assert 'let/lambda' not in runs['baseline']['series']
    assert runs['baseline']['eval_curve'] != runs['let']['eval_curve']
    assert result['summary']['let']['speedup_steps']['n'] == 1
    assert (tmp_path / 'smoke' / 'convergence.png').stat().st_size > 10_000
    again = convergence.main(argv)  # everything cached: same numbers, no training
    assert again['runs'] == result['runs'] and again['teacher'] == result['teacher']

    # A run killed after its first checkpoint resumes from it in the next process and reports what the
    # uninterrupted run did: the eval curve and every batch's series (bench/resume.py).
    plan = convergence.make_plan(None, tmp_path / 'cache', smoke=True)  # cached: no training
    job = convergence.target_job(convergence.parse_arm('let'), 1, plan, plan['teacher'])
    out, first = tmp_path / 'killed' / 'let.tmp.json', convergence.SMOKE['run']['eval_interval']
    with pytest.raises(RuntimeError, match='exit 75'):
        convergence.in_subprocess({**job, 'args': [*job['args'], f'callbacks.bench_exit_at.batch={first}']}, out)
    assert sorted(p.name for p in out.with_suffix('.ckpt').glob('*.pt')) == [
        f'ep0-ba{first}-rank0.pt',
        'latest-rank0.pt',
    ]
    (out.with_suffix('.ckpt') / f'ep0-ba{2 * first}-rank0.pt').write_bytes(b'cut short by a kill')  # no link to it
    resumed = convergence.in_subprocess(job, out)
    assert resumed['resumed_at_batch'] == [first]
    assert resumed['eval_curve'] == runs['let']['eval_curve'] and resumed['series'] == runs['let']['series']
    assert not out.with_suffix('.ckpt').exists()  # deleted once the run is done

    # A reported summary (its relative paths) seeds another machine's run cache (same teacher and plan), and
    # nothing else does.
    fields = ('arm', 'seed', 'eval_curve', 'final_loss', 'series', 'params')
    reported = {'plan': written['plan'], 'runs': [{k: r[k] for k in fields} for r in written['runs']]}
    (tmp_path / 'reported.json').write_text(json.dumps(reported))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'cache').symlink_to(tmp_path / 'cache')
    assert convergence.main(['--results', str(elsewhere), '--import-reported', str(tmp_path / 'reported.json')]) == {
        'imported': 2
    }
    imported = convergence.main(['--smoke', '--seeds', '1', '--results', str(elsewhere)])
    assert [{k: r[k] for k in fields} for r in imported['runs']] == reported['runs']
    assert convergence.import_reported(tmp_path / 'reported.json', elsewhere / 'cache', elsewhere / 'runs') == 0
    off = convergence.TEACHER_TOLERANCE * 2
    curve = [{**p, 'loss': p['loss'] + off * (i == 0)} for i, p in enumerate(result['teacher']['eval_curve'])]
    for key, change in (('teacher', {'eval_curve': curve}), ('teacher', {'eval_curve': []}), ('run', {'warmup': 1})):
        tampered = json.loads(json.dumps(reported))
        tampered['plan'][key].update(change)
        (tmp_path / 'tampered.json').write_text(json.dumps(tampered))
        with pytest.raises(SystemExit, match=key):
            convergence.import_reported(tmp_path / 'tampered.json', tmp_path / 'cache', tmp_path / 'fresh-runs')
        assert not (tmp_path / 'fresh-runs').exists()  # refused before anything is written


def test_quickstart_seeds_pairs_each_arm_with_its_seeds_baseline(tmp_path: Path) -> None:
    seeds = _bench('quickstart_seeds')
    curves = {  # (seed, arm): final eval losses at steps 100, 200, 300
        ('1', 'baseline'): (6.0, 5.5, 5.0),
        ('1', 'let'): (5.5, 5.0, 4.5),  # reaches 5.0 at step 200: 1.5x
        ('1', 'placebo'): (6.0, 5.5, 5.05),
        ('2', 'baseline'): (6.2, 5.7, 5.2),
        ('2', 'let'): (5.7, 5.2, 5.1),  # reaches 5.2 at step 200
        ('2', 'placebo'): (6.2, 5.7, 5.15),
        ('3', 'baseline'): (6.1, 5.6, 5.1),
        ('3', 'let'): (6.1, 5.6, 5.12),  # behind its baseline: never reaches it
        ('3', 'placebo'): (6.1, 5.6, 5.1),
    }
    for (seed, arm), losses in curves.items():
        folder = tmp_path / f'{arm}-s{seed}'
        folder.mkdir()
        evals = [{'batch': 100 * (i + 1), 'train_seconds': 1.0, 'loss': loss} for i, loss in enumerate(losses)]
        (folder / 'record.json').write_text(json.dumps({'evals': evals}))
    summary = seeds.summarize(tmp_path)
    assert summary['per_seed']['1']['let']['speedup_steps'] == pytest.approx(1.5)
    assert summary['per_seed']['3']['let']['speedup_steps'] is None
    assert summary['arms']['let']['gap']['values'] == pytest.approx([-0.5, -0.1, 0.02])
    assert summary['arms']['placebo']['gap']['mean'] == pytest.approx(0.0, abs=1e-12)
    verdict = summary['verdict']
    assert verdict['placebo_max_abs_gap'] == pytest.approx(0.05)
    assert not verdict['let_ahead_on_every_seed'] and not verdict['let_ahead_by_more_than_placebo_on_every_seed']


def test_strength_verdict_names_the_knob_that_stays_put() -> None:
    strength_verdict = _bench('strength_verdict')
    verdict = strength_verdict.verdict

    def row(
        pull: float, best_lambda0: float | None, best_ratio: float | None, compared: bool = True, active: float = 0
    ) -> dict:
        return {
            'name': f'pull {pull:g}',
            'pull_per_lambda': pull,
            'active_pull_per_lambda': active or pull,
            'best_lambda0': best_lambda0,
            'best_grad_ratio': best_ratio,
            # Two arms of each knob compared (their contents do not enter the verdict), or none.
            'lambda0': {v: {} for v in ((1.0, 3.0) if compared else ())},
            'grad_ratio': {v: {} for v in ((1.0, 3.0) if compared else ())},
        }

    moving_lambda = [row(1.0, 1.0, 3.0), row(0.3, 3.0, 3.0), row(0.1, 10.0, 1.0)]
    assert verdict(moving_lambda) == {
        'pull_span': pytest.approx(10.0),
        'active_pull_span': pytest.approx(10.0),
        'moves_in_grid_steps': {'lambda0': 2, 'grad_ratio': 1},
        'fails_in': {'lambda0': [], 'grad_ratio': []},
        'carries': 'grad_ratio',
    }
    # The same, except that the weakest pull on batch 1 rose to 0.5 over the active phase: 1 to 0.3, short of 8x.
    recovered = [*moving_lambda[:2], row(0.1, 10.0, 1.0, active=0.5)]
    assert verdict(recovered)['active_pull_span'] == pytest.approx(1.0 / 0.3)
    # Σ grad_ratio / Σ λ over the batches with λ > 0 (batch 3's ratio, at λ = 0, is left out).
    series = {'let/grad_ratio': [[1, 2.0], [2, 4.0], [3, 9.0]], 'let/lambda': [[1, 1.0], [2, 2.0], [3, 0.0]]}
    assert _bench('analysis').active_pull_per_lambda(series) == pytest.approx(2.0)
    assert _bench('analysis').active_pull_per_lambda({}) is None
    assert _bench('analysis').active_pull_per_lambda(series, range(2, 3)) == pytest.approx(2.0)  # batch 2 only
    assert _bench('analysis').pull_per_lambda(series) == pytest.approx(2.0)  # batch 1's
    inf_first = {**series, 'let/grad_ratio': [[1, float('inf')], [2, 4.0]]}
    assert _bench('analysis').pull_per_lambda(inf_first) is None  # as active_pull_per_lambda drops it
    # By window of the active phase, median over runs: batches 1-25 and 26-30 (λ = 0 after batch 30).
    runs = [
        {
            'series': {
                'let/lambda': [[b, 1.0 if b <= 30 else 0.0] for b in range(1, 41)],
                'let/grad_ratio': [[b, k * (0.1 if b <= 25 else 1.0)] for b in range(1, 41)],
            }
        }
        for k in (1.0, 2.0, 3.0)
    ]
    windows = strength_verdict.pull_by_window(runs)
    assert windows == {'1-25': pytest.approx(0.2), '26-30': pytest.approx(2.0)}
    assert verdict(recovered)['carries'] == 'neither'
    # The same, except that no grad_ratio helped at the weakest pull while λ0 = 10 did: grad_ratio does not carry.
    ratio_fails = [row(1.0, 1.0, 3.0), row(0.3, 3.0, 3.0), row(0.2, 3.0, 3.0), row(0.1, 10.0, None)]
    assert verdict(ratio_fails)['fails_in'] == {'lambda0': [], 'grad_ratio': ['pull 0.1']}
    assert verdict(ratio_fails)['carries'] == 'neither'
    # A best point must help beyond seed noise: the lowest final loss of arms that all lost to the baseline is none.
    point = {'final_loss': 4.0, 'helps': False}
    assert strength_verdict.best_point({1.0: point, 3.0: {**point, 'final_loss': 4.1}}) is None
    assert strength_verdict.best_point({1.0: point, 3.0: {'final_loss': 4.1, 'helps': True}}) == 3.0
    assert strength_verdict.helps({'final_loss_minus_baseline': {'mean': -0.05, 'within_noise': False}})
    assert not strength_verdict.helps({'final_loss_minus_baseline': {'mean': -0.05, 'within_noise': True}})
    assert not strength_verdict.helps({'final_loss_minus_baseline': {'mean': 0.05, 'within_noise': False}})
    both_move = [row(1.0, 1.0, 1.0), row(0.1, 10.0, 10.0)]
    assert verdict(both_move)['carries'] == 'neither'
    no_ratio_arms = [row(1.0, 3.0, None), row(0.5, 10.0, None)]
    assert verdict(no_ratio_arms)['carries'] == 'neither'
    short_range = [row(1.0, 1.0, 3.0), row(0.3, 3.0, 3.0), row(0.25, 10.0, 3.0)]  # 4x of pull: short of 8x
    assert verdict(short_range)['carries'] == 'neither'
    one_ratio_point = [row(1.0, 1.0, None, False), row(0.3, 3.0, None, False), row(0.1, 10.0, 3.0)]  # 1 point
    assert verdict(one_ratio_point)['carries'] == 'neither'


def test_the_speedup_measure_imports_without_the_training_stack() -> None:
    """``bench/analysis.py`` and the quickstart share ``composer_let.curves``; importing it must not load Composer."""
    code = 'import sys, composer_let.curves, analysis; assert "composer" not in sys.modules, "composer was imported"'
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT / 'bench')
