"""The frozen small teacher: locate, validate, load, and run its backbone.

The teacher never joins the Composer model: it is not wrapped by DDP/FSDP, not in
the optimizer and not in checkpoints. Each rank holds its own replica.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from composer.utils import dist
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from composer_let.layers import find_block_list

_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*')
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


class TeacherError(ValueError):
    """A teacher that cannot be used, with the fix in the message."""


def resolve_teacher(teacher: str) -> str:
    """Return a local folder for ``teacher`` (a local path or a Hugging Face hub id).

    A hub id is downloaded by local rank 0 first while the other ranks wait, so
    ranks never race on the cache. A path that looks local but is missing is an error.
    """
    if not isinstance(teacher, str) or not teacher.strip():
        raise TeacherError('teacher is required: set teacher to a Hugging Face hub id or a local folder.')
    if os.path.isdir(teacher):
        return teacher
    if not _HUB_ID.fullmatch(teacher):
        raise TeacherError(f'teacher={teacher!r}: no such folder. Point teacher at a saved Hugging Face model folder.')
    from huggingface_hub import snapshot_download

    def download() -> str:
        return snapshot_download(teacher, allow_patterns=['*.json', '*.safetensors', '*.model', '*.txt', '*.bin'])

    def failure(e: Exception) -> str:
        return (
            f'teacher={teacher!r} is neither a local folder nor a downloadable hub model ({type(e).__name__}: {e}). '
            'Offline, point teacher at a local folder (scripts/prepare_teacher.py writes one).'
        )

    # Local rank 0 downloads first; every rank then learns whether any node's download failed, so a
    # failure raises on every rank with its reason instead of leaving the others at a barrier.
    error, path = '', ''
    if dist.get_local_rank() == 0:
        try:
            path = download()
        except Exception as e:
            error = failure(e)
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors:
        raise TeacherError(errors[0])
    if path:
        return path
    try:
        return download()  # from the local cache now
    except Exception as e:
        raise TeacherError(failure(e)) from e


def load_teacher_config(path: str, key: str = 'teacher') -> PretrainedConfig:
    """Load and check the teacher's config: it must be a causal LM that transformers can build."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, 'config.json')):
        # Without this, AutoConfig guesses a model type from the folder's *name* ('empty' -> 'mpt').
        raise TeacherError(f'{key}={path!r} has no readable Hugging Face config (no config.json in the folder).')
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise TeacherError(f'{key}={path!r} has no readable Hugging Face config ({e}).') from e
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise TeacherError(
            f'{key}={path!r} is a {config.model_type!r} model, not a causal LM that '
            'AutoModelForCausalLM can load. Use a decoder LM (Llama, SmolLM, Pythia, OPT, GPT-2, ...).',
        )
    return config


def load_teacher_tokenizer(path: str) -> PreTrainedTokenizerBase | None:
    """The teacher's tokenizer, or ``None`` when the folder has none."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None


SAME_TOKENIZER_FIX = "Set tokenizer.name to the teacher's folder."


def same_tokenizer(student: Any, teacher: Any) -> bool:
    """Whether two tokenizers map tokens to the same ids."""
    return student is not None and teacher is not None and student.get_vocab() == teacher.get_vocab()


def check_tokenizers(student: Any, teacher: Any, teacher_vocab: int, fix: str = SAME_TOKENIZER_FIX) -> None:
    """The student must use the teacher's tokenizer (same token -> id map); ``fix`` ends the error."""
    if student is None:
        return
    if len(student) > teacher_vocab:
        raise ValueError(
            f'The run tokenizer has {len(student)} tokens but the teacher only {teacher_vocab}: the student '
            f"must be trained on the teacher's tokenizer. {fix}",
        )
    if teacher is not None and not same_tokenizer(student, teacher):
        raise ValueError(
            "The run tokenizer differs from the teacher's (token -> id maps do not match): the student "
            f"must be trained on the teacher's tokenizer. {fix}",
        )


def load_teacher(path: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Load the teacher with ``from_pretrained``, frozen: ``eval()``, no grad, on ``device``."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    except Exception as e:
        raise TeacherError(f'teacher={path!r} failed to load as a causal LM: {type(e).__name__}: {e}') from e
    model.eval().requires_grad_(False)
    return model.to(device)


@dataclass(frozen=True)
class TeacherShape:
    """What the student side needs to know about the teacher, read from its config."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int | None


def teacher_shape(config: PretrainedConfig) -> TeacherShape:
    hidden = getattr(config, 'word_embed_proj_dim', None) or config.hidden_size  # OPT-350m projects out
    return TeacherShape(
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(hidden),
        vocab_size=int(config.vocab_size),
        max_positions=getattr(config, 'max_position_embeddings', None),
    )


def open_teacher(
    teacher: str, key: str, student_tokenizer: Any, tokenizer_fix: str | None = SAME_TOKENIZER_FIX
) -> tuple[str, PretrainedConfig, TeacherShape]:
    """What ``let`` and ``salt`` check at ``Event.INIT``, before any weights load.

    Resolves ``teacher`` to a local folder, reads its config and checks that the run's
    tokenizer (``None``: not visible) is the teacher's, ending a mismatch's error with
    ``tokenizer_fix`` (``None``: tokenizers may differ). Errors are ``ValueError`` naming ``key``
    (``algorithms.let``); returns the folder, the config and its shape.
    """
    try:
        path = resolve_teacher(teacher)
        config = load_teacher_config(path)
    except TeacherError as e:
        raise ValueError(f'{key}.{e}') from None
    shape = teacher_shape(config)
    if tokenizer_fix is not None:
        check_tokenizers(student_tokenizer, load_teacher_tokenizer(path), shape.vocab_size, tokenizer_fix)
    return path, config, shape


def check_input_ids(input_ids: torch.Tensor, shape: TeacherShape) -> None:
    """The batch must fit the teacher: token ids inside its vocabulary, sequences within its positions."""
    top = int(input_ids.max())
    if top >= shape.vocab_size:
        raise ValueError(
            f"Token id {top} is outside the teacher's vocabulary ({shape.vocab_size}): the data was not "
            "tokenized with the teacher's tokenizer. Rebuild it with the teacher's tokenizer.",
        )
    if shape.max_positions is not None and input_ids.shape[1] > shape.max_positions:
        raise ValueError(
            f"Sequences of {input_ids.shape[1]} tokens exceed the teacher's max_position_embeddings "
            f'({shape.max_positions}). Lower max_seq_len to {shape.max_positions} or use a longer-context teacher.',
        )


class BatchGuard:
    """Checks batches against the teacher (:func:`check_input_ids`) whenever their length grows.

    The check reads the largest id (a host sync), so it runs on the first batch and again only
    when sequences get longer (``seq_length_warmup``), not on every batch.
    """

    def __init__(self, shape: TeacherShape, section: str):
        self.shape, self.section, self.length = shape, section, 0

    def check(self, input_ids: torch.Tensor) -> None:
        if input_ids.shape[1] > self.length:
            try:
                check_input_ids(input_ids, self.shape)
            except ValueError as e:
                raise ValueError(f'{self.section}: {e}') from None
            self.length = input_ids.shape[1]


def student_masks_documents(model: nn.Module) -> bool:
    """Whether the student attends within documents only (llm-foundry MPT with ``attn_uses_sequence_id``).

    Hugging Face students in llm-foundry drop ``sequence_id`` and attend across packed documents.
    """
    return any(getattr(m, 'attn_uses_sequence_id', False) is True for m in model.modules())


def teacher_inputs(batch: Any, packed: bool) -> dict[str, Any]:
    """The teacher's inputs for a training batch: ids, padding mask, and ``sequence_id`` when ``packed``."""
    inputs = {'input_ids': batch['input_ids'], 'attention_mask': batch.get('attention_mask')}
    if packed:
        if batch.get('sequence_id') is None:
            raise ValueError(
                'The student attends within documents (attn_uses_sequence_id) but the batch has no sequence_id; '
                'set train_loader.dataset.eos_token_id so the loader marks document boundaries.',
            )
        inputs['sequence_id'] = batch['sequence_id']
    return inputs


def state_device(state: Any) -> torch.device:
    """The device a Composer run trains on."""
    return state.device.tensor_to_device(torch.empty(0)).device


class _Stop(Exception):
    """Raised by a capture hook to skip the teacher's blocks after the last one needed."""


def packed_attention(sequence_id: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A block-diagonal causal mask and per-document position ids for rows packed with several documents.

    ``sequence_id`` is ``(batch, seq)``, constant within a document (llm-foundry's ``sequence_id``;
    padding may be ``-1``). Returns the additive ``(batch, 1, seq, seq)`` mask Hugging Face decoders
    take as a 4-D ``attention_mask`` (0 where a token may attend, the dtype's minimum elsewhere) and
    ``(batch, seq)`` position ids that restart at 0 at each document's first token, so the teacher
    computes on every document exactly what it would on that document alone.
    """
    seq = sequence_id.shape[1]
    positions = torch.arange(seq, device=sequence_id.device)
    same = sequence_id[:, :, None] == sequence_id[:, None, :]
    allowed = same & (positions[None, :, None] >= positions[None, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence_id.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    starts = torch.ones_like(sequence_id, dtype=torch.bool)
    starts[:, 1:] = sequence_id[:, 1:] != sequence_id[:, :-1]
    first = torch.where(starts, positions[None].expand_as(sequence_id), torch.zeros_like(sequence_id))
    return mask, positions[None] - first.cummax(dim=1).values


class TeacherRunner:
    """Runs the teacher's backbone (never its LM head) once per microbatch for every layer asked of it.

    Layers are block indices; the last block's output is taken after the final norm,
    as Hugging Face's ``hidden_states[-1]``. When only earlier blocks are needed the
    forward stops right after the deepest of them. Several algorithms (``let``,
    ``salt``) share one runner through :func:`acquire_teacher`: the second call with the
    same ``input_ids`` tensor returns the cached outputs instead of running again. Requests
    are counted: a layer stays computed until every :meth:`request` of it has been dropped
    (:meth:`drop`, or :meth:`release` with the layers its user requested).
    """

    def __init__(self, model: nn.Module, num_layers: int):
        self.model = model
        self.backbone = model.base_model
        self.num_layers = num_layers
        self.layers: set[int] = set()  # the layers with a request
        self._requests: Counter[int] = Counter()
        self.forwards = 0  # teacher forwards run, for tests and benchmarks
        self.users = 0  # algorithms sharing this runner (see acquire_teacher)
        self._blocks: nn.ModuleList | None = None
        self._captured: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._hooked: tuple[frozenset[int], bool] = (frozenset(), False)
        self._cache_key: tuple[torch.Tensor | None, ...] | None = None
        self._cache: dict[int, torch.Tensor] = {}
        self._widths: dict[int, int] = {}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def request(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f'Teacher layer {layer} is out of range 0..{self.num_layers - 1}.')
        self._requests[layer] += 1
        if layer not in self.layers:
            self.layers.add(layer)
            self._cache_key, self._cache = None, {}  # the cached outputs lack the new layer

    def drop(self, layer: int) -> None:
        """Withdraw one :meth:`request` of ``layer``; after the last one it is no longer computed or copied."""
        if self._requests[layer] > 1:
            self._requests[layer] -= 1
        else:
            self._requests.pop(layer, None)
            self.layers.discard(layer)

    def _hook_layers(self) -> None:
        wanted = frozenset(i for i in self.layers if i != self.num_layers - 1)
        final_needed = self.num_layers - 1 in self.layers
        if (wanted, final_needed) == self._hooked:
            return
        for handle in self._handles:
            handle.remove()
        if self._blocks is None and wanted:
            _, self._blocks = find_block_list(self.model)
        deepest = max(wanted, default=-1)
        self._handles = [
            self._blocks[i].register_forward_hook(self._capturer(i, stop=i == deepest and not final_needed))
            for i in sorted(wanted)
        ]
        self._hooked = (wanted, final_needed)

    def _capturer(self, layer: int, stop: bool):
        def capture(module: nn.Module, args: object, output: object) -> None:
            self._captured[layer] = output[0] if isinstance(output, tuple) else output  # type: ignore[index]
            if stop:
                raise _Stop

        return capture

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        sequence_id: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Return ``{layer: (batch, seq, width)}`` for every requested layer.

        ``sequence_id`` (rows packed with several documents): the teacher attends within each
        document only and its positions restart per document (:func:`packed_attention`).
        """
        key = (input_ids, attention_mask, sequence_id)
        if self._cache_key is not None and all(a is b for a, b in zip(key, self._cache_key, strict=True)):
            return self._cache
        self._hook_layers()
        self._captured = {}
        kwargs: dict[str, Any] = {'input_ids': input_ids, 'attention_mask': attention_mask, 'use_cache': False}
        if sequence_id is not None:
            mask, positions = packed_attention(sequence_id, self.dtype)
            if attention_mask is not None:  # padding keys stay masked
                keep = attention_mask.bool()[:, None, None, :]
                mask = mask.masked_fill(~keep, torch.finfo(mask.dtype).min)
            kwargs.update(attention_mask=mask, position_ids=positions)
        # inference_mode skips autograd's version counters: ~10% off the teacher forward on CPU
        # (bench/README.md). Its outputs cannot be saved for the student's backward, hence the clone.
        with torch.inference_mode():
            try:
                out = self.backbone(**kwargs)
                self._captured[self.num_layers - 1] = out.last_hidden_state
            except _Stop:
                pass
        self.forwards += 1
        self._cache_key, self._cache = key, {i: self._captured[i].clone() for i in self.layers}
        self._captured = {}
        return self._cache

    def widths(self, device: torch.device | str) -> dict[int, int]:
        """Width of every requested layer, from a 2-token forward (run again only for new layers).

        The probe goes through the packed-document path (an explicit 4-D mask and position ids),
        which also spares weightless (fake) tensors the data-dependent mask checks of some models.
        """
        if not self.layers <= self._widths.keys():
            probe = torch.zeros(1, 2, dtype=torch.long, device=device)
            try:
                outputs = self(probe, sequence_id=torch.zeros_like(probe))
            except Exception:  # a model without 4-D masks (GPT-2): the plain path
                outputs = self(probe)
            self._cache_key, self._cache = None, {}
            self._widths.update({layer: int(hidden.shape[-1]) for layer, hidden in outputs.items()})
        return {layer: self._widths[layer] for layer in self.layers}

    def takes_packed_documents(self, device: torch.device | str) -> str | None:
        """``None`` if the teacher runs with a per-document mask (:func:`packed_attention`), else why not."""
        probe = torch.zeros(1, 2, dtype=torch.long, device=device)
        try:
            self(probe, sequence_id=torch.zeros_like(probe))
        except Exception as e:
            return f'{type(e).__name__}: {e}'
        finally:
            self._cache_key, self._cache = None, {}
        return None

    def release(self, layers: Iterable[int] = ()) -> None:
        """Drop this user of a pooled runner (see :func:`acquire_teacher`) and the ``layers`` it requested."""
        for layer in layers:
            self.drop(layer)
        release_teacher(self)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._hooked = [], (frozenset(), False)
        self._cache_key, self._cache = None, {}


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Tensors inside carry shapes and dtypes but no storage: models of any size build and run for free.

    (Meta tensors alone do not run Hugging Face forwards: ``torch.autocast`` refuses the meta device.)
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


def teacher_skeleton(config: PretrainedConfig) -> nn.Module:
    """The teacher built from its config inside :func:`shapes_only`: no weights are allocated."""
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def layer_widths(config: PretrainedConfig, layers: list[int], key: str) -> dict[int, int]:
    """Widths of the teacher's ``layers`` read off a forward of its meta-device skeleton.

    The config's ``hidden_size`` is not always a layer's width: OPT-350m's blocks are 1024 wide
    and its final output 512 (``word_embed_proj_dim``).
    """
    try:
        with shapes_only():
            runner = TeacherRunner(teacher_skeleton(config), int(config.num_hidden_layers))
            for layer in layers:
                runner.request(layer)
            widths = runner.widths('cpu')
            runner.close()
            return widths
    except Exception as e:
        raise ValueError(
            f'{key}: cannot run a weightless copy of the teacher ({config.model_type}) to read its layer widths '
            f'({type(e).__name__}: {e}).',
        ) from e


_POOL: weakref.WeakKeyDictionary[object, dict[tuple[str, torch.dtype, str], TeacherRunner]] = (
    weakref.WeakKeyDictionary()
)


def acquire_teacher(
    path: str,
    dtype: torch.dtype,
    device: torch.device,
    num_layers: int,
    owner: object,
) -> TeacherRunner:
    """Load the frozen teacher at ``path``, or share the one loaded for the same ``owner``.

    Algorithms of one run pass the run's Composer ``State`` as ``owner``, so ``let`` and
    ``salt`` share one teacher (and one forward per microbatch) while separate runs in
    one process never do. Pair every call with :func:`release_teacher`.
    """
    runners = _POOL.setdefault(owner, {})
    key = (os.path.realpath(path), dtype, str(device))
    if key not in runners:
        runners[key] = TeacherRunner(load_teacher(path, dtype, device), num_layers)
    runner = runners[key]
    runner.users += 1
    return runner


def release_teacher(runner: TeacherRunner) -> None:
    """Drop one user of ``runner``; after the last one the runner is closed and leaves the pool."""
    runner.users -= 1
    if runner.users > 0:
        return
    runner.close()
    for runners in _POOL.values():
        for key, pooled in list(runners.items()):
            if pooled is runner:
                del runners[key]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_teacher(
    path: str,
    dtype: torch.dtype,
    device: torch.device,
    num_layers: int,
    widths: dict[int, int],
    owner: object,
    key: str,
    packed: bool = False,
) -> TeacherRunner:
    """Acquire the teacher (:func:`acquire_teacher`), request ``widths``' layers and check their real widths.

    ``widths`` maps block index to the width expected from the weightless probe at INIT (``-1``:
    any); pair it with ``runner.release(widths)``, which withdraws these requests. ``packed``: the
    student attends within documents, so the teacher must take a per-document mask. On any error
    the runner is released again, so a failed start never keeps a teacher loaded.
    """
    runner = acquire_teacher(path, dtype, device, num_layers, owner=owner)
    try:
        for layer in widths:
            runner.request(layer)
        measured = runner.widths(device)
        why = runner.takes_packed_documents(device) if packed else None
        if why is not None:
            raise ValueError(
                f'{key}={path!r}: the student attends within documents (attn_uses_sequence_id) but this teacher '
                f'({type(runner.model).__name__}) takes no per-document (4-D) attention mask ({why}). Use a teacher '
                'that does (Llama, Qwen2, GPT-NeoX, OPT) or set model.attn_config.attn_uses_sequence_id: false.',
            )
        for layer, expected in widths.items():
            if expected >= 0 and measured[layer] != expected:
                raise ValueError(
                    f'{key}={path!r}: block {layer} of the loaded teacher is {measured[layer]} wide, its config '
                    f'says {expected}. The weights do not match the config.',
                )
    except BaseException:
        runner.release(widths)
        raise
    return runner
