#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh app    set up (once) and start the dashboard on the embedded synthetic data
#   ./run.sh test   set up (once) and run the whole test suite (what CI runs)
# Other verbs: setup (only install), cli ARGS (python -m backend ARGS), bench NAME.
# The virtual environment is reused while requirements.txt is unchanged (keyed by its hash).
set -euo pipefail
cd "$(dirname "$0")"

req_hash=$(sha256sum requirements.txt | cut -c1-16)
VENV=${CXR_VENV:-"$HOME/.cache/cxr-relink-audit/venv-$req_hash"}
PY="$VENV/bin/python"

setup_python() {
  if [ -x "$PY" ] && [ -f "$VENV/.complete" ]; then return; fi
  echo "[setup] creating $VENV (first run takes a few minutes: torch is large)" >&2
  rm -rf "$VENV"
  # Environments of older requirements.txt versions are several GB each: keep only this one.
  [ -n "${CXR_VENV:-}" ] || find "$(dirname "$VENV")" -maxdepth 1 -name 'venv-*' ! -path "$VENV" -exec rm -rf {} + 2>/dev/null || true
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$PY" -m pip install --quiet -r requirements.txt
  touch "$VENV/.complete"
}

setup_project() {
  # The project itself, editable (`import backend` from anywhere, the `cxr-relink` command); redone only
  # when pyproject.toml changes (its hash is kept in the environment).
  local want; want="$(sha256sum pyproject.toml | cut -c1-16) $PWD"  # this checkout: another one reinstalls
  if [ -f "$VENV/.project" ] && [ "$(cat "$VENV/.project")" = "$want" ]; then return; fi
  local log; log=$(mktemp)
  if ! "$PY" -m pip install --quiet --no-deps -e . >"$log" 2>&1; then cat "$log" >&2; rm -f "$log"; exit 1; fi
  rm -f "$log"
  echo "$want" > "$VENV/.project"
}

setup_browser() {
  # The browser test drives Debian's chromium through playwright (never `playwright install`).
  if [ -x /usr/bin/chromium ]; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian chromium for the browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "[setup] chromium could not be installed; the browser test will be skipped" >&2
  else
    echo "[setup] /usr/bin/chromium missing and not root; the browser test will be skipped" >&2
  fi
}

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}
cmd=${1:-app}
shift || true
case "$cmd" in
  setup) setup_python; setup_project ;;
  app)
    setup_python; setup_project
    exec "$PY" -m streamlit run app.py "$@" ;;
  test)
    setup_python; setup_project
    setup_browser
    export HF_HUB_OFFLINE=1
    "$PY" -m ruff check . || { echo "[test] ruff found problems (fix them, or ruff check --fix .)" >&2; exit 1; }
    exec "$PY" -m pytest -q "$@" ;;
  cli)
    setup_python; setup_project
    exec "$PY" -m backend "$@" ;;
  bench)
    setup_python; setup_project
    exec "$PY" -m "bench.$1" "${@:2}" ;;
  *) echo "usage: ./run.sh app|test|setup|cli ARGS|bench NAME" >&2; exit 2 ;;
esac
