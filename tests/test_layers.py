"""Block discovery for the common decoder layouts, through wrappers, and the LET layer strategies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
)

from composer_let.layers import clean_path, find_block_list, find_module, resolve_layer, strategy_layers

TINY = {'vocab_size': 64}
LAYOUTS = [
    (
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, **TINY),
        'model.layers',
    ),
    (
        Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, **TINY),
        'model.layers',
    ),
    (
        GPTNeoXConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, **TINY),
        'gpt_neox.layers',
    ),
    (GPT2Config(n_embd=16, n_layer=3, n_head=2, **TINY), 'transformer.h'),
    (
        OPTConfig(
            hidden_size=16, ffn_dim=32, num_hidden_layers=3, num_attention_heads=2, word_embed_proj_dim=16, **TINY
        ),
        'model.decoder.layers',
    ),
]


@pytest.mark.parametrize(('config', 'path'), LAYOUTS, ids=lambda x: getattr(x, 'model_type', x))
def test_hf_layouts(config, path: str) -> None:
    model = AutoModelForCausalLM.from_config(config)
    found, blocks = find_block_list(model)
    assert found == path
    assert len(blocks) == 3


def test_mpt_layout_inside_composer_wrapper() -> None:
    from llmfoundry.models.mpt import ComposerMPTCausalLM

    model = ComposerMPTCausalLM(
        d_model=16,
        n_heads=2,
        n_layers=3,
        expansion_ratio=2,
        max_seq_len=8,
        vocab_size=64,
        attn_config={'attn_impl': 'torch'},
        loss_fn='torch_crossentropy',
    )
    path, blocks = find_block_list(model)
    assert path == 'model.transformer.blocks' and len(blocks) == 3


class _Named(nn.Module):
    """A stand-in for a wrapper that keeps its child under a wrapper name (as DDP does with ``module``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.module = inner

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_checkpoint_wrapped_blocks_resolve_to_the_outer_wrapper() -> None:
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, **TINY)
    model = AutoModelForCausalLM.from_config(config)
    for i, block in enumerate(model.model.layers):
        model.model.layers[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    wrapped = _Named(model)
    path, _ = find_block_list(wrapped)
    assert path == 'model.layers'
    target = find_module(wrapped, 'module.model.layers.1')
    assert target is find_module(wrapped, 'model.layers.1')
    assert type(target).__name__ == 'CheckpointWrapper'  # the outermost module at that path

    captured = []
    target.register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o) and None)
    ids = torch.randint(0, 64, (1, 5))
    logits = wrapped(input_ids=ids, use_cache=False).logits
    assert captured and captured[0].requires_grad and captured[0].shape == (1, 5, 16)
    logits.sum().backward()


def test_clean_path_drops_wrapper_segments() -> None:
    assert clean_path('module._fsdp_wrapped_module.model.layers.3._checkpoint_wrapped_module') == 'model.layers.3'
    assert clean_path('_orig_mod.model.transformer.blocks.0') == 'model.transformer.blocks.0'


def test_no_known_layout_names_student_module() -> None:
    with pytest.raises(ValueError, match='student_module'):
        find_block_list(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ValueError, match=r"student_module='encoder.9'"):
        find_module(nn.Sequential(nn.Linear(2, 2)), 'encoder.9')


@pytest.mark.parametrize(
    ('strategy', 'expected'),
    [('L2E', (29, 5)), ('L2M', (29, 11)), ('L2L', (29, 23)), ('M2E', (14, 5)), ('M2M', (14, 11)), ('M2L', (14, 23))],
)
def test_strategies_for_smollm_teacher_and_24_block_student(strategy: str, expected: tuple[int, int]) -> None:
    assert strategy_layers(strategy, 30, 24) == expected


def test_strategy_edge_cases() -> None:
    assert strategy_layers('L2E', 2, 2) == (1, 0)  # early never goes below block 0
    with pytest.raises(ValueError, match='strategy'):
        strategy_layers('E2L', 2, 2)


def test_resolve_layer() -> None:
    assert resolve_layer(-1, 4, 'k') == 3
    assert resolve_layer(2, 4, 'k') == 2
    for bad in (4, -5):
        with pytest.raises(ValueError, match=r'k=.* out of range.*-4\.\.3'):
            resolve_layer(bad, 4, 'k')
