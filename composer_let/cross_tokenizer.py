"""Cross-tokenizer LET: the teacher's input and a position map for a batch of *student* token ids.

With one tokenizer the teacher reads the student's ``input_ids`` as they are. With two, every
student row (llm-foundry's packed rows: documents joined with the student's EOS) is turned back
into text and re-tokenized by the teacher, and each student position gets the teacher position
whose hidden state it is aligned with::

    bridge = TokenBridge(student_tokenizer, teacher_tokenizer, max_length=2048)
    out = bridge(batch['input_ids'])                 # (B, S) student ids
    out['teacher_input_ids']                         # (B, T) teacher ids, teacher EOS between documents
    out['teacher_attention_mask']                    # (B, T) 1 real / 0 padding
    out['teacher_sequence_id']                       # (B, T) document number within the row
    out['teacher_index'], out['teacher_valid']       # (B, S) teacher position per student position

    # or in the DataLoader's workers, off the training loop's critical path:
    loader = DataLoader(dataset, collate_fn=BridgedCollate(collate_fn, bridge), num_workers=2)
    batch['let_teacher_input_ids'], batch['let_teacher_index'], ...

How a row is mapped:

* **Spans in bytes.** Each student token's bytes come from the student tokenizer's vocabulary
  (byte-level BPE alphabet, or SentencePiece ``▁`` and ``<0xHH>`` byte-fallback tokens; checked
  on probe texts), never from re-tokenizing, so a row that starts or ends inside a word or inside a
  UTF-8 character is still accounted for exactly. Spans are offsets in the row's byte stream, in
  which every student EOS counts as one byte of its own (it separates documents and has no text).
* **Documents.** The row is split at the student EOS. Each document's bytes are decoded as UTF-8;
  only bytes that are not valid UTF-8 (a character cut at the row's edges) become U+FFFD, and each
  U+FFFD keeps the byte range it replaces. The teacher tokenizes each document on its own, without
  special tokens and with special-token strings in the text read as plain text; its character
  offsets are turned into row bytes. A teacher token ends at the end of the last character it
  touches, so a teacher token that holds part of a character counts as holding all of it.
* **EOS.** The teacher input is the documents' teacher tokens with the teacher's EOS wherever the
  row has the student's EOS, spanning the same byte: a student EOS maps to that teacher EOS, the
  tokens before it never do. The teacher's ``sequence_id`` numbers the documents (the EOS belongs
  to the document it ends, as llm-foundry's ``sequence_id``); padding takes the last document's id.
  A tokenizer that prepends a space to every text (SentencePiece ``add_dummy_prefix``) gets that
  space dropped from the teacher's text of documents that follow an EOS; a row's first document
  may begin mid-document and keeps it.
* **No look-ahead.** Student position ``i`` is aligned with the last teacher position ``j`` such
  that teacher tokens ``0..j`` all end by the end of student token ``i`` (:func:`position_map`): the
  causal teacher at ``j`` has read nothing that the student at ``i`` has not. A student position
  with no such ``j`` (the row's first tokens, when the teacher's first token reaches further) is
  invalid: ``teacher_valid`` is False there and its loss must be masked out.
* **Lengths.** Teacher rows are padded to the batch's longest (teacher pad id, else its EOS; mask
  0) and cut at ``max_length`` (the teacher's context) at the END: teacher tokens beyond it are
  dropped and every student position aligned with one of them is invalid. The teacher row can
  be longer or shorter than ``S``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SECTION = 'algorithms.let.cross_tokenizer'
PREFIX = 'let_'
KEYS = ('teacher_input_ids', 'teacher_attention_mask', 'teacher_sequence_id', 'teacher_index', 'teacher_valid')

# Texts on which a token -> bytes table must reproduce the tokenizer's own encoding. The second is
# skipped by a tokenizer that encodes some of it as its unknown token (it cannot represent it).
PROBES = (
    'Hello, world! It is 12:30.\n\tdef f(x):  return x   # ok\n\n',
    'café naïve Ærø — “quotes” 中文字符 😀👍🏽 ☃ ok',
)
_BYTE_TOKEN = re.compile(r'<0x([0-9A-Fa-f]{2})>')


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's ``bytes_to_unicode``) as character -> byte."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = byte_level_alphabet()


def _byte_level_bytes(token: str) -> bytes:
    if all(c in _BYTE_LEVEL for c in token):
        return bytes(_BYTE_LEVEL[c] for c in token)
    return token.encode('utf-8')  # not byte-level: the probes decide whether this reader fits


def _sentencepiece_bytes(token: str) -> bytes:
    byte = _BYTE_TOKEN.fullmatch(token)
    return bytes([int(byte.group(1), 16)]) if byte else token.replace('▁', ' ').encode('utf-8')


def token_bytes(tokenizer: Any) -> tuple[list[bytes], bool]:
    """The bytes of every token id of ``tokenizer`` and whether it prepends a space to each text.

    Read from the vocabulary: byte-level BPE tokens through the byte alphabet, SentencePiece-style
    tokens with ``▁`` as a space and ``<0xHH>`` as one byte; special tokens have no bytes, other
    added tokens their text. The reading that reproduces the tokenizer's encoding of every
    :data:`PROBES` text is kept::

        table, prefix_space = token_bytes(tokenizer)
        b''.join(table[i] for i in tokenizer.encode('a b', add_special_tokens=False))  # b'a b'

    Raises ``ValueError`` (naming ``algorithms.let.cross_tokenizer``) when no reading fits.
    """
    size = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = dict(getattr(tokenizer, 'added_tokens_decoder', {}) or {})
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in PROBES]
    unk = getattr(tokenizer, 'unk_token_id', None)
    for reader in (_byte_level_bytes, _sentencepiece_bytes):
        table = []
        for i, token in enumerate(strings):
            if i in added:
                table.append(b'' if added[i].special else added[i].content.encode('utf-8'))
            else:
                table.append(b'' if token is None else reader(token))
        prefixes = set()
        for n, (text, ids) in enumerate(zip(PROBES, encoded, strict=True)):
            if n > 0 and unk is not None and unk in ids:
                continue
            got, want = b''.join(table[i] for i in ids), text.encode('utf-8')
            prefixes.add(True if got == b' ' + want else False if got == want else None)
        if len(prefixes) == 1 and None not in prefixes:
            return table, prefixes.pop()
    raise ValueError(
        f'{SECTION}: cannot map the student tokenizer ({type(tokenizer).__name__}) back to bytes: its tokens do not '
        f're-assemble the text they encode (probe {PROBES[0]!r}). Byte-level BPE (GPT-2, Llama 3, SmolLM) and '
        'SentencePiece-style vocabularies (▁ for spaces, <0xHH> byte fallback) without text-changing normalizers '
        "are supported; train the student on such a tokenizer, or on the teacher's and drop cross_tokenizer.",
    )


def decode_with_offsets(data: bytes) -> tuple[str, np.ndarray]:
    """``data`` decoded as UTF-8, and the byte offset in ``data`` of each of the text's character boundaries.

    Bytes that are not valid UTF-8 become U+FFFD exactly as ``data.decode('utf-8', 'replace')`` does,
    each keeping the byte range it replaces, so offsets stay exact::

        decode_with_offsets('é'.encode()[1:] + b'a')  # ('\\ufffda', array([0, 1, 2]))
    """
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return _decode_replacing(data)
    return text, np.append(_char_starts(data, 0), len(data))


def _char_starts(data: bytes, base: int) -> np.ndarray:
    """Byte offsets (plus ``base``) where the characters of valid UTF-8 ``data`` start."""
    return np.flatnonzero((np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80) + base


def _decode_replacing(data: bytes) -> tuple[str, np.ndarray]:
    pieces, starts, pos = [], [], 0
    while True:
        try:
            pieces.append(data[pos:].decode('utf-8'))
            starts.append(_char_starts(data[pos:], pos))
            break
        except UnicodeDecodeError as e:  # as errors='replace': one U+FFFD for data[pos + e.start : pos + e.end]
            valid = data[pos : pos + e.start]
            pieces += [valid.decode('utf-8'), '\ufffd']
            starts += [_char_starts(valid, pos), np.array([pos + e.start])]
            pos += e.end
    return ''.join(pieces), np.append(np.concatenate(starts), len(data))


def _last_ending_by(teacher_ends: np.ndarray, student_ends: np.ndarray) -> np.ndarray:
    """For each student end, the last ``j`` with teacher tokens ``0..j`` all ending by it; -1 if none."""
    if len(teacher_ends) == 0:
        return np.full(len(student_ends), -1, dtype=np.int64)
    reach = np.maximum.accumulate(teacher_ends)
    return np.searchsorted(reach, student_ends, side='right').astype(np.int64) - 1


def position_map(
    student_spans: Sequence[tuple[int, int]],
    teacher_spans: Sequence[tuple[int, int]],
) -> list[int | None]:
    """Teacher position for each student token: the last teacher token ending by the student token's end.

    Spans are ``(start, end)`` byte offsets in the same text. Student token ``i`` gets the last
    ``j`` such that teacher tokens ``0..j`` all end at or before student token ``i``'s end (for
    spans in text order, as tokenizers give them, simply the last teacher token ending by it), so
    the causal teacher at ``j`` has read no byte the student at ``i`` has not; ``None`` if there is
    none::

        position_map([(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)])  # [0, 2]
        position_map([(0, 1), (1, 4)], [(0, 4)])                  # [None, 0]
    """
    teacher_ends = np.array([end for _, end in teacher_spans], dtype=np.int64)
    student_ends = np.array([end for _, end in student_spans], dtype=np.int64)
    return [int(j) if j >= 0 else None for j in _last_ending_by(teacher_ends, student_ends)]


@dataclass(frozen=True)
class RowAlignment:
    """One student row and its teacher input, before padding and truncation.

    Spans are ``(n, 2)`` byte offsets in the row's byte stream (a student EOS is one byte);
    ``teacher_index[i]`` is the teacher position for student position ``i`` (-1: none).
    """

    teacher_ids: np.ndarray
    teacher_sequence_id: np.ndarray
    teacher_spans: np.ndarray
    student_spans: np.ndarray
    teacher_index: np.ndarray


def _offsets_encoder_json(tokenizer: Any) -> str:
    """The teacher's fast tokenizer as JSON, after checking it can return character offsets."""
    try:
        tokenizer(PROBES[0], add_special_tokens=False, return_offsets_mapping=True)['offset_mapping']
        return tokenizer.backend_tokenizer.to_str()
    except Exception as e:
        raise ValueError(
            f'{SECTION}: the teacher tokenizer ({type(tokenizer).__name__}) cannot return character offsets '
            f'(return_offsets_mapping: {type(e).__name__}: {e}). Use a fast tokenizer: load it with '
            'AutoTokenizer.from_pretrained(teacher, use_fast=True), or give the teacher folder a tokenizer.json.',
        ) from e


def _offsets_encoder(spec: str) -> Any:
    """A copy of the teacher's tokenizer that adds nothing, truncates nothing and does not trim offsets.

    The post-processor is dropped: it would only add special tokens (not wanted) and, for byte-level
    tokenizers with ``trim_offsets``, pull token ends back over whitespace the token holds (which
    would let a student token see a teacher token that reads one byte further). Special-token strings
    in the text are read as text, so only the bridge places the teacher's EOS.
    """
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(spec)
    encoder.post_processor = None
    encoder.no_truncation()
    encoder.no_padding()
    encoder.encode_special_tokens = True
    return encoder


class TokenBridge:
    """Build the teacher's input and the student -> teacher position map for batches of student ids.

    ``max_length`` is the teacher's context (e.g. its ``max_position_embeddings``); longer teacher
    rows are cut at the end. Pure and deterministic; returns CPU tensors::

        bridge = TokenBridge(student_tokenizer, teacher_tokenizer, max_length=2048)
        out = bridge(input_ids)  # (B, S) student ids
        teacher_hidden = teacher(out['teacher_input_ids'], ...)  # (B, T, d)
        rows = torch.arange(B)[:, None]
        aligned = teacher_hidden[rows, out['teacher_index']]  # (B, S, d); use where out['teacher_valid']

    Raises ``ValueError`` naming ``algorithms.let.cross_tokenizer`` when the teacher tokenizer gives
    no offsets (not a fast tokenizer), either tokenizer has no EOS, or the student's tokens cannot be
    mapped back to bytes.
    """

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any, max_length: int):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"{SECTION}: max_length={max_length!r} must be a positive int (the teacher's context).")
        for side, tokenizer in (('student', student_tokenizer), ('teacher', teacher_tokenizer)):
            if getattr(tokenizer, 'eos_token_id', None) is None:
                raise ValueError(
                    f'{SECTION}: the {side} tokenizer ({type(tokenizer).__name__}) has no EOS token, needed to mark '
                    "document boundaries. Set one (tokenizer.eos_token = '...') or use a tokenizer that has one.",
                )
        self.max_length = max_length
        self._teacher_json = _offsets_encoder_json(teacher_tokenizer)
        self._encoder = _offsets_encoder(self._teacher_json)
        self.student_eos = int(student_tokenizer.eos_token_id)
        self.teacher_eos = int(teacher_tokenizer.eos_token_id)
        pad = getattr(teacher_tokenizer, 'pad_token_id', None)
        self.teacher_pad = self.teacher_eos if pad is None else int(pad)
        table, self.prefix_space = token_bytes(student_tokenizer)
        table[self.student_eos] = b'\n'  # a one-byte stand-in: EOS spans a byte of its own, never in a document
        self._units = table
        self._lengths = np.array([len(b) for b in table], dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state['_encoder']  # rebuilt from JSON: pickling a tokenizers.Tokenizer loses encode_special_tokens
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._encoder = _offsets_encoder(self._teacher_json)

    def align(self, rows: Sequence[Sequence[int]]) -> list[RowAlignment]:
        """Align each row of student ids (module docstring); one teacher ``encode_batch`` for all documents."""
        plans, texts, bounds = [], [], []
        for row in rows:
            ids = np.asarray(row, dtype=np.int64).reshape(-1)
            if len(ids) and (ids.min() < 0 or ids.max() >= len(self._units)):
                bad = int(ids.min() if ids.min() < 0 else ids.max())
                raise ValueError(
                    f"{SECTION}: token id {bad} is outside the student tokenizer's {len(self._units)} tokens: the "
                    "data was not tokenized with the student's tokenizer. Rebuild it with that tokenizer.",
                )
            ends = np.cumsum(self._lengths[ids])
            starts = ends - self._lengths[ids]
            data = b''.join([self._units[i] for i in ids.tolist()])
            eos = np.flatnonzero(ids == self.student_eos)
            firsts = np.concatenate(([0], ends[eos])).tolist()
            lasts = np.concatenate((starts[eos], [len(data)])).tolist()
            for k, (first, last) in enumerate(zip(firsts, lasts, strict=True)):
                if k and self.prefix_space and data[first : first + 1] == b' ' and first < last:
                    first += 1
                text, offsets = decode_with_offsets(data[first:last])
                texts.append(text)
                bounds.append(offsets + first)
            plans.append((eos, starts, ends))
        encodings = self._encoder.encode_batch(texts, add_special_tokens=False)
        out, cursor = [], 0
        for eos, starts, ends in plans:
            ids_parts, span_parts, eos_parts = [], [], []
            for k in range(len(eos) + 1):
                encoding, offsets = encodings[cursor], bounds[cursor]
                cursor += 1
                ids_parts.append(np.asarray(encoding.ids, dtype=np.int64))
                span_parts.append(offsets[np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)])
                eos_parts.append(np.zeros(len(encoding.ids), dtype=np.int64))
                if k < len(eos):
                    ids_parts.append(np.array([self.teacher_eos]))
                    span_parts.append(np.array([[starts[eos[k]], ends[eos[k]]]]))
                    eos_parts.append(np.ones(1, dtype=np.int64))
            is_eos = np.concatenate(eos_parts)
            spans = np.concatenate(span_parts).reshape(-1, 2)
            out.append(
                RowAlignment(
                    teacher_ids=np.concatenate(ids_parts).astype(np.int64),
                    teacher_sequence_id=np.cumsum(is_eos) - is_eos,
                    teacher_spans=spans,
                    student_spans=np.stack([starts, ends], axis=1),
                    teacher_index=_last_ending_by(spans[:, 1], ends),
                ),
            )
        return out

    def __call__(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's batch and the position map for ``input_ids`` ``(B, S)`` (see the class docstring)."""
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(
                f'{SECTION}: input_ids must be a (batch, seq) integer tensor, got {input_ids.dtype} '
                f'{tuple(input_ids.shape)}.'
            )
        rows = self.align(input_ids.tolist())
        batch, seq = input_ids.shape
        width = max(1, min(self.max_length, max((len(r.teacher_ids) for r in rows), default=0)))
        teacher_ids = np.full((batch, width), self.teacher_pad, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        sequence_id = np.zeros((batch, width), dtype=np.int64)
        index = np.zeros((batch, seq), dtype=np.int64)
        valid = np.zeros((batch, seq), dtype=bool)
        for b, row in enumerate(rows):
            n = min(width, len(row.teacher_ids))
            teacher_ids[b, :n] = row.teacher_ids[:n]
            mask[b, :n] = 1
            if n:
                sequence_id[b, :n] = row.teacher_sequence_id[:n]
                sequence_id[b, n:] = row.teacher_sequence_id[n - 1]
            valid[b] = (row.teacher_index >= 0) & (row.teacher_index < n)
            index[b] = np.where(valid[b], row.teacher_index, 0)
        return {
            'teacher_input_ids': torch.from_numpy(teacher_ids),
            'teacher_attention_mask': torch.from_numpy(mask),
            'teacher_sequence_id': torch.from_numpy(sequence_id),
            'teacher_index': torch.from_numpy(index),
            'teacher_valid': torch.from_numpy(valid),
        }


class BridgedCollate:
    """Wrap a collate function so each batch also carries the teacher's input (:class:`TokenBridge`).

    The bridge's five tensors are added under ``let_``-prefixed keys (``let_teacher_input_ids``,
    ``let_teacher_attention_mask``, ``let_teacher_sequence_id``, ``let_teacher_index``,
    ``let_teacher_valid``), so the re-tokenization runs in the DataLoader's worker processes.
    Picklable (plain attributes) for spawned workers::

        loader = DataLoader(dataset, batch_size=16, num_workers=2,
                            collate_fn=BridgedCollate(loader.collate_fn, TokenBridge(student, teacher, 2048)))
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], bridge: TokenBridge):
        self.collate_fn = collate_fn
        self.bridge = bridge

    def __call__(self, samples: list[Any]) -> Any:
        batch = self.collate_fn(samples)
        for key, value in self.bridge(batch['input_ids']).items():
            batch[PREFIX + key] = value
        return batch
