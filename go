#!/usr/bin/env bash
# brainstore's set-up-and-go script.
#   ./go demo [ARGS]   set up (idempotent) and run the end-to-end demo
#   ./go test [ARGS]   set up (idempotent) and run the test suite (pytest ARGS)
#   ./go setup         only set up the virtual environment (.venv)
#   ./go bench NAME    set up and run benchmarks/NAME.py (without NAME: list the benchmarks)
#   ./go docs [serve]  set up and build the documentation site into site/ (serve: on 127.0.0.1:8001)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${BRAINSTORE_VENV:-.venv}"
PY="${PYTHON:-python3}"
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1

setup() {
  local stamp="$VENV/.brainstore-installed" want
  want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import brainstore" 2>/dev/null; then
    return 0
  fi
  echo "[go] setting up $VENV (torch 2.14.1, ray 2.60, lancedb, open_clip, ...); this takes a few minutes once" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e ".[dev]" >&2
  echo "$want" > "$stamp"
}

ensure_chromium() {
  # The HTML report's browser test drives Debian's chromium through playwright (which downloads no browser
  # here). Install it when missing and apt-get is usable as root; otherwise say why and go on (the test fails
  # with a one-line message telling how to install it).
  local chromium=/usr/bin/chromium log
  [ -x "$chromium" ] && return 0
  if [ "${EUID:-$(id -u)}" -ne 0 ]; then
    echo "[go] $chromium is missing and this is not root: install Debian's chromium (apt-get install -y chromium) for the HTML report's browser test" >&2
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[go] $chromium is missing and there is no apt-get: install chromium at $chromium for the HTML report's browser test" >&2
    return 0
  fi
  echo "[go] installing Debian's chromium (apt-get, once) for the HTML report's browser test" >&2
  log="$(mktemp)"
  # (package lists missing or stale on a fresh machine: update them and try again)
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >"$log" 2>&1 ||
     { apt-get update -q >"$log" 2>&1 &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >"$log" 2>&1; }; then
    [ -x "$chromium" ] || echo "[go] apt-get installed chromium but $chromium is still missing; the browser test will fail" >&2
  else
    echo "[go] could not install chromium with apt-get ($(grep -E '^(E|W):' "$log" | tail -1 || true)); the browser test will fail" >&2
  fi
  rm -f "$log"
  return 0
}

list_benchmarks() {
  local f
  for f in benchmarks/*.py; do
    # name, then the first non-empty line of the module docstring
    printf '  %-10s %s\n' "$(basename "$f" .py)" \
      "$(awk '{ sub(/^[rR]?"""/, ""); sub(/"""$/, "") } NF { print; exit }' "$f")"
  done
}

bench() {
  local name="${1:-}"
  if [ -z "$name" ]; then
    echo "usage: ./go bench NAME [ARGS]; benchmarks:"; list_benchmarks; exit 0
  fi
  if [ ! -f "benchmarks/$name.py" ]; then
    echo "[go] no benchmark named '$name'; benchmarks:" >&2; list_benchmarks >&2; exit 2
  fi
  shift
  setup
  exec "$VENV/bin/python" "benchmarks/$name.py" "$@"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/brainstore" demo "$@" ;;
  test)
    setup
    ensure_chromium
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "[go] pytest collected no tests (exit 5) for: $*; nothing ran" >&2
      rc=0
    fi
    exit "$rc" ;;
  bench) bench "$@" ;;
  docs)
    setup
    export NO_MKDOCS_2_WARNING=1
    if [ "${1:-}" = "serve" ]; then
      exec "$VENV/bin/mkdocs" serve --strict -a 127.0.0.1:8001
    fi
    exec "$VENV/bin/mkdocs" build --strict "$@" ;;
  *) sed -n '2,7p' "$0"; exit 1 ;;
esac
