#!/usr/bin/env bash
# The main job on the embedded mini Aff-Wild2, end to end, on CPU, for one system:
#   bash shs/demo.sh [SYSTEM]     SYSTEM = tsav (default) or mtmt: the train.py flags of shs/demo_SYSTEM.args
# Shared by the systems, in demo_out/ (DEMO=... to move it), made once: the mini dataset → its LMDB (faces,
# landmarks, log-mel, labels; a rerun resumes it) → its report → a trivial reference prediction for the
# validation videos, format-checked and scored (demo_out/baseline_scores.json).
# Per system, in demo_out/SYSTEM/: train on CPU (small clips) → predict every frame of the validation videos →
# format check → official scores of the trained model (scores.json, scores.txt, printed) → one video through
# test_val_aff2.py --video (per-frame CSV, timeline plot, overlay MP4 in any_video/).
source "$(dirname "$0")/env.sh"
SYSTEM=${1:-tsav}
known=$(cd shs && for f in demo_*.args; do f=${f#demo_}; echo -n "${f%.args} "; done)
if [[ ! -f shs/demo_$SYSTEM.args ]]; then
  echo "shs/demo.sh: unknown system '$SYSTEM' (known: ${known% })" >&2
  exit 2
fi
DEMO=${DEMO:-demo_out}
OUT=$DEMO/$SYSTEM
DATA=$DEMO/mini_affwild2
EDITION=abaw2021  # the layouts of the demo_*.args files are ABAW 2021's (abaw2021, mtmt)
ANN=$DATA/annotations/$EDITION
start=$SECONDS
set -x
[[ -f $DATA/meta.json ]] || $PY -m tools.synthetic --out "$DATA" --seed 0
$PY create_database.py --videos "$DATA/videos" --annotations "$ANN" --test-lists "$DATA"/test_sets/*.txt \
  --out "$DEMO/db" --workers 2
$PY create_database.py --report "$DEMO/db" --json "$DEMO/db_report.json"
if [[ ! -f $DEMO/baseline_scores.json ]]; then
  $PY -m tools.baseline --annotations "$ANN" --videos "$DATA/videos" --edition $EDITION --out "$DEMO/baseline_pred"
  $PY evaluate.py --check "$DEMO/baseline_pred" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
  $PY evaluate.py --pred "$DEMO/baseline_pred" --annotations "$ANN" --edition $EDITION \
    --json "$DEMO/baseline_scores.json"
fi
rm -rf "$OUT/train"  # a fresh run each time (log.csv would otherwise grow)
$PY train.py "@shs/demo_$SYSTEM.args" --db "$DEMO/db" --output-dir "$OUT/train" --edition $EDITION
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --db "$DEMO/db" --split val --edition $EDITION \
  --annotations "$ANN" --out "$OUT/test_val" --workers 1
$PY evaluate.py --check "$OUT/test_val/submission" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
$PY evaluate.py --pred "$OUT/test_val/submission" --annotations "$ANN" --edition $EDITION \
  --json "$OUT/scores.json" | tee "$OUT/scores.txt"
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --video "$DATA/videos/batch1/3-30-640x360.mp4" \
  --out "$OUT/any_video" --overlay
set +x
ls -l "$OUT/any_video"
echo "demo of $SYSTEM finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s:" \
  "database $DEMO/db, report $DEMO/db_report.json, baseline $DEMO/baseline_scores.json," \
  "trained model $OUT/train/best.pth, its scores $OUT/scores.json on the validation videos:"
cat "$OUT/scores.txt"
