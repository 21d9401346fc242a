#!/usr/bin/env bash
# `make bench`: all CPU benchmarks against the local services (Kafka, Postgres, moto S3), one
# results set under bench/results/<host>-<device>.{json,md,png}. Arguments go to bench.run:
#   bench/run.sh            full run (~10 min on 2 cores; waits up to 10 min for a quiet box)
#   bench/run.sh --quick    tiny sizes, every code path (~2-3 min)
#   bench/run.sh --help     all options (sections, batch size, output folder, ...)
# Optional, not run here (no services; needs the extra set, data/abid-extra):
#   python -m bench.data_scaling --torchrun   trainer data loading: peak memory and data wait
#                                             at 1,000 vs 10,000 images + a 2-rank torchrun
#                                             (`make bench-data-scaling`; see bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
exec "$PY" -m bench.run "$@"
