"""Tiny local assets that need no network: a BPE tokenizer, a random-init HF decoder, MDS shards.

Used by the tests, the quickstart's smoke mode and the benchmarks::

    tok = build_tokenizer(out / 'tok', texts, vocab_size=512)
    save_llama(out / 'teacher', tok, hidden=32, layers=2)
    write_token_shards(out / 'data', tok, texts, seq_len=64)
"""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from composer_let.prep.corpus import pack_rows

EOS = '<|endoftext|>'


def stdlib_texts(limit_bytes: int = 2_000_000) -> list[str]:
    """Python source files of the running interpreter's standard library (always on disk)."""
    root = sysconfig.get_paths()['stdlib']
    texts, total = [], 0
    for path in sorted(glob.glob(os.path.join(root, '*.py'))):
        with open(path, encoding='utf-8', errors='ignore') as f:
            text = f.read()
        texts.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return texts


def build_tokenizer(folder: str | Path, texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with one special token (EOS = BOS = PAD) and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    fast.save_pretrained(str(folder))
    return fast


def save_llama(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """Save a random-init Llama decoder (with ``tokenizer``) as a Hugging Face folder."""
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model


def write_token_shards(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    texts: Iterable[str],
    seq_len: int,
    splits: dict[str, float] | None = None,
) -> dict[str, int]:
    """Write ``<folder>/<split>/`` MDS shards with a ``tokens`` column, as llm-foundry's text loader reads.

    Rows go to splits deterministically in order (``{'train': 0.9, 'val': 0.1}`` by default: the
    first 90% of rows to train). Returns the row count per split.
    """
    from streaming import MDSWriter

    splits = splits or {'train': 0.9, 'val': 0.1}
    rows = list(pack_rows(tokenizer, texts, seq_len))
    counts, start = {}, 0
    for i, (split, share) in enumerate(splits.items()):
        end = len(rows) if i == len(splits) - 1 else start + round(share * len(rows))
        with MDSWriter(out=str(Path(folder) / split), columns={'tokens': 'ndarray:int32'}, compression=None) as w:
            for row in rows[start:end]:
                w.write({'tokens': row})
        counts[split], start = end - start, end
    return counts
