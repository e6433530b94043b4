"""The quickstart end to end in --smoke mode (tiny teacher, a few steps): progress, plot, table, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer_let.prep.quickstart import SMOKE, main

from conftest import ICL_TASKS, SHARED_DATA, icl_subset

ICL = SHARED_DATA / 'icl'


def test_smoke_run_writes_plot_table_and_records(
    assets: dict[str, Path], tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # relative --work/--out, as README's command uses them
    out = tmp_path / 'out'
    args = ['--smoke', '--teacher', str(assets['teacher']), '--work', 'work', '--out', 'out', '--seed', '5']
    if ICL.is_dir():  # also score both students on the first rows of every shared ICL task
        # 2 batches of 8 sequences hold all 4 rows of every task (a 4-choice row takes 4 sequences)
        args += ['--icl', str(icl_subset(tmp_path / 'icl', rows=4)), '--icl-batches', '2']
    assert main(args) == 0
    printed = capfd.readouterr().out
    assert 'SMALLER than its teacher' in printed and '10x smaller than the student' in printed
    assert '[baseline] step 6/6' in printed and '[let] eval @ step 6' in printed

    assert (out / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    baseline = json.loads((out / 'baseline' / 'record.json').read_text())
    let = json.loads((out / 'let' / 'record.json').read_text())
    assert [s['batch'] for s in let['steps']] == [1, 2, 3, 4, 5, 6]
    lam = SMOKE.lambda0  # the quickstart's recommended λ0, linear to 0 at S_stop = step 3
    assert [s['lambda'] for s in let['steps']] == pytest.approx([lam, lam * 2 / 3, lam / 3, 0, 0, 0])
    assert {s['lambda'] for s in baseline['steps']} == {0.0}
    assert [e['batch'] for e in let['evals']] == [e['batch'] for e in baseline['evals']] == [3, 6]
    # Same seed, same init, same data: the first step's cross-entropy is the same in both runs.
    assert let['steps'][0]['ce'] == pytest.approx(baseline['steps'][0]['ce'], rel=1e-6)
    assert let['steps'][0]['loss'] != let['steps'][0]['ce']  # LET added λ·L_align to the total
    assert baseline['peak_rss_mb'] > 100 and let['parameters'] == baseline['parameters']

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['runs']['let']['final_eval_loss'] == let['evals'][-1]['loss']
    assert summary['runs']['baseline']['final_eval_loss'] == baseline['evals'][-1]['loss']
    assert isinstance(summary['let_overhead_teacher_active'], float)
    assert isinstance(summary['let_overhead_after_stop'], float)
    gap = summary['runs']['let']['final_eval_loss'] - summary['runs']['baseline']['final_eval_loss']
    assert summary['final_eval_loss_gap'] == pytest.approx(gap)
    reached = summary['let_reached_baseline_final_loss']
    assert (summary['speedup_steps'] is None) == (reached is None)  # steps to the baseline's final loss
    table = (out / 'summary.md').read_text()
    assert summary['plan']['teacher_norm'] == 'standardize' and 'teacher_norm: standardize' in table
    assert '| baseline |' in table and '| let |' in table and 'while the teacher is active' in table
    assert (Path(summary['data']) / 'corpus.json').is_file()  # the stdlib corpus was built for this tokenizer
    assert 'load average' in table
    assert summary['plan']['seed'] == 5 and 'seed 5.' in table  # --seed set both runs' plan
    # The regime is read from the LET run's own CE diagnostics, logged while the teacher is active.
    assert [s['batch'] for s in let['steps'] if 'teacher_ce' in s] == [1, 2, 3]
    assert summary['regime']['at_step'] == 3 and summary['regime']['teacher_ce'] == let['steps'][2]['teacher_ce']
    assert f'Regime: **{summary["regime"]["regime"]}**' in table and 'Settings: ' in table

    from transformers import AutoModelForCausalLM

    for arm in ('baseline', 'let'):  # the final students, saved by the YAMLs' hf_checkpointer
        assert summary['students'][arm] == f'out/{arm}/checkpoints/huggingface/final'  # no machine's path
        student = AutoModelForCausalLM.from_pretrained(summary['students'][arm])
        assert sum(p.numel() for p in student.parameters()) == baseline['parameters']
    if ICL.is_dir():
        assert set(summary['icl']['baseline']) == set(summary['icl']['let']) == set(ICL_TASKS)
        # Every accuracy counts the 4 rows (a multiple of 1/4), and the table shows summary.json's values.
        assert all((4 * v).is_integer() for arm in ('baseline', 'let') for v in summary['icl'][arm].values())
        icl = summary['icl']
        assert f'| arc_easy | {icl["baseline"]["arc_easy"]:.3f} | {icl["let"]["arc_easy"]:.3f} |' in table


def test_read_regime_tells_a_teacher_far_ahead_from_one_the_student_is_about_to_pass():
    from composer_let.prep.quickstart import read_regime

    def steps(student_ce):
        return [{'batch': b, 'teacher_ce': 3.0, 'student_ce': student_ce(b)} for b in range(1, 81)]

    ahead = read_regime(steps(lambda b: 5.0 + 2.0 / b))  # levels off 2 nats above the teacher
    assert ahead['regime'] == 'teacher-ahead' and ahead['auto_stop_would_fire_at'] is None
    assert ahead['gap_nats'] == pytest.approx(2.0, abs=0.1) and ahead['at_step'] == 80
    weak = read_regime(steps(lambda b: 4.0 - 0.02 * b))  # closes 0.02 nats/step: passes at step 50
    assert weak['regime'] == 'weak-teacher' and 25 < weak['auto_stop_would_fire_at'] < 50
    assert read_regime([{'batch': 1}])['regime'].startswith('unknown')


def test_bad_plan_is_refused_before_anything_runs(tmp_path: Path):
    with pytest.raises(ValueError, match='multiple of the eval interval'):
        main(['--smoke', '--steps', '5', '--out', str(tmp_path / 'out')])
    with pytest.raises(ValueError, match='--stop 9 must be between 1 and --steps 6'):
        main(['--smoke', '--stop', '9', '--out', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()
