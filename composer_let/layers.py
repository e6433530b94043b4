"""Find transformer blocks in a (possibly wrapped) model and pick the LET layers.

Paths are written without wrapper segments: DDP's ``module.``, FSDP1's
``_fsdp_wrapped_module.``, activation checkpointing's ``_checkpoint_wrapped_module.``
and ``torch.compile``'s ``_orig_mod.`` are skipped, so ``model.model.layers.3``
names the same block before and after wrapping.
"""

from __future__ import annotations

from torch import nn

STRATEGIES = ('L2E', 'L2M', 'L2L', 'M2E', 'M2M', 'M2L')

# Where decoder blocks live, by layout (the path's tail, wrappers skipped).
BLOCK_LIST_SUFFIXES = (
    'transformer.blocks',  # llm-foundry MPT
    'model.layers',  # Llama, Mistral, Qwen2, Gemma, SmolLM
    'gpt_neox.layers',  # GPT-NeoX, Pythia
    'transformer.h',  # GPT-2, GPT-J, Bloom
    'decoder.layers',  # OPT (model.decoder.layers)
)
_WRAPPER_SEGMENTS = frozenset({'module', '_fsdp_wrapped_module', '_checkpoint_wrapped_module', '_orig_mod'})


def clean_path(name: str) -> str:
    """Drop wrapper segments from a module path."""
    return '.'.join(part for part in name.split('.') if part and part not in _WRAPPER_SEGMENTS)


def _outermost_by_path(model: nn.Module) -> dict[str, nn.Module]:
    """Map each clean path to the outermost module at it (the wrapper, if any).

    ``named_modules`` lists a wrapper before the module it wraps, so the first
    module seen at a clean path is the outermost one: hooking it captures the
    output that actually flows on, with its gradient, even under reentrant
    activation checkpointing (whose inner forward runs without grad).
    """
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        found.setdefault(clean_path(name), module)
    return found


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(clean path, ModuleList)`` of the model's decoder blocks.

    Raises ``ValueError`` when no known layout matches, or several do.
    """
    matches = [
        (path, module)
        for path, module in _outermost_by_path(model).items()
        if isinstance(module, nn.ModuleList) and any(path == s or path.endswith('.' + s) for s in BLOCK_LIST_SUFFIXES)
    ]
    if len(matches) != 1:
        what = 'no' if not matches else f'{len(matches)} ({", ".join(p for p, _ in matches)})'
        raise ValueError(
            f'Found {what} lists of transformer blocks in {type(model).__name__} (known layouts: '
            f'{", ".join(BLOCK_LIST_SUFFIXES)}). Set student_module to the dotted path of the block '
            'to align, e.g. student_module: model.model.layers.3 (see print(model)).',
        )
    return matches[0]


def find_module(model: nn.Module, path: str, key: str = 'student_module') -> nn.Module:
    """Return the outermost module at the clean dotted ``path``."""
    modules = _outermost_by_path(model)
    target = clean_path(path)
    if target not in modules or not target:
        blocks = [p for p in modules if p.rsplit('.', 1)[-1].isdigit()][:6]
        raise ValueError(
            f'{key}={path!r} is not a module of {type(model).__name__}. Use a dotted path from '
            f'print(model), e.g. {", ".join(blocks) or "model.layers.0"}.',
        )
    return modules[target]


def reentrant_block(model: nn.Module, path: str) -> str | None:
    """The clean path of the reentrant activation-checkpoint wrapper strictly enclosing ``path``, if any.

    A module inside it runs without autograd in the forward (the wrapper re-runs it in the backward),
    so its output carries no gradient; the wrapper's own output does.
    """
    target = clean_path(path)
    for name, module in model.named_modules():
        block = clean_path(name)
        reentrant = getattr(getattr(module, 'checkpoint_impl', None), 'name', None) == 'REENTRANT'
        if reentrant and block and target.startswith(f'{block}.'):
            return block
    return None


def strategy_layers(strategy: str, num_teacher_layers: int, num_student_layers: int) -> tuple[int, int]:
    """Return ``(teacher_layer, student_layer)`` block indices for a LET strategy.

    Teacher: Late = last block (taken after the final norm, HF's ``hidden_states[-1]``),
    Middle = block ``L_T // 2 - 1``. Student: Early = block ``max(0, L_S // 4 - 1)``,
    Middle = ``L_S // 2 - 1``, Late = the last block.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f'strategy={strategy!r} is not one of {STRATEGIES}.')
    teacher = {'L': num_teacher_layers - 1, 'M': max(0, num_teacher_layers // 2 - 1)}[strategy[0]]
    student = {
        'E': max(0, num_student_layers // 4 - 1),
        'M': max(0, num_student_layers // 2 - 1),
        'L': num_student_layers - 1,
    }[strategy[2]]
    return teacher, student


def resolve_layer(index: int, num_layers: int, key: str) -> int:
    """Turn a possibly negative block index into ``0..num_layers-1``, or raise naming ``key``."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f'{key}={index!r} must be an integer block index (negative counts from the end).')
    if not -num_layers <= index < num_layers:
        raise ValueError(
            f'{key}={index} is out of range: the model has {num_layers} blocks, so use '
            f'{-num_layers}..{num_layers - 1}.',
        )
    return index % num_layers
