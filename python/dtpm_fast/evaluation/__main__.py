"""``python -m dtpm_fast.evaluation ARGS``: the same as ``dtpm-fast evaluate ARGS``."""

import sys

from dtpm_fast.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
