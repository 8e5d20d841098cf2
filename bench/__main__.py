"""`python -m bench`: see bench/README.md. `python -m bench history`: the history's list and
summary on a million verifications (bench/history.py)."""

import sys

if sys.argv[1:2] == ["history"]:
    from bench.history import main as history

    raise SystemExit(history(sys.argv[2:]))

from bench.cli import main

raise SystemExit(main())
