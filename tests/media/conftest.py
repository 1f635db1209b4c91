"""Make the repository root importable when pytest runs as ``.venv/bin/pytest`` without an editable install.

(``python -m pytest`` puts the working directory on ``sys.path``; the ``pytest`` script does not.) Remove this
once ``pyproject.toml`` sets ``pythonpath = ["."]`` or the project is installed with ``pip install -e .``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
