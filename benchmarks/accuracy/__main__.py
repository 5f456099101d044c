"""``python -m benchmarks.accuracy`` (see :mod:`benchmarks.accuracy.cli`)."""

import sys

from benchmarks.accuracy.cli import main

sys.exit(main())
