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
