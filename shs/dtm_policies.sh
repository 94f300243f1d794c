#!/usr/bin/env bash
# The four pseudo-label threshold policies over 3 seeds on the mini dataset (README's policy table), CPU:
#   bash shs/dtm_policies.sh                     # DEMO=demo_out, SEEDS="0 1 2", POLICIES="none fixed flexmatch freematch adacm"
# Each run is shs/demo_dtm.args (5 % of the EXPR labels) with --seed S and, for a policy, --threshold POLICY and
# the generator's pool of unlabelled faces; "none" is the supervised-only run (--ssl none). Every run's
# validation scores go to $DEMO/dtm_policies/<policy>_s<seed>/scores.json; a finished run is not redone (delete
# its folder to redo it), so a killed grid resumes. At the end: $DEMO/dtm_policies/table.md, mean ± sd per policy.
# Needs the demo's data (made by bash shs/demo.sh dtm when missing). About 3 min per run on 2 CPU cores.
source "$(dirname "$0")/env.sh"
DEMO=${DEMO:-demo_out}
SEEDS=${SEEDS:-0 1 2}
POLICIES=${POLICIES:-none fixed flexmatch freematch adacm}
DATA=$DEMO/mini_affwild2
ANN=$DATA/annotations/abaw3
DB=$DEMO/db_abaw3
POOL=$DATA/unlabelled_faces
GRID=$DEMO/dtm_policies
if [[ ! -f $DB/meta.json || ! -d $POOL ]]; then
  DEMO=$DEMO bash shs/demo.sh dtm
fi
mkdir -p "$GRID"
for seed in $SEEDS; do
  for pol in $POLICIES; do
    run=$GRID/${pol}_s$seed
    [[ -f $run/scores.json ]] && { echo "done already: $run/scores.json"; continue; }
    rm -rf "$run"  # an unfinished run of this script's own
    if [[ $pol == none ]]; then
      extra=(--ssl none)
    else
      extra=(--threshold "$pol" --unlabelled "$POOL" --unlabelled-truth "$DATA/unlabelled_faces_truth.json")
    fi
    $PY train.py @shs/demo_dtm.args --db "$DB" --output-dir "$run/train" --seed "$seed" "${extra[@]}"
    $PY test_val_aff2.py --checkpoint "$run/train/best.pth" --db "$DB" --split val --edition abaw5 \
      --annotations "$ANN" --out "$run/test_val" --workers 1
    cp "$run/test_val/scores.json" "$run/scores.tmp" && mv "$run/scores.tmp" "$run/scores.json"
  done
done
$PY - "$GRID" $POLICIES <<'PY' | tee "$GRID/table.md"
import glob, json, os, statistics, sys
grid, policies = sys.argv[1], sys.argv[2:]
print("| policy | EXPR macro-F1 (mean ± sd) | seeds | per seed |")
print("|---|---|---|---|")
for pol in policies:
    f1 = [json.load(open(p))["expr"]["f1"] for p in sorted(glob.glob(os.path.join(grid, f"{pol}_s*", "scores.json")))]
    if not f1:
        continue
    sd = statistics.stdev(f1) if len(f1) > 1 else float("nan")
    name = "supervised only (--ssl none)" if pol == "none" else f"`--threshold {pol}`"
    print(f"| {name} | {statistics.mean(f1):.3f} ± {sd:.3f} | {len(f1)} | {', '.join(f'{v:.3f}' for v in f1)} |")
PY
