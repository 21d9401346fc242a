#!/bin/bash
# Whole-network runs of Lite0/1/2 on a borrowed GPU machine that receives at most 64 MiB a call
# (the device tool's `run`), in two calls made back to back while the machine is warm:
#
#   here:   .venv/bin/python -m trainer.shards weights --out .gpu/a/weights \
#             efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
#           .venv/bin/python -m trainer.shards pack --pixels artifacts/cache/pixels224 \
#             --out .gpu/a --rows 0:2000            (then 2000:4000 ... into .gpu/b)
#           pip download (Python 3.12 wheels of pydantic, pydantic-core, pydantic-settings,
#             python-dotenv, annotated-types, typing-inspection, typing-extensions,
#             efficientnet-lite-pytorch) into .gpu/a/whl
#   call 1: bash scripts/gpu-whole.sh stash          (carry .gpu/a)
#   call 2: bash scripts/gpu-whole.sh run DEADLINE_S  (carry .gpu/b)
#   here:   binaudit train whole-import --run FILE --pixels artifacts/cache/pixels224 ...
#
# `.gpu/` and `.gpustash/` are ignored (.git/info/exclude). Results land in $OUT: one NAME.pt
# per finished run, summary.json and log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${STASH:-.gpustash}
PLAN=${PLAN:-lite0:0,lite2:0,lite1:0,lite0:1}
EPOCHS=${EPOCHS:-25}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
case ${1:-} in
  stash)
    rm -rf "$STASH" && mkdir -p "$STASH"
    mv .gpu/a "$STASH/a"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$STASH/site" "$STASH"/a/whl/*.whl
    du -sh "$STASH"/* ;;
  run)
    [[ -d $STASH/a && -d $STASH/site ]] || { echo "no $STASH: the machine was not kept warm" >&2; exit 3; }
    export PYTHONPATH=$STASH/site:$PWD PYTHONUNBUFFERED=1
    OUT=${OUT:?} PIX=${PIX:-/tmp/pix224}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -m trainer.shards unpack --shards "$STASH/a" .gpu/b --out "$PIX" --workers 16
    "$PY" -m trainer.whole_run --pixels "$PIX" --out "$OUT" --run-dir /tmp/whole-runs \
      --weights-dir "$STASH/a/weights" --plan "$PLAN" --epochs "$EPOCHS" --device "$DEVICE" \
      --amp --deadline-s "${2:?deadline in seconds}" 2>&1 | tee "$OUT/log.txt" ;;
  *) echo "usage: $0 stash | run DEADLINE_S" >&2; exit 2 ;;
esac
