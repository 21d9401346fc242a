#!/usr/bin/env bash
# CUDA benchmarks (model, nvJPEG decode, in-process pipeline, torch.compile, CUDA graphs) in
# under 8 minutes on one GPU. Needs no services and no network; installs nothing.
# Results go to $OUT when set (else bench/results): <host>-cuda.{json,md,png} and logs/.
#   bench/gpu.sh                        the full GPU run (exit 2 if CUDA is absent)
#   bench/gpu.sh --device cpu --quick   smoke test of this script's code paths on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The script keeps its own budget (--budget-s, default 480 s); this is only a backstop.
exec timeout --kill-after=10 540 "$PY" -m bench.gpu "$@"
