"""Deploy tests: most need bash alone (tier `fast`); those marked `sandbox` run rsync, curl,
openssl, git, npm or shellcheck; test_deploy_localcloud deploys to the session's local
stack (`localcloud`, root)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

