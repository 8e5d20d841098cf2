#!/usr/bin/env bash
# Run the whole test suite: installs what it needs on first run (Python packages,
# and Redis / Chromium from Debian's packages when missing and we may install them).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_requirements requirements-dev.txt
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-liberation)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} from Debian's packages" >&2
    # Only what is needed, and nothing already installed is upgraded.
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends --no-upgrade "${missing[@]}" >&2
  else
    echo "warning: ${missing[*]} not installed; tests that need them will fail under CI=true" >&2
  fi
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy .
exec .venv/bin/python -m pytest "$@"
