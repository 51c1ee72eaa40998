"""python -m dtpm_fast.evaluation: the evaluate command without the dtpm-fast launcher."""

import sys

from dtpm_fast.evaluation.cli import main

sys.exit(main())
