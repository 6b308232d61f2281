"""Entry point of `python -m e2vpt`."""

import sys

from .cli import main

sys.exit(main())
