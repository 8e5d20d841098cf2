#!/usr/bin/env bash
# Start the agent: installs what it needs on first run, then serves on $PORT (default 3000).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_requirements requirements.txt
exec .venv/bin/python agent.py "$@"
