"""Unit layer: pure torch, CPU, seconds (the marker is registered in tests/pytest.ini)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# flexip_model is a top-level package at the repo root (as `python -m flexip_model` sees it), and
# the importlib import mode does not put test folders on sys.path, so shared helpers come via `tests.unit`
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
