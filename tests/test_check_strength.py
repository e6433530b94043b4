"""scripts/check_strength.py against a real training run: batch 1's let/grad_ratio, same seed and data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from types import ModuleType

import pytest
import torch

from conftest import ROOT, SEQ_LEN, VOCAB, in_memory, tiny_variables, yaml_path


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location('check_strength', ROOT / 'scripts' / 'check_strength.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def script() -> ModuleType:
    return load_script()


def check(script: ModuleType, *argv: str) -> tuple[dict, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = script.main(list(argv))
    return report, printed.getvalue()


@pytest.mark.parametrize('name', ['llama-let', 'mpt-let', 'llama-let-salt'])
def test_batch_one_matches_training(script, assets, train, tmp_path, name):
    """The tool's batch 1 is the run's batch 1: same student init, same rows, same λ, same ratio (within 1%)."""
    out = tmp_path / 'strength.json'
    report, printed = check(script, yaml_path(name), *tiny_variables(assets), '--batches', '2', '--json', str(out))
    trainer = train(name, 'max_duration=1ba')
    logged = in_memory(trainer).data['let/grad_ratio'][0][1]
    assert report['grad_ratio'][0] == pytest.approx(float(logged), rel=0.01)
    assert report['lambda'][0] == pytest.approx(0.1)  # the YAML's lambda0: the first batch of the schedule

    data = json.loads(out.read_text(encoding='utf-8'))
    assert {'grad_ratio', 'lambda0', 'width', 'lambda0_for_ratio'} <= data.keys()
    assert len(data['grad_ratio']) == 2 and data['lambda0'] == 0.1 and data['width'] == 64
    pull = data['pull_per_lambda_mean']
    assert pull == pytest.approx(sum(r / 0.1 for r in data['grad_ratio']) / 2)
    assert data['lambda0_for_ratio']['1'] == pytest.approx(1 / pull)
    assert set(data['lambda0_for_ratio']) == {'0.1', '0.3', '1', '3', '10'}
    assert "the YAML's train_loader" in data['data'] and data['batch'] == {
        'rows': 4,
        'seq_len': SEQ_LEN,
        'microbatch_rows': 4,
    }
    assert f'{data["grad_ratio"][0]:.4g}' in printed and 'λ0 for a starting let/grad_ratio' in printed


def test_relative_and_fallback_text(script, assets, tmp_path):
    """strength: relative reports the pull all the same; absent data falls back to tokenized text, and says so."""
    text = tmp_path / 'text.txt'
    text.write_text((ROOT / 'README.md').read_text(encoding='utf-8'), encoding='utf-8')
    report, printed = check(
        script,
        yaml_path('llama-let'),
        *tiny_variables(assets),
        f'variables.data_local={tmp_path / "absent"}',
        'algorithms.let.lambda0=null',
        'algorithms.let.strength=relative',
        'algorithms.let.grad_ratio=0.5',
        '--batches',
        '2',
        '--text',
        str(text),
        '--targets',
        '2',
    )
    assert str(text) in report['data'] and 'is not here' in report['data'] and str(text) in printed
    assert report['strength'] == 'relative' and report['lambda0'] is None
    assert report['lambda'][0] == pytest.approx(1e-3)  # relative strength's first batch
    assert report['pull_per_lambda'][0] == pytest.approx(report['grad_ratio'][0] / 1e-3)
    assert report['grad_ratio'][1] == pytest.approx(0.5, rel=0.5)  # batch 2 steers towards its target
    assert list(report['lambda0_for_ratio']) == ['2']


def test_no_let_block_is_a_clear_error(script, assets, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main([yaml_path('llama-baseline'), *tiny_variables(assets)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert 'algorithms.let' in err and 'no let block' in err


def test_missing_teacher_names_its_key(script, assets, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.main([yaml_path('llama-let'), *tiny_variables(assets), f'algorithms.let.teacher={tmp_path / "none"}'])
    assert 'algorithms.let.teacher=' in capsys.readouterr().err


def test_leaf_output_changes_nothing_forward(assets):
    """The replacing hook hands on the same values (and tuple structure); the backward stops at the block."""
    from transformers import AutoModelForCausalLM

    from composer_let.strength_check import LeafOutput

    model = AutoModelForCausalLM.from_pretrained(assets['teacher']).requires_grad_(False)
    ids = torch.arange(40).reshape(2, 20) % VOCAB
    plain = model(ids).logits
    leaf = LeafOutput(model.model.layers[0])
    seen = []
    model.model.layers[0].register_forward_hook(lambda m, a, o: seen.append(o))
    hooked = model(ids).logits
    leaf.remove()
    assert torch.equal(plain, hooked)
    assert isinstance(seen[0], tuple) and seen[0][0].is_leaf and seen[0][0].requires_grad
    hooked.sum().backward()
    assert seen[0][0].grad is not None and all(p.grad is None for p in model.parameters())


def test_too_little_memory_prints_the_need(script, assets, capsys):
    """Planned from parameter counts before anything is built: status 2 and what the check needs."""
    with pytest.raises(SystemExit) as exit_info:
        script.main([yaml_path('llama-let'), *tiny_variables(assets), '--max-memory', '0.5'])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert 'the check needs ~' in out and '--max-memory 0.5' in out and 'GiB' in out
