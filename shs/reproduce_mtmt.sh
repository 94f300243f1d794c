#!/usr/bin/env bash
# MTMT (ABAW 2021) trained the way its published code trains it: every published behaviour that a train.py
# flag can restore is restored here (README, "Reproducing the published systems", lists each difference and
# the ones no flag restores). shs/train_mtmt.sh is the same system with our corrected defaults.
#
#   bash shs/reproduce_mtmt.sh [INIT [DB [OUT]]] [more train.py flags]
#   INIT=/ckpt/TSAV416k.pth.tar DB=/data/affwild2_db OUT=runs/mtmt_reproduced bash shs/reproduce_mtmt.sh
#
#   INIT          TSAV checkpoint whose two streams start the student (the published TSAV416k.pth.tar, or a
#                 tsav best.pth of ours); default runs/tsav/best.pth
#   DB            database built with --store-pcm (the reference audio window is computed from the waveform);
#                 default data/affwild2_db. AUDIO_WINDOW=centred runs on a database without PCM (not as published)
#   OUT           output folder; default runs/mtmt_reproduced
#   VAL_SAMPLES   validation frames (default 0: all). Published: a new random 1 % of the validation frames each
#                 epoch; no flag draws anew, a fixed subset of that size is the closest (e.g. VAL_SAMPLES=3000)
#   AMP           none (default: the published run was fp32) or bf16 (faster, not the published arithmetic)
#   DETERMINISTIC 1 (default: the published run set cudnn.deterministic) or 0 (faster)
#   WORKERS       loader processes (default 8; the draws do not depend on it, published used 0)
# Paths given as arguments or variables are relative to the current folder; the defaults to the repository.
# Flags after the paths are appended, so they override the ones below (e.g. a tiny toy run).
source "$(dirname "$0")/take_paths.sh"
take_paths INIT DB OUT -- "$@"
set -- "${REST[@]}"
source "$(dirname "$0")/env.sh"  # cd's to the repository: the defaults below are relative to it
INIT=${INIT:-runs/tsav/best.pth}
DB=${DB:-data/affwild2_db}
OUT=${OUT:-runs/mtmt_reproduced}
VAL_SAMPLES=${VAL_SAMPLES:-0}
AUDIO_WINDOW=${AUDIO_WINDOW:-reference}
AMP=${AMP:-none}
DETERMINISTIC=${DETERMINISTIC:-1}
WORKERS=${WORKERS:-8}
if [[ ! -f $INIT ]]; then
  echo "shs/reproduce_mtmt.sh: no TSAV checkpoint at $INIT (give its path as the first argument or INIT=...)" >&2
  exit 2
fi
flags=(
  --db "$DB" --output-dir "$OUT"
  # The network: TwoStreamAuralVisualSelfCure, outputs [AU 12 | EXPR 8 x alpha | VA 2], its 106-point mask.
  --model mtmt --layout mtmt --mask mtmt
  # Published start: the student's two streams from TSAV (its fc dropped), SE layers and heads fresh.
  --init-from "$INIT"
  # Inputs of the published data loader: 8 frames at dilation 6, 112 px, 10 s of log-mel per frame
  # computed from the waveform by TSAV's routine (shifted in the first 10 s and the last 5 s of a video).
  --size 112 --clip-len 8 --dilation 6 --audio-seconds 10 --audio-window "$AUDIO_WINDOW"
  # The student sees the clip as stored (no flip, no colour jitter); the teacher brightness/contrast 0.8-1.2.
  --flip 0 --jitter 0 --hue 0 --teacher-jitter 0.2
  # Mean teacher: EMA 0.99, consistency on the samples missing each label, max weight 0.4 over 15 epochs,
  # 12 x the self-cure rank term of the student (ramped with the consistency terms).
  --ssl mean_teacher --consistency missing --consistency-weight 0.4 --rampup-epochs 15 --ema-decay 0.99
  --rank-weight 12
  # Published arithmetic: ramp weight of the whole epoch number; teacher BatchNorm on batch statistics and an
  # EMA of the parameters only; its CCC loss (unbiased variances, covariance / whole batch); its EXPR
  # cross-entropy over all 8 logits with the unused slot 7 ignored (supervised and consistency).
  --rampup-by epoch --teacher-bn train --ccc-loss reference --expr-loss-classes 8
  # Supervised total 3 EXPR + AU + VA, the per-AU BCE means summed over the 12 AUs; no TSAV label filter.
  --task-weights expr=3,au=1,va=1 --au-reduction sum --dropout 0
  # mtmt opts: Adam (L2 weight decay on every parameter) lr 5e-4, wd 5e-5, no schedule, no clipping,
  # batch 28 in one process, 1 % of the training frames per epoch, at most 100 epochs, patience 10, seed 123.
  --optimizer adam --lr 5e-4 --weight-decay 5e-5 --sched none --clip-grad 0 --accum-steps 1
  --batch-size 28 --epoch-fraction 0.01 --epochs 100 --patience 10 --seed 123
  # The teacher is validated after every epoch (published) and, here, also saved in best.pth/last.pth.
  --select teacher --eval-every 1 --precise-bn 0 --val-samples "$VAL_SAMPLES"
  # Run: fp32 by default as published; speed-only settings.
  --amp "$AMP" --workers "$WORKERS" --eval-batch-size 128
)
[[ $DETERMINISTIC == 1 ]] && flags+=(--deterministic)
# One process, as published (the batch of 28 is per process: torchrun would change the effective batch).
exec $PY train.py "${flags[@]}" "$@"
