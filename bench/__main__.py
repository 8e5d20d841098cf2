"""`python -m bench`: see bench/README.md. `python -m bench history`: the history's list and
summary on a million verifications (bench/history.py). `python -m bench http`: CPU per request
of the provider's HTTP client, aiohttp against engine/http1.py (bench/http_client.py)."""

import sys

if sys.argv[1:2] == ["history"]:
    from bench.history import main as history

    raise SystemExit(history(sys.argv[2:]))

if sys.argv[1:2] == ["http"]:
    from bench.http_client import main as http

    raise SystemExit(http(sys.argv[2:]))

from bench.cli import main

raise SystemExit(main())
