"""Where the real images for tests and benchmarks are: one setting, ``OLTR_SHARED_DATA``.

Default: ``../shared/data`` next to the repository (its README lists the files). Nothing there
is ever committed; a test that needs it skips cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "OLTR_SHARED_DATA"
REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$OLTR_SHARED_DATA`` if set, else ``../shared/data`` relative to the repository root."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else REPO.parent / "shared" / "data"
