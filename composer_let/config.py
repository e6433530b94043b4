"""Checks of the YAML keys under ``algorithms.<name>``: every error names the key and says what to write."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any


def valid_keys(init: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword arguments of an algorithm's ``__init__``: the keys its YAML block accepts."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n, p in inspect.signature(init).parameters.items() if n != 'self' and p.kind in kinds)


def check_known(section: str, init: Callable[..., Any], given: dict[str, Any]) -> None:
    """Refuse keys that ``init`` does not take (``given`` is its ``**unknown``)."""
    if given:
        raise ValueError(
            f'Unknown key(s) under {section}: {", ".join(sorted(given))}. Valid keys: {", ".join(valid_keys(init))}.',
        )


def choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f'{section}.{key}={value!r} is not one of {", ".join(choices)}.')
    return value


def number(
    section: str,
    key: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    hint: str = '',
) -> float:
    """A finite real in ``[low, high]`` (``(low, high]`` with ``low_open``); booleans are refused."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f'{"(" if low_open else "["}{low}, {high}{"]" if math.isfinite(high) else ")"}'
        raise ValueError(f'{section}.{key}={value!r} must be a number in {bound}.{" " + hint if hint else ""}')
    return float(value)


def integer(section: str, key: str, value: Any, low: int | None = None, optional: bool = False) -> int | None:
    """An int (``None`` allowed with ``optional``), at least ``low`` if given; booleans are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        what = 'an integer' if low is None else f'an integer >= {low}'
        raise ValueError(f'{section}.{key}={value!r} must be {what}.')
    return value


def teacher_id(section: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{section}.teacher is required: a Hugging Face hub id or a local model folder.')
    return value


def strength(
    section: str, kind: Any, lambda0: Any, grad_ratio: Any, default_lambda0: float
) -> tuple[str, float | None, float | None]:
    """``(strength, λ0, grad_ratio)``: ``absolute`` takes ``lambda0`` (default ``default_lambda0``), ``relative``
    takes ``grad_ratio`` (required, > 0); the other key is refused."""
    kind = choice(section, 'strength', kind, ('absolute', 'relative'))
    if kind == 'absolute':
        if grad_ratio is not None:
            raise ValueError(
                f'{section}.grad_ratio is the target of strength: relative, but strength is absolute. Set '
                f'strength: relative to use grad_ratio, or drop grad_ratio and set lambda0.',
            )
        lambda0 = default_lambda0 if lambda0 is None else lambda0
        return kind, number(section, 'lambda0', lambda0, 0.0, hint='(the paper uses 0.1)'), None
    if lambda0 is not None:
        raise ValueError(
            f'{section}.lambda0 is the weight of strength: absolute, but strength is relative. Set the '
            f'target with {section}.grad_ratio (e.g. 0.1) and drop lambda0.',
        )
    if grad_ratio is None:
        raise ValueError(f'{section}.strength=relative needs {section}.grad_ratio, e.g. grad_ratio: 0.1.')
    hint = "(a share of the rest of the loss's gradient, e.g. 0.1)"
    return kind, None, number(section, 'grad_ratio', grad_ratio, 0.0, low_open=True, hint=hint)


def stop(
    section: str, value: Any, stop_max: Any, stop_horizon: Any, default_max: str, default_horizon: float
) -> tuple[bool, Any, float]:
    """``(auto, S_stop as a Composer Time, horizon)``. With ``stop: auto`` the schedule runs to ``stop_max``;
    ``stop_max`` and ``stop_horizon`` without it are refused."""
    from composer_let.timing import parse_stop

    auto = isinstance(value, str) and value.strip() == 'auto'
    if auto:
        parsed = parse_stop(default_max if stop_max is None else stop_max, key=f'{section}.stop_max')
    else:
        parsed = parse_stop(value, key=f'{section}.stop', extra='or auto')
    for key in (k for k, v in {'stop_max': stop_max, 'stop_horizon': stop_horizon}.items() if v is not None):
        if not auto:
            raise ValueError(f'{section}.{key} applies only with stop: auto; set stop: auto or drop {key}.')
    horizon = number(
        section,
        'stop_horizon',
        default_horizon if stop_horizon is None else stop_horizon,
        0.0,
        hint='(in multiples of the batches trained so far; 0: stop once the student has passed its teacher)',
    )
    return auto, parsed, horizon
