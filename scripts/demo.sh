#!/usr/bin/env bash
# The main job end to end on real ABID bins (`make demo`):
#   services up → migrations → sample images into S3 (real bucket layout) → bin events on a
#   fresh topic, 10% of them with a wrong manifest (truth in a sidecar file) → a model (newest
#   artifact, or trained now on the sample) → the worker until the topic is drained → a summary
#   of verdicts, accuracy/RMSE vs EXPECTED_QUANTITY, throughput, and the audit quality (false
#   alarms, recall of wrong manifests, precision, AUROC, review budgets, a PR plot).
#
# Data: BINAUDIT_SAMPLE_DIR (an ABID-format folder), else ../shared/data/abid-sample, else the
# same 350 ids are fetched from the public ABID bucket (needs internet) into data/abid-sample.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

SAMPLE="${BINAUDIT_SAMPLE_DIR:-../shared/data/abid-sample}"
if [ ! -d "$SAMPLE/metadata" ]; then
    SAMPLE=data/abid-sample
    say "no local sample: fetching the 350 sample ids from the public ABID bucket into $SAMPLE"
    "$BIN/binaudit" data fetch --ids "$(paste -sd, scripts/abid-sample-ids.txt)" --out "$SAMPLE"
    # The trainer and publisher read labels.csv (image,expected_quantity) for order and labels.
    "$BIN/python" - "$SAMPLE" <<'PY'
import csv, sys, pathlib
root = pathlib.Path(sys.argv[1])
rows = [r for r in csv.DictReader((root / "manifest.csv").open()) if r["status"] != "missing"]
with (root / "labels.csv").open("w", newline="") as fh:
    w = csv.writer(fh); w.writerow(["image", "metadata", "expected_quantity"])
    for r in rows:
        w.writerow([f"images/{r['id']}.jpg", f"metadata/{r['id']}.json", r["expected_quantity"]])
PY
fi

say "services (Kafka KRaft, PostgreSQL 15, S3) and migrations"
"$BIN/binaudit" services up
"$BIN/binaudit" db upgrade
# The product's S3 defaults are AWS's (credential chain, no endpoint): point it at local moto.
eval "$("$BIN/binaudit" services env)"

# The model: BINAUDIT_INFERENCE__MODEL, else the counter shipped in models/counter (trained
# on the extra ABID set, never on these sample bins), else the newest artifact trained here,
# else a quickstart fine-tune on the sample itself.
MODEL="${BINAUDIT_INFERENCE__MODEL:-}"
if [ -z "$MODEL" ] && [ -f models/counter/model.json ]; then
    MODEL=models/counter
fi
if [ -z "$MODEL" ]; then
    MODEL=$("$BIN/python" -c 'from pathlib import Path; from core.model.artifact import find_latest_artifact
p = find_latest_artifact(Path("artifacts/models")); print(p or "")')
fi
if [ -z "$MODEL" ]; then
    say "no trained model yet: fine-tuning pretrained EfficientNet-Lite0 on the sample (CPU, minutes)"
    "$BIN/binaudit" train quickstart --source-dir "$SAMPLE" --out artifacts/models
    MODEL=artifacts/models/current
fi
say "model: $MODEL"
"$BIN/binaudit" model register "$MODEL"

RUN="demo-$(date -u +%Y%m%dT%H%M%SZ)"
OUT="artifacts/demo/$RUN"
mkdir -p "$OUT"
say "publishing the sample as bin events to topic $RUN (10% of manifests made wrong on purpose)"
# The truth (event id -> true count, perturbation) goes to a sidecar file, never into events.
# Captured on 2026-01-01 at this run's time of day (before 23:00, so all 350 one second apart
# stay on that day): event ids come from bin id + capture time, and a second demo on the same
# database must be new photographs, not 350 `duplicate_event_id` dead letters.
CAPTURED="2026-01-01T$(printf %02d $((10#$(date -u +%H) % 23))):$(date -u +%M:%S)"
"$BIN/binaudit" publish --source "$SAMPLE" --topic "$RUN" --with-metadata \
    --wrong-manifest-rate 0.1 --truth "$OUT/truth.csv" --start-time "$CAPTURED"

say "worker: consuming $RUN until drained"
"$BIN/binaudit" worker --topic "$RUN" --group "$RUN" --model "$MODEL" --exit-when-idle 5 \
    --metrics-port 0

say "summary and audit quality against the truth file"
"$BIN/binaudit" summary --topic "$RUN" --truth "$OUT/truth.csv" --report "$OUT/quality.json"
echo
if [ "$MODEL" = models/counter ]; then
    echo "The shipped counter never saw these 350 sample bins: the numbers above are held out."
else
    echo "Note: a model trained by this demo saw 80% of these same bins in training, so the"
    echo "accuracy above is not a held-out score. Held-out numbers: trainer/RESULTS.md."
fi

say "auditor console: a demo reviewer account"
DEMO_USER=demo-reviewer
DEMO_PASSWORD=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
BINAUDIT_CONSOLE_PASSWORD="$DEMO_PASSWORD" "$BIN/binaudit" console user add "$DEMO_USER" \
    --role reviewer
CONSOLE_URL=$("$BIN/python" -c 'from core.settings import Settings
c = Settings().console; print(f"http://{c.host}:{c.port}/")')
echo
echo "Review the mismatches in a browser:"
echo "  start it:  $BIN/binaudit console"
echo "  open:      $CONSOLE_URL"
echo "  sign in:   $DEMO_USER / $DEMO_PASSWORD   (reviewer)"
echo "  overview:  ${CONSOLE_URL}overview — the rate charts are by capture day: the demo's bins"
echo "             are captured on 2026-01-01 (at $CAPTURED, this run's time of day: every run"
echo "             is new photographs), and the overview shows the 14 days ending there; dead"
echo "             letters and reviews are by the day they happen (today)."
