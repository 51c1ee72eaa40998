"""``python -m dtpm_fast``: the built-in demo; with arguments, the ``dtpm-fast`` command line."""

import sys

from dtpm_fast.cli import main

sys.exit(main(sys.argv[1:] or ["demo"]))
