"""`python -m modelbay.ship.prebuild REQUIREMENTS...`: build, while the image is built, the own
environment of each model folder that has a requirements.txt (runtime/environments.py), so that
the container starts with nothing to resolve, create or download.

An environment is keyed by the requirements and by the server's interpreter and installed
packages, the interpreter as `sys.executable` spells it. The server runs as the `modelbay`
console script, whose interpreter is the one its first line names (`/usr/local/bin/python3.11`,
say), which need not be how `python` is spelled; so this step first runs itself again under the
script's interpreter, and `modelbay serve` finds the environment it built. Exit status 1, with
the reason, when one cannot be built (`docker build` then stops at this step).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from modelbay.errors import ModelLoadError

# pip's launcher: `#!/path/python`, or for a long path a sh trampoline `'''exec' "/path/python" ...`
_SHEBANG = re.compile(r"^#!(?P<direct>\S+)|^'''exec' \"?(?P<trampoline>[^\"\s]+)", re.MULTILINE)


def serve_interpreter() -> str | None:
    """The interpreter of the `modelbay` console script beside this one's (else on PATH), or
    None when there is no such script or its first lines name none."""
    script = Path(sys.executable).parent / "modelbay"
    found = str(script) if script.is_file() else shutil.which("modelbay")
    if found is None:
        return None
    try:
        with open(found, "rb") as file:
            head = file.read(512).decode(errors="replace")
    except OSError:
        return None
    for match in _SHEBANG.finditer(head):
        path = match["trampoline"] or match["direct"]
        if path and not path.endswith("/sh") and Path(path).exists():
            return path
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from modelbay.runtime.environments import ensure_environment

    paths = list(sys.argv[1:] if argv is None else argv)
    interpreter = serve_interpreter()
    if interpreter is not None and interpreter != sys.executable:
        os.execv(interpreter, [interpreter, "-m", "modelbay.ship.prebuild", *paths])
    for raw in paths:
        try:
            python = ensure_environment(Path(raw))
        except ModelLoadError as exc:
            print(f"modelbay: {exc.message}", file=sys.stderr)
            return 1
        print(f"modelbay: the environment of {raw}: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
