"""Bad input: a clear error naming the key and the fix, raised before the first step, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import ViTConfig

from composer_let import LET
from composer_let.prep.tiny import build_tokenizer, save_llama, stdlib_texts, write_token_shards


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({}, r'algorithms\.let\.teacher is required'),
        ({'teacher': ''}, r'algorithms\.let\.teacher is required'),
        ({'teacher': 't', 'strategy': 'E2L'}, r"algorithms\.let\.strategy='E2L' is not one of L2E"),
        ({'teacher': 't', 'schedule': 'exp'}, r"algorithms\.let\.schedule='exp' is not one of linear"),
        ({'teacher': 't', 'projection': 'mlp'}, r"algorithms\.let\.projection='mlp' is not one of interpolate"),
        ({'teacher': 't', 'loss': 'kl'}, r"algorithms\.let\.loss='kl' is not one of cosine"),
        ({'teacher': 't', 'teacher_dtype': 'int8'}, r"algorithms\.let\.teacher_dtype='int8' is not one of bf16"),
        ({'teacher': 't', 'lambda0': -0.1}, r'algorithms\.let\.lambda0=-0\.1 must be a number in \[0\.0, inf\)'),
        ({'teacher': 't', 'lambda0': float('nan')}, r'algorithms\.let\.lambda0=nan'),
        ({'teacher': 't', 'stop': 'soon'}, r"algorithms\.let\.stop='soon' cannot be parsed"),
        ({'teacher': 't', 'stop': '0ba'}, r"algorithms\.let\.stop='0ba' must be > 0"),
        ({'teacher': 't', 'student_layer': 'early'}, r"algorithms\.let\.student_layer='early' must be an integer"),
        ({'teacher': 't', 'student_layer': 1, 'student_module': 'a.b'}, r'either algorithms\.let\.student_module'),
        ({'teacher': 't', 'lamda0': 0.1}, r'Unknown key\(s\) under algorithms\.let: lamda0\. Valid keys: teacher'),
    ],
)
def test_constructor_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LET(**kwargs)


@pytest.fixture
def failing_run(train, tmp_path: Path):
    """Run a tiny LET config expecting a ValueError; also check no checkpoint was written."""

    def run(match: str, *overrides: str, name: str = 'mpt-let') -> None:
        save = tmp_path / 'ckpt'
        with pytest.raises(ValueError, match=match):
            train(name, f'save_folder={save}', 'save_interval=1ba', *overrides)
        assert not save.exists() or not any(save.iterdir()), 'a failed run left files behind'

    return run


def test_errors_surface_through_train_from_yaml(failing_run) -> None:
    failing_run(r"algorithms\.let\.strategy='X2Y'", 'algorithms.let.strategy=X2Y')


def test_missing_teacher_folder(failing_run, tmp_path: Path) -> None:
    failing_run(r'algorithms\.let\.teacher=.*no such folder', f'algorithms.let.teacher={tmp_path}/nope/teacher')


def test_teacher_that_is_not_a_causal_lm(failing_run, tmp_path: Path) -> None:
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / 'vit')
    failing_run(r"is a 'vit' model, not a causal LM", f'algorithms.let.teacher={tmp_path}/vit')


def test_teacher_folder_without_config(failing_run, tmp_path: Path) -> None:
    (tmp_path / 'empty').mkdir()
    failing_run(r'has no readable Hugging Face config', f'algorithms.let.teacher={tmp_path}/empty')


def test_stop_beyond_max_duration(failing_run) -> None:
    failing_run(r'algorithms\.let\.stop=10ba is beyond max_duration=6ba', 'algorithms.let.stop=10ba')


@pytest.mark.parametrize(
    ('override', 'match'),
    [
        ('algorithms.let.student_layer=4', r'algorithms\.let\.student_layer=4 is out of range: .* 4 blocks'),
        ('algorithms.let.student_layer=-5', r'algorithms\.let\.student_layer=-5 is out of range'),
        ('algorithms.let.teacher_layer=2', r'algorithms\.let\.teacher_layer=2 is out of range: .* 2 blocks'),
        ('algorithms.let.student_module=model.transformer.blocks.9', r"student_module='model\.transformer\.blocks\.9'"),
    ],
)
def test_layer_out_of_range(failing_run, override: str, match: str) -> None:
    failing_run(match, override)


def test_projection_none_with_unequal_widths(failing_run) -> None:
    failing_run(
        r'projection=none needs equal widths.*student is 64 wide and the teacher block 1 32',
        'algorithms.let.projection=none',
    )


@pytest.fixture(scope='module')
def other_tokenizer_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher with its own, different 300-token tokenizer, and shards written with a 512-token one."""
    out = tmp_path_factory.mktemp('other')
    texts = stdlib_texts(200_000)
    small = build_tokenizer(out / 'small_tok', texts[::-1], vocab_size=300)
    save_llama(out / 'teacher300', small, hidden=32, layers=2, heads=2, max_positions=128)
    big = build_tokenizer(out / 'big_tok', texts, vocab_size=512)
    write_token_shards(out / 'data512', big, texts, seq_len=64)
    return {'teacher300': out / 'teacher300', 'data512': out / 'data512'}


def test_tokenizer_mismatch(failing_run, other_tokenizer_assets) -> None:
    # The run's tokenizer (the 512-token one) is not the teacher's.
    failing_run(
        r"The run tokenizer has 512 tokens but the teacher only 300.*Set tokenizer\.name to the teacher's folder",
        f'algorithms.let.teacher={other_tokenizer_assets["teacher300"]}',
    )


def test_token_ids_beyond_teacher_vocab(failing_run, other_tokenizer_assets) -> None:
    # Tokenizer and teacher agree, but the shards were written with another tokenizer.
    teacher = other_tokenizer_assets['teacher300']
    failing_run(
        r"Token id \d+ is outside the teacher's vocabulary \(300\)",
        f'algorithms.let.teacher={teacher}',
        f'tokenizer.name={teacher}',
        f'variables.data_local={other_tokenizer_assets["data512"]}',
        'save_interval=100ba',
    )
