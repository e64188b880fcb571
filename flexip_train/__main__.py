"""Entry point of `python -m flexip_train` (also under `torchrun -m flexip_train`)."""

import sys

from .cli import main

sys.exit(main())
