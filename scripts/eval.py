"""llm-foundry's eval entry, unchanged: ``python scripts/eval.py yamls/eval/icl.yaml [key=value ...]``."""

import sys

from llmfoundry.command_utils import eval_from_yaml

if __name__ == '__main__':
    eval_from_yaml(sys.argv[1], sys.argv[2:])
