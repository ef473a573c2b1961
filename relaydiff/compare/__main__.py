"""python -m relaydiff.compare (see study.py)."""

import sys

from .study import main

sys.exit(main())
