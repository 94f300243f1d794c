#!/usr/bin/env bash
# Multi-task mean teacher (MTMT, ABAW 2021) on the full Aff-Wild2 database, published settings (SPEC §4):
# SE-R(2+1)D-18 + audio ResNet-18 with per-task heads and the self-cure EXPR weight, the filled MTMT mask,
# initialised from a TSAV checkpoint (streams only); student without augmentation, teacher = EMA (0.99,
# global step, BatchNorm statistics included) seeing brightness/contrast 0.8-1.2; consistency on the
# samples missing each label, 3·EXPR + AU + VA + 12·rank, weight ramped to 0.4 over 15 epochs; Adam lr
# 5e-4 / wd 5e-5, batch 28 per GPU, 1 % of the frames per epoch, the teacher validated and saved.
#
#   INIT=runs/tsav/best.pth DB=/data/affwild2_db OUT=runs/mtmt bash shs/train_mtmt.sh [more train.py flags]
#   (INIT may also be the published TSAV416k.pth.tar; NPROC / TORCHRUN_ARGS as in shs/train_tsav.sh)
source "$(dirname "$0")/env.sh"
DB=${DB:-data/affwild2_db}
OUT=${OUT:-runs/mtmt}
INIT=${INIT:-runs/tsav/best.pth}
VAL_SAMPLES=${VAL_SAMPLES:-30000}
NPROC=${NPROC:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
[[ $NPROC -ge 1 ]] || NPROC=1
TORCHRUN_ARGS=${TORCHRUN_ARGS:---standalone --nproc_per_node $NPROC}
# shellcheck disable=SC2086  # TORCHRUN_ARGS is a list of flags
$PY -m torch.distributed.run $TORCHRUN_ARGS train.py \
  --db "$DB" --output-dir "$OUT" --model mtmt --layout mtmt --mask mtmt --init-from "$INIT" \
  --size 112 --clip-len 8 --dilation 6 --audio-seconds 10 \
  --ssl mean_teacher --consistency missing --consistency-weight 0.4 --rampup-epochs 15 --ema-decay 0.99 \
  --rank-weight 12 --teacher-jitter 0.2 --select teacher --flip 0 --jitter 0 \
  --epochs 100 --epoch-fraction 0.01 --batch-size 28 --lr 5e-4 --weight-decay 5e-5 --sched none --patience 10 \
  --task-weights expr=3,au=1,va=1 --au-reduction sum \
  --val-samples "$VAL_SAMPLES" --eval-batch-size 128 --workers 8 --amp bf16 --channels-last --seed 123 "$@"
