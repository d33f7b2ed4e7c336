"""`python -m modelbay.ship.healthcheck`: the image's HEALTHCHECK. Exit status 0 when the server
in this container answers 200 on /v2/health/ready (every model ready), 1 otherwise.

The port is MODELBAY_PORT's (default 8000), as `modelbay serve` reads it; with `--auth
--auth-health` the key in MODELBAY_API_KEY is sent. Only the standard library is imported, so
that a check every 30 s costs a few milliseconds of CPU.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from modelbay.ship.images import HTTP_PORT, READY_PATH

TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout=5s


def check(environ: Mapping[str, str], timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(ready, what was found) for the server on loopback at `environ`'s MODELBAY_PORT."""
    port = environ.get("MODELBAY_PORT") or str(HTTP_PORT)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{READY_PATH}")
    if environ.get("MODELBAY_API_KEY"):
        request.add_header("Authorization", f"Bearer {environ['MODELBAY_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200, f"{READY_PATH}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{READY_PATH}: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{READY_PATH}: {exc}"


def main() -> int:
    ready, found = check(os.environ)
    print(found, file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
