"""Entry point of `python -m flexip_model`."""

import sys

from .cli import main

sys.exit(main())
