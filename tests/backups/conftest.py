"""Backups run the datastore's sandbox from tests/roles (its helpers are imported from there)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "roles"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
