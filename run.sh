#!/usr/bin/env bash
# slimnets: set-up and the main jobs.
#   ./run.sh            the main job: Joslim training of slim_resnet20 on the built-in synthetic
#                       dataset, then its evaluation (under 10 minutes on a 2-core CPU)
#   ./run.sh test       the test suite
#   ./run.sh autoslim   the AutoSlim pipeline: supernet, search, retraining, split, test
#   ./run.sh compare    Joslim vs Slim vs AutoSlim vs uniform widths, 3 seeds, on Fashion-MNIST
#                       when it is installed (apt-get install dataset-fashion-mnist), else on the
#                       synthetic set (python bench.py quality; resumable)
# Extra arguments go to the job's first command (e.g. ./run.sh --epochs 2).
# The first call creates .venv/ (unless a virtual environment is already active)
# and installs requirements.txt; later calls reuse it.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[run.sh] creating .venv and installing requirements (first run: about 3 minutes and 5.5 GB: the registry's torch carries CUDA libraries)"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
stamp="$VIRTUAL_ENV/.slimnets-requirements"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  touch "$stamp"
fi

job=main
case "${1:-}" in
  ""|-*) ;;                 # no job named: the main job, flags and all
  *) job="$1"; shift ;;
esac
case "$job" in
  test)
    # two pytest-xdist workers, each starting on half of the tests in file order; one that runs out
    # takes half of what the other has not started (worksteal: the heavy tests do not pile up at
    # the end on one worker). A worker makes a module fixture, such as a trained run, once, when its
    # first test needs it.
    python -c "import pytest, sys, xdist
sys.exit(tuple(int(p) for p in xdist.__version__.split('.')[:2]) < (3, 2))" 2>/dev/null ||
      python -m pip install -q pytest "pytest-xdist>=3.2"  # worksteal came with 3.2
    exec python -m pytest -q -n 2 --dist worksteal test_all.py "$@"
    ;;
  main)
    python train.py --name demo "$@"
    python evaluate.py --name demo
    echo "[run.sh] results: results/demo_eval_pareto.txt, results/demo_eval_pareto.json," \
         "results/demo_pareto.svg; checkpoint and log: runs/demo/"
    ;;
  autoslim)
    # supernet with random widths down to 2/12 of every group (mmrazor's AutoSlim range) ->
    # greedy search at three targets in MACs -> joint retraining of the three configurations ->
    # split into standalone models -> test each one (measured: 427 s on a quiet 2-core CPU,
    # 2026-11-30)
    python train.py --name autoslim --method random --lower_channel 0.1667 --epochs 3 \
        --workers 0 "$@"
    python search.py --name autoslim --cost macs --target_ratios 0.75 0.5 0.3 \
        --search_images 250 --steps 8
    python train.py --name autoslim_fixed --method fixed --epochs 2 --workers 0 \
        --channel_config runs/autoslim/search/macs_*.json
    python evaluate.py --name autoslim_fixed --export runs/autoslim_fixed/subnets --workers 0
    python evaluate.py --subnet runs/autoslim_fixed/subnets/*.pt --workers 0   # ends with a table
    ;;
  compare)
    exec python bench.py quality "$@"
    ;;
  *)
    echo "usage: ./run.sh [test|autoslim|compare] [args...]" >&2
    exit 2
    ;;
esac
