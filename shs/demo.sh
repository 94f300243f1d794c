#!/usr/bin/env bash
# The main job on the embedded mini Aff-Wild2, end to end, on CPU, for one system:
#   bash shs/demo.sh [SYSTEM]     SYSTEM = tsav (default), mtmt, emma, cotex, dtm or cnu: the train.py flags of
#                                 shs/demo_SYSTEM.args
# Shared by the systems, in demo_out/ (DEMO=... to move it), made once: the mini dataset → its LMDB (faces,
# landmarks, log-mel, labels; a rerun resumes it) → its report → a trivial reference prediction for the
# validation videos, format-checked and scored (demo_out/baseline_scores.json). The systems of ABAW 2020/2021
# (tsav, mtmt) use the mini dataset's ABAW 2021 per-task files and demo_out/db; EMMA (ABAW4) uses its s-Aff-Wild2
# MTL files (every 3rd face frame labelled with all tasks) and demo_out/db_mtl, and is scored by the abaw4 edition.
# Per system, in demo_out/SYSTEM/: train on CPU (small clips) → predict every frame of the validation videos →
# format check → official scores of the trained model (scores.json, scores.txt, printed) → one video through
# test_val_aff2.py --video (per-frame CSV, timeline plot, overlay MP4 in any_video/).
# Masked CoTEX (cotex, ABAW4 LSD) learns from images, not the database: the mini dataset's LSD set (made once,
# python -m tools.synthetic --lsd: synthetic-style training faces, real validation crops) → train.py --lsd →
# test_val_aff2.py --lsd on the real images (predictions.txt, scores.json, confusion.png) → format check and
# scores by evaluate.py --edition lsd.
# DTM-style pseudo-labelling (dtm, ABAW5 EXPR) uses the ABAW3/5 files (8 classes, demo_out/db_abaw3) with 5 % of
# the EXPR labels: trained once supervised only (demo_out/dtm/supervised_scores.json), then with pseudo-labels on
# the rest and on the generator's pool of unlabelled faces (python -m tools.synthetic --unlabelled-faces 1000).
# CNU_ADL (cnu, ABAW 2020 EXPR + VA) uses the ABAW 2020 files (demo_out/db_abaw2020): the same network trained
# twice, on one frame (--clip-len 1, "image only", demo_out/cnu/image_only_scores.json) and on blocks of 16
# selected frames (scores.json); its predictions hold EXPR and interpolate VA over faceless frames (--faceless hold).
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
case $SYSTEM in
  emma) EDITION=abaw4; ANN=$DATA/annotations/mtl; DB=$DEMO/db_mtl; BASE=$DEMO/baseline_abaw4 ;;
  dtm) EDITION=abaw5; ANN=$DATA/annotations/abaw3; DB=$DEMO/db_abaw3; BASE=$DEMO/baseline_abaw5 ;;
  cnu) EDITION=abaw2020; ANN=$DATA/annotations/abaw2020; DB=$DEMO/db_abaw2020; BASE=$DEMO/baseline_abaw2020 ;;
  *) EDITION=abaw2021; ANN=$DATA/annotations/abaw2021; DB=$DEMO/db; BASE=$DEMO/baseline ;;  # layouts abaw2021, mtmt
esac
SUB=""  # the submission inside its folder: per-video files are the folder itself, abaw4 writes one MTL file
[[ $EDITION == abaw4 ]] && SUB=/MTL_predictions.txt
[[ $EDITION == abaw5 ]] && SUB=/EXPR_predictions.txt  # 2023+: a file per task; DTM predicts EXPR only
start=$SECONDS
set -x
[[ -f $DATA/meta.json ]] || $PY -m tools.synthetic --out "$DATA" --seed 0
if [[ $SYSTEM == cotex ]]; then
  LSD=$DATA/lsd
  $PY -m tools.synthetic --out "$DATA" --seed 0 --lsd  # adds $LSD once; a rerun finds it complete
  rm -rf "$OUT/train"
  $PY train.py "@shs/demo_$SYSTEM.args" --lsd "$LSD" --output-dir "$OUT/train"
  $PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --lsd "$LSD" --split val --out "$OUT/test_val" --workers 1
  $PY evaluate.py --check "$OUT/test_val/predictions.txt" --annotations "$LSD/val" --edition lsd
  $PY evaluate.py --pred "$OUT/test_val/predictions.txt" --annotations "$LSD/val" --edition lsd \
    --json "$OUT/scores.json" | tee "$OUT/scores.txt"
  set +x
  echo "demo of $SYSTEM finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s:" \
    "LSD set $LSD, trained model $OUT/train/best.pth, its predictions and confusion matrix in $OUT/test_val," \
    "its scores $OUT/scores.json on the real validation images:"
  cat "$OUT/scores.txt"
  exit 0
fi
$PY create_database.py --videos "$DATA/videos" --annotations "$ANN" --test-lists "$DATA"/test_sets/*.txt \
  --out "$DB" --workers 2
$PY create_database.py --report "$DB" --json "${DB}_report.json"
if [[ ! -f ${BASE}_scores.json ]]; then
  $PY -m tools.baseline --annotations "$ANN" --videos "$DATA/videos" --edition $EDITION --out "${BASE}_pred"
  $PY evaluate.py --check "${BASE}_pred$SUB" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
  $PY evaluate.py --pred "${BASE}_pred$SUB" --annotations "$ANN" --edition $EDITION --json "${BASE}_scores.json"
fi
rm -rf "$OUT/train" "$OUT/supervised" "$OUT/image_only"  # a fresh run each time (log.csv would otherwise grow)
TRAIN_EXTRA=()
TEST_EXTRA=()
if [[ $SYSTEM == dtm ]]; then  # the same flags without pseudo-labels first, then with the unlabelled pool too
  POOL=$DATA/unlabelled_faces
  $PY -m tools.synthetic --out "$DATA" --seed 0 --unlabelled-faces 1000  # adds $POOL once
  $PY train.py "@shs/demo_$SYSTEM.args" --db "$DB" --output-dir "$OUT/supervised/train" --edition $EDITION --ssl none
  $PY test_val_aff2.py --checkpoint "$OUT/supervised/train/best.pth" --db "$DB" --split val --edition $EDITION \
    --annotations "$ANN" --out "$OUT/supervised/test_val" --workers 1
  $PY evaluate.py --pred "$OUT/supervised/test_val/submission$SUB" --annotations "$ANN" --edition $EDITION \
    --json "$OUT/supervised_scores.json"
  TRAIN_EXTRA=(--unlabelled "$POOL" --unlabelled-truth "$DATA/unlabelled_faces_truth.json")
fi
if [[ $SYSTEM == cnu ]]; then  # the same network on one frame first (their "image" models), then on blocks
  TEST_EXTRA=(--faceless hold)
  $PY train.py "@shs/demo_$SYSTEM.args" --db "$DB" --output-dir "$OUT/image_only/train" --clip-len 1
  $PY test_val_aff2.py --checkpoint "$OUT/image_only/train/best.pth" --db "$DB" --split val --edition $EDITION \
    --annotations "$ANN" --out "$OUT/image_only/test_val" --workers 1 "${TEST_EXTRA[@]}"
  $PY evaluate.py --pred "$OUT/image_only/test_val/submission" --annotations "$ANN" --edition $EDITION \
    --json "$OUT/image_only_scores.json"
fi
$PY train.py "@shs/demo_$SYSTEM.args" --db "$DB" --output-dir "$OUT/train" --edition $EDITION "${TRAIN_EXTRA[@]}"
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --db "$DB" --split val --edition $EDITION \
  --annotations "$ANN" --out "$OUT/test_val" --workers 1 "${TEST_EXTRA[@]}"
$PY evaluate.py --check "$OUT/test_val/submission$SUB" --annotations "$ANN" --edition $EDITION --videos "$DATA/videos"
$PY evaluate.py --pred "$OUT/test_val/submission$SUB" --annotations "$ANN" --edition $EDITION \
  --json "$OUT/scores.json" | tee "$OUT/scores.txt"
$PY test_val_aff2.py --checkpoint "$OUT/train/best.pth" --video "$DATA/videos/batch1/3-30-640x360.mp4" \
  --out "$OUT/any_video" --overlay
set +x
ls -l "$OUT/any_video"
echo "demo of $SYSTEM finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s:" \
  "database $DB, report ${DB}_report.json, baseline ${BASE}_scores.json," \
  "trained model $OUT/train/best.pth, its scores $OUT/scores.json on the validation videos:"
cat "$OUT/scores.txt"
if [[ $SYSTEM == dtm ]]; then
  $PY - "$OUT/supervised_scores.json" "$OUT/scores.json" <<'PY'
import json, sys
sup, pl = (json.load(open(p))["expr"]["f1"] for p in sys.argv[1:])
print(f"EXPR F1 with 5 % of the labels: supervised only {sup:.4f}, with pseudo-labels {pl:.4f} ({pl - sup:+.4f})")
if pl < sup + 0.05:  # what the demo is for: the pseudo-labels must help
    sys.exit("shs/demo.sh dtm: the pseudo-labels gained less than 0.05 EXPR F1 over supervised only")
PY
fi
if [[ $SYSTEM == cnu ]]; then
  $PY - "$OUT/image_only_scores.json" "$OUT/scores.json" <<'PY'
import json, sys
image, block = (json.load(open(p)) for p in sys.argv[1:])
for name, s in (("image only (one frame)", image), ("block of 16 selected frames", block)):
    print(f"{name:28s} EXPR F1 {s['expr']['f1']:.4f} (accuracy {s['expr']['accuracy']:.4f}), "
          f"valence {s['va']['ccc_valence']:.4f}, arousal {s['va']['ccc_arousal']:.4f}")
if block["expr"]["f1"] < 0.6 or block["va"]["ccc_valence"] < 0.5:  # what the demo promises
    sys.exit("shs/demo.sh cnu: the block model reached less than EXPR F1 0.6 or valence CCC 0.5")
PY
fi
