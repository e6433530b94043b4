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
    collate = BridgedCollate(collate_fn, bridge)
    loader = DataLoader(dataset, collate_fn=collate, num_workers=2)
    batch['let_teacher_input_ids'], batch['let_teacher_index'], ...
    collate.release()  # from now on batches pass through untouched, in the workers too

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
* **Aligned only where no teacher token can straddle, within the document.** A student position is
  aligned with a teacher position only if the student token ends exactly where one of the teacher's
  *words* ends (the splits of its pre-tokenizer, which no teacher token crosses; read from the
  teacher's own encoding, ``word_ids``) in the same document, or is a student EOS (aligned with the
  teacher EOS placed for it). It gets the teacher token ending there: the word's last token. The
  teacher also re-encodes the text of the last :data:`WINDOW_WORDS` words up to that point on its
  own, and the position is kept only if that gives the same ids: this drops the splits a
  pre-tokenizer makes because of the text after them (GPT-2's regex splits the ``'\\n\\n'`` before a
  word into ``'\\n'``, ``'\\n'``, but keeps it whole at the end of a text). Every other position is
  invalid (``teacher_valid`` False; its loss must be masked out): ends inside a teacher word or
  inside a character, and a document's first positions before its first teacher word ends (never
  the previous document's EOS).
* **What holds.** For a valid student position ``i`` ending at byte ``e`` of document ``d``, the
  teacher ids of ``d`` up to the aligned position are the teacher's encoding of ``d``'s text up to
  ``e`` on its own, so the teacher state it is aligned with is a function of the student's tokens
  up to ``i`` alone (of its document when the student attends within documents; else also of the
  earlier documents of the row, which the student has read too). Which positions are valid depends
  on the next character (whether a teacher word ends at ``e``); what a valid one is aligned with
  does not. This is exact when the pre-tokenizer splits a text's beginning as it splits the whole
  text except in its last :data:`WINDOW_WORDS` words, as regex pre-tokenizers (GPT-2's: byte-level
  BPEs such as GPT-2, SmolLM2 and the benchmark's) do: ``tests/test_cross_tokenizer.py`` checks it
  against the teacher's encoding of every prefix. A teacher whose tokenizer does not split text into
  words (no pre-tokenizer, or SentencePiece conversions with ``split: false`` such as Llama 2's) has
  no such positions and is refused.
* **Lengths.** Teacher rows are padded to the batch's longest (teacher pad id, else its EOS; mask
  0) and cut at ``max_length`` (the teacher's context) at the END: teacher tokens beyond it are
  dropped and every student position aligned with one of them is invalid. The teacher row can
  be longer or shorter than ``S``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
import torch

SECTION = 'algorithms.let.cross_tokenizer'
PREFIX = 'let_'
KEYS = ('teacher_input_ids', 'teacher_attention_mask', 'teacher_sequence_id', 'teacher_index', 'teacher_valid')
# Words of the teacher re-encoded on their own to check a position (module docstring, "What holds"): GPT-2's
# regex splits a text's beginning differently from the whole text in at most its last two words.
WINDOW_WORDS = 3

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


def position_map(
    student_ends: np.ndarray,
    student_docs: np.ndarray,
    teacher_ends: np.ndarray,
    teacher_docs: np.ndarray,
    closing: np.ndarray,
) -> np.ndarray:
    """Teacher position for each student token: the closing teacher token that ends where it ends, in its document.

    Ends are byte offsets in the row (non-decreasing), docs each token's document number, and
    ``closing`` marks the teacher tokens a student token may be aligned with (the last token of a
    word that checked out, or an EOS). -1 where there is none::

        ends, docs = np.array([2, 3, 5, 6, 7]), np.array([0, 0, 0, 0, 1])
        position_map(ends, docs, np.array([3, 5, 6, 8]), np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]) > 0)
        # [-1, 0, 1, 2, -1]: 2 ends inside teacher token 0; 7 is in the next document, whose token ends at 8
    """
    candidates = np.flatnonzero(closing)
    if len(candidates) == 0:
        return np.full(len(student_ends), -1, dtype=np.int64)
    k = np.searchsorted(teacher_ends[candidates], student_ends, side='right') - 1
    j = candidates[np.maximum(k, 0)]
    hit = (k >= 0) & (teacher_ends[j] == student_ends) & (teacher_docs[j] == student_docs)
    return np.where(hit, j, -1).astype(np.int64)


@dataclass(frozen=True)
class RowAlignment:
    """One student row and its teacher input, before padding and truncation.

    Spans are ``(n, 2)`` byte offsets in the row's byte stream (a student EOS is one byte);
    ``teacher_closing`` marks the teacher tokens a student token may be aligned with (a word's last
    token that checked out, or an EOS); ``teacher_index[i]`` is the teacher position for student
    position ``i`` (-1: none; module docstring).
    """

    teacher_ids: np.ndarray
    teacher_sequence_id: np.ndarray
    teacher_spans: np.ndarray
    teacher_closing: np.ndarray
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
    no offsets (not a fast tokenizer) or does not split text into words, either tokenizer has no
    EOS, or the student's tokens cannot be mapped back to bytes.
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
        if len(set(self._encoder.encode(PROBES[0], add_special_tokens=False).word_ids)) < 2:
            raise ValueError(
                f'{SECTION}: the teacher tokenizer ({type(teacher_tokenizer).__name__}) does not split text into '
                "words (no pre-tokenizer that splits, as in SentencePiece conversions such as Llama 2's), so the "
                'teacher token a student token ends with can depend on any text after it: no student position can '
                'be aligned without look-ahead. Use a teacher whose tokenizer pre-tokenizes (byte-level BPE: GPT-2, '
                "Llama 3, SmolLM2, Qwen), or train the student on the teacher's tokenizer and drop cross_tokenizer.",
            )
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
        """Align each row of student ids (module docstring); two teacher ``encode_batch`` calls for all rows."""
        plans, texts, bounds, wanted = [], [], [], []
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
                wanted.append(ends)
            plans.append((eos, starts, ends))
        documents = [
            self._closing_candidates(encoding, text, offsets, ends)
            for encoding, text, offsets, ends in zip(
                self._encoder.encode_batch(texts, add_special_tokens=False), texts, bounds, wanted, strict=True
            )
        ]
        checks = [(doc, *window) for doc, (*_, windows) in enumerate(documents) for window in windows]
        encode = getattr(self._encoder, 'encode_batch_fast', self._encoder.encode_batch)  # fast: no offsets
        for (doc, k, first, _), encoding in zip(
            checks, encode([window for *_, window in checks], add_special_tokens=False), strict=True
        ):
            ids, _, closing, _ = documents[doc]
            closing[k] = encoding.ids == ids[first : k + 1].tolist()
        out, cursor = [], 0
        for eos, starts, ends in plans:
            parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
            for k in range(len(eos) + 1):
                ids, spans, closing, _ = documents[cursor]
                cursor += 1
                parts.append((ids, spans, closing, np.zeros(len(ids), dtype=np.int64)))
                if k < len(eos):
                    eos_span = np.array([[starts[eos[k]], ends[eos[k]]]])
                    parts.append((np.array([self.teacher_eos]), eos_span, np.ones(1, dtype=bool), np.ones(1, np.int64)))
            teacher_ids, spans, closing, is_eos = (np.concatenate(p) for p in zip(*parts, strict=True))
            teacher_docs = np.cumsum(is_eos) - is_eos
            student_eos = np.zeros(len(ends), dtype=np.int64)
            student_eos[eos] = 1
            student_docs = np.cumsum(student_eos) - student_eos
            spans = spans.reshape(-1, 2)
            out.append(
                RowAlignment(
                    teacher_ids=teacher_ids.astype(np.int64),
                    teacher_sequence_id=teacher_docs,
                    teacher_spans=spans,
                    teacher_closing=closing,
                    student_spans=np.stack([starts, ends], axis=1),
                    teacher_index=position_map(ends, student_docs, spans[:, 1], teacher_docs, closing),
                ),
            )
        return out

    @staticmethod
    def _closing_candidates(
        encoding: Any, text: str, offsets: np.ndarray, student_ends: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
        """One document's teacher ids, byte spans, closing flags (all False yet) and the windows to check.

        A window is ``(k, first, text)``: token ``k`` ends a teacher word at a student token's end, and
        ``text`` is the document's text from token ``first`` (the start of the word
        ``WINDOW_WORDS - 1`` words before) to the end of token ``k``.
        """
        ids = np.asarray(encoding.ids, dtype=np.int64)
        chars = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        spans = offsets[chars]
        words = encoding.word_ids
        words = np.array(words if None not in words else [-1 - k if w is None else w for k, w in enumerate(words)])
        new_word = np.ones(len(ids), dtype=bool)
        new_word[1:] = words[1:] != words[:-1]
        word_starts = np.flatnonzero(new_word)
        ends_word = np.append(new_word[1:], True)[: len(ids)]
        candidates = np.flatnonzero(ends_word & np.isin(spans[:, 1], student_ends))
        firsts = word_starts[np.maximum(np.searchsorted(word_starts, candidates, side='right') - WINDOW_WORDS, 0)]
        windows = [
            (k, first, text[chars[first, 0] : chars[k, 1]])
            for k, first in zip(candidates.tolist(), firsts.tolist(), strict=True)
        ]
        return ids, spans, np.zeros(len(ids), dtype=bool), windows

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
    After :meth:`release` batches pass through untouched, in every process that holds this
    collate: the flag is in shared memory, which the DataLoader's workers (forked or spawned)
    share, so an iterator made before the release, and its workers, stop re-tokenizing too::

        collate = BridgedCollate(loader.collate_fn, TokenBridge(student, teacher, 2048))
        loader = DataLoader(dataset, batch_size=16, num_workers=2, collate_fn=collate)
        collate.release()  # e.g. once the teacher is released

    Picklable for spawned workers; a copy made otherwise (``pickle``, ``copy.deepcopy``) gets a flag
    of its own, set as the original's was.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], bridge: TokenBridge):
        self.collate_fn = collate_fn
        self.bridge = bridge
        self._released: Any = multiprocessing.RawValue(ctypes.c_bool, False)

    @property
    def released(self) -> bool:
        return bool(self._released.value)

    def release(self) -> None:
        """Pass batches through untouched from now on (no re-tokenization, no ``let_`` keys), in all processes."""
        self._released.value = True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if get_spawning_popen() is None:  # not a worker process being started: shared memory cannot be pickled
            state['_released'] = self.released
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state['_released'], bool):
            state['_released'] = multiprocessing.RawValue(ctypes.c_bool, state['_released'])
        self.__dict__.update(state)

    def __call__(self, samples: list[Any]) -> Any:
        batch = self.collate_fn(samples)
        if self.released:
            return batch
        for key, value in self.bridge(batch['input_ids']).items():
            batch[PREFIX + key] = value
        return batch
