"""scripts/estimate.py on the shipped GPU YAMLs, offline: each teacher is its published config.json, no weights.

Every number is checked against the same quantity computed here by hand from the configs.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import ROOT

GPU_YAMLS = ROOT / 'yamls' / 'gpu'

# The published Hugging Face configs (the fields that shape the model).
SMOLLM2_135M = {
    'architectures': ['LlamaForCausalLM'],
    'model_type': 'llama',
    'hidden_size': 576,
    'intermediate_size': 1536,
    'num_hidden_layers': 30,
    'num_attention_heads': 9,
    'num_key_value_heads': 3,
    'hidden_act': 'silu',
    'vocab_size': 49152,
    'max_position_embeddings': 8192,
    'rope_theta': 100000.0,
    'rms_norm_eps': 1e-5,
    'tie_word_embeddings': True,
    'bos_token_id': 0,
    'eos_token_id': 0,
    'torch_dtype': 'bfloat16',
}
LLAMA_32_1B = {
    'architectures': ['LlamaForCausalLM'],
    'model_type': 'llama',
    'hidden_size': 2048,
    'intermediate_size': 8192,
    'num_hidden_layers': 16,
    'num_attention_heads': 32,
    'num_key_value_heads': 8,
    'head_dim': 64,
    'hidden_act': 'silu',
    'vocab_size': 128256,
    'max_position_embeddings': 131072,
    'rope_theta': 500000.0,
    'rope_scaling': {
        'rope_type': 'llama3',
        'factor': 32.0,
        'low_freq_factor': 1.0,
        'high_freq_factor': 4.0,
        'original_max_position_embeddings': 8192,
    },
    'rms_norm_eps': 1e-5,
    'tie_word_embeddings': True,
    'bos_token_id': 128000,
    'eos_token_id': 128001,
    'torch_dtype': 'bfloat16',
}
TEACHERS = {'smollm2-135m': SMOLLM2_135M, 'llama-3.2-1b': LLAMA_32_1B}
# YAML -> (teacher, teacher block, student module, student blocks)
CASES = {
    'llama1.4b-let-smollm2.yaml': ('smollm2-135m', 29, 'model.model.layers.5', 24),
    'llama7b-let-llama3.2-1b.yaml': ('llama-3.2-1b', 15, 'model.model.layers.7', 32),
    'mpt1b-let-smollm2.yaml': ('smollm2-135m', 29, 'model.transformer.blocks.5', 24),
}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location('estimate', ROOT / 'scripts' / 'estimate.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def estimate() -> ModuleType:
    return load_script()


@pytest.fixture(scope='module')
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder per teacher holding only its config.json (no tokenizer, no weights)."""
    folders = {}
    for name, config in TEACHERS.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / 'config.json').write_text(json.dumps(config), encoding='utf-8')
        folders[name] = folder
    return folders


@pytest.fixture(scope='module')
def reports(estimate: ModuleType, teachers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``estimate.py <yaml> variables.teacher=<folder> --json <file>`` for every GPU YAML: (report, JSON, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp('estimates')
    results = {}
    for name, (teacher, *_) in CASES.items():
        path = out / f'{name}.json'
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            report = estimate.main(
                [str(GPU_YAMLS / name), f'variables.teacher={teachers[teacher]}', '--json', str(path)]
            )
        results[name] = (report, json.loads(path.read_text(encoding='utf-8')), printed.getvalue())
    return results


# By hand, from the configs -----------------------------------------------------------------------


def llama_params(c: dict[str, Any]) -> tuple[int, int]:
    """(total, non-embedding) of a Llama config: blocks + final norm; embeddings (and an untied LM head)."""
    d, heads, kv, inner = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads'], c['intermediate_size']
    head_dim = c.get('head_dim') or d // heads
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o; k, v
    block = attention + 3 * d * inner + 2 * d  # gate/up/down, two RMSNorms
    non_embedding = c['num_hidden_layers'] * block + d
    embeddings = c['vocab_size'] * d * (1 if c.get('tie_word_embeddings', True) else 2)
    return non_embedding + embeddings, non_embedding


def mpt_params(m: dict[str, Any]) -> tuple[int, int]:
    """(total, non-embedding) of an llm-foundry MPT (no_bias: LayerNorms have a weight only; tied embeddings)."""
    d = m['d_model']
    block = 4 * d * d + 2 * m['expansion_ratio'] * d * d + 2 * d  # Wqkv + out, up + down, two norms
    non_embedding = m['n_layers'] * block + d
    return non_embedding + m['vocab_size'] * d, non_embedding


def attention_width(c: dict[str, Any]) -> int:
    return c['num_attention_heads'] * (c.get('head_dim') or c['hidden_size'] // c['num_attention_heads'])


def forward_flops(matmul_params: int, layers: int, attn_width: int, batch: int, seq: int) -> int:
    """2 FLOPs per matmul weight per token + QK^T and AV over the full S x S (4·B·S²·width per layer)."""
    return 2 * matmul_params * batch * seq + 4 * batch * seq * seq * attn_width * layers


def student_by_hand(yaml: dict[str, Any], teacher: dict[str, Any]) -> dict[str, int]:
    """Total and non-embedding parameters and forward FLOPs of one microbatch, from the YAML and teacher config."""
    batch, seq = yaml['device_train_microbatch_size'], yaml['max_seq_len']
    model = yaml['model']
    if model['name'] == 'mpt_causal_lm':
        total, non_embedding = mpt_params(model)
        width, layers, vocab, attn = model['d_model'], model['n_layers'], model['vocab_size'], model['d_model']
    else:
        config = {**teacher, **model['config_overrides']}  # the student is the teacher's family with new sizes
        total, non_embedding = llama_params(config)
        width, layers, vocab = config['hidden_size'], config['num_hidden_layers'], config['vocab_size']
        attn = attention_width(config)
    flops = forward_flops(non_embedding + vocab * width, layers, attn, batch, seq)  # + the LM head's matmul
    return {'total': total, 'non_embedding': non_embedding, 'forward': flops}


def teacher_forward_by_hand(teacher: dict[str, Any], batch: int, seq: int, ce_tokens: int = 256) -> int:
    """The whole backbone (L2E: the last block), no LM head except on let's ce_tokens positions."""
    _, non_embedding = llama_params(teacher)
    backbone = forward_flops(non_embedding, teacher['num_hidden_layers'], attention_width(teacher), batch, seq)
    return backbone + 2 * ce_tokens * teacher['hidden_size'] * teacher['vocab_size']


def resolved_yaml(name: str, teacher: Path) -> dict[str, Any]:
    cfg = OmegaConf.merge(OmegaConf.load(GPU_YAMLS / name), OmegaConf.from_cli([f'variables.teacher={teacher}']))
    return OmegaConf.to_container(cfg, resolve=True)


# Tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(CASES))
def test_estimate_numbers_match_the_configs(name: str, reports: dict, teachers: dict[str, Path]) -> None:
    report, written, printed = reports[name]
    teacher_name, teacher_block, student_module, student_blocks = CASES[name]
    teacher = TEACHERS[teacher_name]
    yaml = resolved_yaml(name, teachers[teacher_name])
    assert written['flops'] == report['flops'] and written['student']['params'] == report['student']['params']

    # Parameters: the student from its YAML, the teacher from its published config.
    student = student_by_hand(yaml, teacher)
    assert report['student']['params']['total'] == student['total']
    assert report['student']['params']['non_embedding'] == student['non_embedding']
    [row] = report['teachers']
    total_t, non_embedding_t = llama_params(teacher)
    assert row['params']['total'] == total_t and row['params']['non_embedding'] == non_embedding_t
    published = {'smollm2-135m': 134.5e6, 'llama-3.2-1b': 1.236e9}[teacher_name]
    assert row['params']['total'] == pytest.approx(published, rel=2e-3)

    # LET's wiring: L2E = the teacher's last block -> student block L_S // 4 - 1.
    wiring = report['wiring']['let']
    assert (wiring['teacher_layer'], wiring['teacher_layers']) == (teacher_block, teacher['num_hidden_layers'])
    assert (wiring['student_module'], wiring['student_blocks']) == (student_module, student_blocks)
    assert wiring['teacher_width'] == teacher['hidden_size']

    # FLOPs: counted on fake tensors = the analytic formula; backward = 2 x forward.
    batch, seq = yaml['device_train_microbatch_size'], yaml['max_seq_len']
    flops = report['flops']
    assert flops['microbatch'] == [batch, seq]
    assert 'flop_counter' in flops['student_method']
    assert flops['student_forward'] == pytest.approx(student['forward'], rel=1e-3)
    assert flops['student_forward_backward'] == pytest.approx(3 * student['forward'], rel=1e-3)
    teacher_flops = teacher_forward_by_hand(teacher, batch, seq)
    assert flops['teacher_forward'] == pytest.approx(teacher_flops, rel=1e-3)
    floor = teacher_flops / (3 * student['forward'])
    assert flops['overhead_floor'] == pytest.approx(floor, rel=2e-3)
    assert 0.02 < flops['overhead_floor'] < 0.08  # a 10x smaller teacher: a few % of a step

    # Steps to stop: 0.25dur of max_duration in batches; the teacher is released there.
    max_batches = int(str(yaml['max_duration']).removesuffix('ba'))
    stop = report['steps']['stop']['let']
    assert stop['batches'] == 0.25 * max_batches and stop['fraction_of_run'] == 0.25
    assert flops['overhead_over_run'] == pytest.approx(0.25 * flops['overhead_floor'])

    # Memory: a bf16 teacher replica per rank; the FULL_SHARD student (fp32 + AdamW) split over 8 GPUs.
    assert row['dtype'] == 'bf16' and row['memory_per_rank'] == 2 * total_t
    memory = report['student']['memory']
    assert memory['strategy'] == 'FULL_SHARD' and memory['shards'] == 8
    assert memory['training_state_per_rank'] == math.ceil(16 * student['total'] / 8)

    # The printed table and notes.
    assert f'{student["total"]:,} total, {student["non_embedding"]:,} non-embedding' in printed
    assert f'step {stop["batches"]:,}' in printed and 'teacher share (overhead floor)' in printed
    assert 'is not available here' in printed  # no tokenizer files: vocabulary sizes only


def test_the_1_4b_table(reports: dict) -> None:
    """The headline numbers of the paper's main setup, as a user reads them."""
    report, _, printed = reports['llama1.4b-let-smollm2.yaml']
    assert report['student']['params']['non_embedding'] == pytest.approx(1.214e9, rel=1e-3)
    assert report['teachers'][0]['params']['total'] == 134_515_008
    assert report['steps']['stop']['let']['batches'] == 6000
    assert report['flops']['overhead_floor'] == pytest.approx(0.039, abs=0.001)
    assert 'teacher block 29 of 30 (576 wide) -> student model.model.layers.5 of 24 (2048 wide)' in printed


def word_tokenizer(folder: Path, words: list[str]) -> Path:
    """A tiny word-level tokenizer saved as a Hugging Face folder (ids in the order of ``words``)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token='</s>', unk_token='<unk>').save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ('override', 'key'),
    [
        ('algorithms.let.student_layer=99', 'algorithms.let.student_layer=99 is out of range'),
        ('algorithms.let.projection=none', 'algorithms.let.projection=none needs equal widths'),
        ('algorithms.let.stop=30000ba', 'algorithms.let.stop=30000ba is beyond max_duration'),
        ('algorithms.let.strategy=E2L', "algorithms.let.strategy='E2L' is not one of"),
    ],
)
def test_bad_input_exits_nonzero_naming_the_key(
    override: str, key: str, estimate: ModuleType, teachers: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    teacher = f'variables.teacher={teachers["smollm2-135m"]}'
    with pytest.raises(SystemExit) as exit_info:
        estimate.main([str(GPU_YAMLS / 'mpt1b-let-smollm2.yaml'), teacher, override])
    assert exit_info.value.code == 1
    assert key in capsys.readouterr().err


def test_tokenizer_contract_is_checked_when_the_tokenizer_is_available(
    estimate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With tokenizers on disk, let's check compares the run's tokenizer with the teacher's folder."""
    teacher = word_tokenizer(tmp_path / 'teacher', ['<unk>', '</s>', 'hello', 'world'])
    (teacher / 'config.json').write_text(json.dumps(SMOLLM2_135M), encoding='utf-8')
    other = word_tokenizer(tmp_path / 'other', ['<unk>', '</s>', 'world', 'hello'])  # same tokens, other ids
    args = [str(GPU_YAMLS / 'mpt1b-let-smollm2.yaml'), f'variables.teacher={teacher}', f'tokenizer.name={other}']
    with pytest.raises(SystemExit) as exit_info:
        estimate.main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert 'algorithms.let' in err and "differs from the teacher's" in err


def test_a_hub_teacher_offline_says_what_to_set(
    estimate: ModuleType, teachers: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """The student's config is local but the teacher is a hub id that cannot be reached (conftest: HF_HUB_OFFLINE)."""
    args = [
        str(GPU_YAMLS / 'mpt1b-let-smollm2.yaml'),
        f'variables.teacher={teachers["smollm2-135m"]}',
        'algorithms.let.teacher=HuggingFaceTB/SmolLM2-135M',
    ]
    with pytest.raises(SystemExit):
        estimate.main(args)
    err = capsys.readouterr().err
    assert "algorithms.let.teacher='HuggingFaceTB/SmolLM2-135M'" in err and 'variables.teacher=<folder>' in err


def test_let_and_salt_share_one_teacher(
    estimate: ModuleType, teachers: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """A salt block beside let on the same folder and dtype: one teacher, whose LM head now runs on every token."""
    args = [
        str(GPU_YAMLS / 'mpt1b-let-smollm2.yaml'),
        f'variables.teacher={teachers["smollm2-135m"]}',
        'algorithms.salt.teacher=${variables.teacher}',
        'algorithms.salt.stop=0.2dur',
    ]
    report = estimate.main(args)
    [row] = report['teachers']
    assert row['algorithms'] == ['let', 'salt'] and row['layers_run'] == [29]
    batch, seq = report['flops']['microbatch']
    assert row['head_positions_per_microbatch'] == 256 + batch * seq  # let's ce_tokens + salt's every position
    teacher = TEACHERS['smollm2-135m']
    expected = teacher_forward_by_hand(teacher, batch, seq, ce_tokens=256 + batch * seq)
    assert report['flops']['teacher_forward'] == pytest.approx(expected, rel=1e-3)
    assert report['wiring']['salt']['teacher_vocab'] == 49152
    assert report['steps']['stop']['salt']['batches'] == 4800 and report['steps']['stop']['let']['batches'] == 6000
    assert 'salt stop' in capsys.readouterr().out


def test_stop_in_other_units_and_memory_per_rank(estimate: ModuleType) -> None:
    """Batches from tokens and samples (global_train_batch_size x max_seq_len tokens each); epochs need the data."""
    from types import SimpleNamespace

    from composer.core import Time

    run = SimpleNamespace(global_train_batch_size=512, max_seq_len=2048)
    assert estimate.batches_of(Time.from_timestring('1048576tok'), run, 100) == 1
    assert estimate.batches_of(Time.from_timestring('1024sp'), run, 100) == 2
    assert estimate.batches_of(Time.from_timestring('0.5dur'), run, 100) == 50
    assert estimate.batches_of(Time.from_timestring('1ep'), run, 100) is None

    def memory(fsdp: dict | None, gpus: int, **model: Any) -> dict[str, Any]:
        cfg = SimpleNamespace(fsdp_config=fsdp, model=model, optimizer={'name': 'decoupled_adamw'})
        return estimate.student_memory(1_000_000, cfg, gpus, 8)

    assert memory({'sharding_strategy': 'FULL_SHARD'}, 64)['training_state_per_rank'] == 16_000_000 // 64
    assert memory({'sharding_strategy': 'HYBRID_SHARD'}, 64)['shards'] == 8
    assert memory(None, 64)['weights_per_rank'] == 4_000_000  # DDP: a full fp32 copy per rank
    assert memory({}, 8, master_weights_dtype='bf16')['training_state_per_rank'] == 8 * 1_000_000 // 8


def test_zero2_holds_the_full_weights_from_forward_to_backward(estimate: ModuleType) -> None:
    """SHARD_GRAD_OP shards grads and optimizer state but keeps every weight gathered until the backward."""
    from types import SimpleNamespace

    def memory(fsdp: dict, precision: str = 'amp_bf16') -> dict[str, Any]:
        cfg = SimpleNamespace(fsdp_config=fsdp, model={}, optimizer={'name': 'decoupled_adamw'}, precision=precision)
        return estimate.student_memory(1_000_000, cfg, 64, 8)

    sharded = 16_000_000 // 64  # fp32 weights, grads and AdamW's two states, split over 64 ranks
    assert memory({'sharding_strategy': 'FULL_SHARD'})['training_state_per_rank'] == sharded
    zero2 = memory({'sharding_strategy': 'SHARD_GRAD_OP', 'mixed_precision': 'PURE'})
    assert zero2['gathered_weights_per_rank'] == 2_000_000  # every bf16 weight, on every rank
    assert zero2['training_state_per_rank'] == sharded + 2_000_000
    full = memory({'sharding_strategy': 'SHARD_GRAD_OP', 'mixed_precision': 'FULL'})
    assert full['training_state_per_rank'] == sharded + 4_000_000  # gathered in fp32
    assert memory({'sharding_strategy': '_HYBRID_SHARD_ZERO2'})['gathered_weights_per_rank'] == 2_000_000


def test_cross_tokenizer_teacher_runs_its_own_tokens_up_to_its_layer(
    estimate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """M2E across tokenizers: the teacher runs to block 14 only (no final block, no LM head: the run measures no
    CEs across tokenizers), on its own tokens per row: max_seq_len x its tokens per student token on a sample."""
    from composer_let.prep.tiny import build_tokenizer, stdlib_texts

    texts = stdlib_texts(300_000)
    student = build_tokenizer(tmp_path / 'student', texts, vocab_size=512)
    teacher = build_tokenizer(tmp_path / 'teacher', texts, vocab_size=2048)  # a larger BPE: fewer tokens
    (tmp_path / 'teacher' / 'config.json').write_text(json.dumps(SMOLLM2_135M), encoding='utf-8')
    sample = tmp_path / 'sample.txt'
    sample.write_text(texts[-1][:20_000], encoding='utf-8')
    args = [
        str(GPU_YAMLS / 'mpt1b-let-smollm2.yaml'),
        f'variables.teacher={tmp_path / "teacher"}',
        f'tokenizer.name={tmp_path / "student"}',
        'algorithms.let.strategy=M2E',
        'algorithms.let.cross_tokenizer=true',
        '--sample-text',
        str(sample),
    ]
    report = estimate.main(args)
    [row] = report['teachers']
    assert row['layers_run'] == [14] and row['head_positions_per_microbatch'] == 0
    text = sample.read_text(encoding='utf-8')
    ratio = len(teacher.encode(text, add_special_tokens=False)) / len(student.encode(text, add_special_tokens=False))
    batch, seq = report['flops']['microbatch']
    length = math.ceil(seq * ratio)
    assert row['sequence_length'] == length and 0.3 * seq < length < seq
    config = SMOLLM2_135M
    _, non_embedding = llama_params(config)
    block = (non_embedding - config['hidden_size']) // config['num_hidden_layers']  # one block's weights
    by_hand = forward_flops(15 * block, 15, attention_width(config), batch, length)  # blocks 0-14, no head
    assert report['flops']['teacher_forward'] == pytest.approx(by_hand, rel=1e-3)
    assert f'{length} per row of {seq}' in capsys.readouterr().out
    # Without --sample-text: the pydoc topics of this Python, and it says so.
    notes: list[str] = []
    assert estimate.teacher_lengths(report['wiring'], student, seq, None, notes)['let'] < seq
    assert 'pydoc topics' in notes[0]
