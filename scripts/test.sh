#!/usr/bin/env bash
# Run the whole test suite: installs what it needs on first run (Python packages,
# and Redis / Chromium / nginx / openssl from Debian's packages when missing and we may install them).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_requirements requirements-dev.txt
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-liberation)
# The deployment test (tests/test_deploy.py) runs compose.yaml's proxy as a local nginx, with a
# certificate made by openssl. Debian's `nginx` is the server alone (nginx-light adds a module
# the proxy does not use). Where an init system runs services, installing it also starts a
# default server on port 80; on these machines policy-rc.d forbids that, and the test starts its own.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
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
