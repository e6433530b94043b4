"""composer-let: train a large LM faster with a small pretrained one (LET, as a Composer algorithm)."""

from composer_let.algorithm import LET
from composer_let.alignment import alignment_loss, interpolate_width
from composer_let.layers import find_block_list, strategy_layers
from composer_let.salt import SALT
from composer_let.schedule import schedule_weight

__all__ = [
    'LET',
    'SALT',
    'alignment_loss',
    'find_block_list',
    'interpolate_width',
    'schedule_weight',
    'strategy_layers',
]
__version__ = '0.1.0'
