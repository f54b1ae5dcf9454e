"""``python -m pipeline.cli``: the same as ``mpq``."""
import sys

from . import main

sys.exit(main())
