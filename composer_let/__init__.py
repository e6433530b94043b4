"""composer-let: train a large LM faster with a small pretrained one (LET, as a Composer algorithm).

The exports load on first use, so a light submodule (``composer_let.curves``) imports without Composer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composer_let.algorithm import LET as LET
    from composer_let.alignment import alignment_loss as alignment_loss
    from composer_let.alignment import interpolate_width as interpolate_width
    from composer_let.layers import find_block_list as find_block_list
    from composer_let.layers import strategy_layers as strategy_layers
    from composer_let.salt import SALT as SALT
    from composer_let.schedule import schedule_weight as schedule_weight

_EXPORTS = {
    'LET': 'algorithm',
    'SALT': 'salt',
    'alignment_loss': 'alignment',
    'find_block_list': 'layers',
    'interpolate_width': 'alignment',
    'schedule_weight': 'schedule',
    'strategy_layers': 'layers',
}
__all__ = sorted(_EXPORTS)
__version__ = '0.1.0'


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'composer_let.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
