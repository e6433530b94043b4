"""llm-foundry's train entry, unchanged: ``composer scripts/train.py <config>.yaml [key=value ...]``.

The ``let`` algorithm is found through the ``llmfoundry_algorithms`` entry point that
``pip install composer-let`` registers; nothing here is LET-specific.
"""

import sys

from llmfoundry.command_utils import train_from_yaml

if __name__ == '__main__':
    train_from_yaml(sys.argv[1], sys.argv[2:])
