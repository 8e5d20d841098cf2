# Shared set-up for scripts/start.sh and scripts/test.sh: a virtualenv in .venv with
# the project's requirements, installed again only when a requirements file changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
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
