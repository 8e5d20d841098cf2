# Shared set-up for scripts/start.sh and scripts/test.sh: a virtualenv in .venv with
# the project's requirements, installed again only when a requirements file changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
# Said at once, not as an ImportError halfway through: which Python the project needs.
require_python() {
  local python="$1" version
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || {
    echo "error: $python cannot be run; install Python 3.11 or newer, or set PYTHON=/path/to/python3" >&2
    exit 1
  }
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: this project needs Python 3.11 or newer; $python is $version (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
}
if [ -x .venv/bin/python ]; then
  require_python .venv/bin/python
else
  require_python "$PYTHON"
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
ensure_requirements() {
  local file="$1" stamp=".venv/.installed-$(basename "$1")"
  local want
  want="$(cat "$file" requirements.txt | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing $file" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$file" >&2
    echo "$want" > "$stamp"
  fi
}
