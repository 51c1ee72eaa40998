"""``python -m dtpm_fast [--plot PATH]``: the built-in demo; otherwise the ``dtpm-fast`` command line."""

import sys

from dtpm_fast.cli import main

argv = sys.argv[1:]
if not argv or argv[0] == "--plot" or argv[0].startswith("--plot="):  # demo options without "demo"
    argv = ["demo", *argv]
sys.exit(main(argv))
