"""Entry point of `python -m flexip_eval` (also under `torchrun -m flexip_eval`)."""

import sys

from .cli import main

sys.exit(main())
