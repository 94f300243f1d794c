#!/usr/bin/env bash
# TSAV on the full Aff-Wild2 database, published settings (SPEC §3, §4): 112x112 clips of 8 frames at
# dilation 6 with the TSAV line mask, 10 s of log-mel, Adam lr 5e-4 / wd 5e-5, batch 28 per GPU,
# 1 % of the training frames per epoch, at most 100 epochs with early stopping (patience 10), bf16 and
# channels-last on the GPUs. Validation: a fixed seeded subset of VAL_SAMPLES labelled frames (0 = all).
#
#   DB=/data/affwild2_db OUT=runs/tsav bash shs/train_tsav.sh [more train.py flags]
#   NPROC=8 ...                         GPUs on this node (default: all)
#   TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint host:29500 --nproc_per_node 8"
#                                       several nodes: run on each node with its --node_rank
# Resume after a kill: the same command with --resume "$OUT/last.pth".
source "$(dirname "$0")/env.sh"
DB=${DB:-data/affwild2_db}
OUT=${OUT:-runs/tsav}
LAYOUT=${LAYOUT:-abaw2021}  # abaw2020 for a database built from the 2020 annotations (8 AUs)
VAL_SAMPLES=${VAL_SAMPLES:-30000}
NPROC=${NPROC:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
[[ $NPROC -ge 1 ]] || NPROC=1
TORCHRUN_ARGS=${TORCHRUN_ARGS:---standalone --nproc_per_node $NPROC}
# shellcheck disable=SC2086  # TORCHRUN_ARGS is a list of flags
$PY -m torch.distributed.run $TORCHRUN_ARGS train.py \
  --db "$DB" --output-dir "$OUT" --model tsav --layout "$LAYOUT" --mask tsav \
  --size 112 --clip-len 8 --dilation 6 --audio-seconds 10 \
  --epochs 100 --epoch-fraction 0.01 --batch-size 28 --lr 5e-4 --weight-decay 5e-5 --sched none --patience 10 \
  --flip 0.5 --jitter 0.1 --task-weights expr=3,au=1,va=1 --au-reduction sum \
  --val-samples "$VAL_SAMPLES" --eval-batch-size 128 --workers 8 --amp bf16 --channels-last --seed 123 "$@"
