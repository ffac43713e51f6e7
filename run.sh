#!/usr/bin/env bash
# slimnets: set-up and the main jobs.
#   ./run.sh            the main job on the built-in synthetic dataset
#   ./run.sh test       the test suite
# The first call creates .venv/ (unless a virtual environment is already active)
# and installs requirements.txt; later calls reuse it.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[run.sh] creating .venv and installing requirements (first run: about a minute)"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  mkdir -p .venv && touch "$stamp"
fi

job="${1:-main}"
[ $# -gt 0 ] && shift
case "$job" in
  test)
    python -c "import pytest" 2>/dev/null || python -m pip install -q pytest
    exec python -m pytest -q test_all.py "$@"
    ;;
  main)
    exec python models.py "$@"
    ;;
  *)
    echo "usage: ./run.sh [test]" >&2
    exit 2
    ;;
esac
