"""The image's HEALTHCHECK: exit 0 if this container's agent answers `GET /health` with 200.

Run as ``python deploy/healthcheck.py`` inside the container (the slim image has no
curl), with the container's environment: the agent's ``PORT`` (and ``HOST``, unless it
listens on every address). `/health` needs no credentials. tests/test_deploy.py runs
it the same way against an agent started as the image's CMD starts it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 3.0
EVERY_ADDRESS = {"", "0.0.0.0", "::"}


def health_url() -> str:
    host = os.environ.get("HOST", "")
    if host in EVERY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('PORT', '3000')}/health"


def main() -> int:
    url = health_url()
    try:
        # A fixed http URL to this container's own agent, never one from outside.
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status = int(response.status)
    except (OSError, urllib.error.URLError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
