#!/usr/bin/env bash
# The benchmark in one command: sets up .venv (runtime + profilers) like scripts/start.sh,
# then runs every phase. Flags go to `python -m bench` (see bench/README.md or --help).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_env.sh"
ensure_requirements requirements-bench.txt
exec .venv/bin/python -m bench "$@"
