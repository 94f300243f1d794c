#!/usr/bin/env bash
# The main job on the embedded mini Aff-Wild2, end to end, on CPU. Everything goes to demo_out/.
#   generate the mini dataset → build the LMDB (faces, masks, log-mel, labels) → report it →
#   a trivial reference prediction for the validation videos → format check → official scores.
source "$(dirname "$0")/env.sh"
OUT=${OUT:-demo_out}
DATA=$OUT/mini_affwild2
EDITION=${EDITION:-abaw2021}
ANN=$DATA/annotations/$EDITION
set -x
[[ -f $DATA/meta.json ]] || $PY -m data.synthetic --out "$DATA" --seed 0
$PY create_database.py --videos "$DATA/videos" --annotations "$ANN" --test-lists "$DATA"/test_sets/*.txt \
  --out "$OUT/db" --workers 2
$PY create_database.py --report "$OUT/db" --json "$OUT/db_report.json"
$PY -m utils.baseline --annotations "$ANN" --videos "$DATA/videos" --edition $EDITION --out "$OUT/baseline_pred"
$PY evaluate.py --check "$OUT/baseline_pred" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
$PY evaluate.py --pred "$OUT/baseline_pred" --annotations "$ANN" --edition $EDITION --json "$OUT/baseline_scores.json"
set +x
echo "demo finished: database $OUT/db, report $OUT/db_report.json, scores $OUT/baseline_scores.json"
