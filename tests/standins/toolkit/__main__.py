"""`python -m tests.standins.toolkit OUT_DIR GNUPG_HOME`: build the stand-in repository."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.standins.toolkit import build_repo


def main(argv: list[str]) -> int:
    """Build (or keep) the repository and say where it is."""
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    started = time.monotonic()
    info = build_repo(Path(argv[0]), Path(argv[1]))
    print(f"stand-in toolkit repository: {info.deb_dir} ({', '.join(info.versions)})")
    print(f"key fingerprint: {info.fingerprint} ({time.monotonic() - started:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
