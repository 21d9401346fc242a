"""``bench/`` is run from the repository root (``python -m bench.run``) and is not part of the
installed distribution, so with ``--import-mode=importlib`` it is importable only once the
root is on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
