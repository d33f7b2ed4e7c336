"""`python -m modelbay.ship.prebuild REQUIREMENTS...`: build, while the image is built, the own
environment of each model folder that has a requirements.txt (runtime/environments.py), so that
the container starts with nothing to resolve, create or download.

The environment is keyed by the requirements and the server's installed packages, the same in
the image at build and at run time, so `modelbay serve` finds and reuses it. Exit status 1, with
the reason, when one cannot be built (`docker build` then stops at this step).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from modelbay.errors import ModelLoadError


def main(argv: Sequence[str] | None = None) -> int:
    from modelbay.runtime.environments import ensure_environment

    for raw in sys.argv[1:] if argv is None else argv:
        try:
            python = ensure_environment(Path(raw))
        except ModelLoadError as exc:
            print(f"modelbay: {exc.message}", file=sys.stderr)
            return 1
        print(f"modelbay: the environment of {raw}: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
