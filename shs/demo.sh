#!/usr/bin/env bash
# The main job on the embedded mini Aff-Wild2, end to end, on CPU. Everything goes to demo_out/.
#   generate the mini dataset → build the LMDB (faces, masks, log-mel, labels) → report it →
#   a trivial reference prediction for the validation videos → format check → official scores →
#   train TSAV on CPU (small clips, shs/demo_train.args) → predict every frame of the validation videos
#   → format check → official scores of the trained model (demo_out/scores.json) → one video through
#   test_val_aff2.py --video (per-frame CSV, timeline plot, overlay MP4 in demo_out/any_video/).
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
rm -rf "$OUT/train"  # a fresh run each time (log.csv would otherwise grow)
$PY train.py @shs/demo_train.args --db "$OUT/db" --output-dir "$OUT/train" --layout $EDITION
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --db "$OUT/db" --split val --edition $EDITION \
  --annotations "$ANN" --out "$OUT/test_val" --workers 1
$PY evaluate.py --check "$OUT/test_val/submission" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
$PY evaluate.py --pred "$OUT/test_val/submission" --annotations "$ANN" --edition $EDITION --json "$OUT/scores.json"
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --video "$DATA/videos/batch1/3-30-640x360.mp4" \
  --out "$OUT/any_video" --overlay
set +x
echo "demo finished: database $OUT/db, report $OUT/db_report.json, baseline $OUT/baseline_scores.json," \
  "trained model $OUT/train/best.pth, its scores $OUT/scores.json"
ls -l "$OUT/any_video"
