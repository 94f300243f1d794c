#!/usr/bin/env bash
# Masked CoTEX (ICT-VIPL, ABAW4 learning-from-synthetic-data track, 4th) trained with its published recipe at
# full size: N ViT-B/16 peers, all started from one MAE checkpoint, co-trained on the synthetic LSD images and
# validated on the real ones. Each flag below says whether it is [published] (read from the published code,
# ../shared/reference/other_systems.md §1.6-1.7) or [ours] (README, "Every difference").
#
#   bash shs/train_cotex.sh [MAE [LSD [OUT]]] [more train.py flags]
#   MAE=/w/mae_norm.pth LSD=/data/lsd MASK=0.75 bash shs/train_cotex.sh
#
#   MAE      MAE ViT-B/16 checkpoint ({'model': ...}; published: the MAE pre-trained on CelebA faces);
#            default weights/mae_norm.pth
#   LSD      the LSD release: LSD/train/<CLASS>/ (synthetic) and LSD/val/<CLASS>/ (real Aff-Wild2 frames), 6
#            class folders matched by name; default data/lsd
#   OUT      output folder; default runs/cotex
#   MASK     share of patch tokens each peer drops in training (default 0, as the shipped script runs; the paper
#            masks "most patches": try 0.75). The batch grows by int(1 / (1 - MASK)) as published (cap 4096)
#   PEERS    number of co-trained ViTs (default the published 2)
#   NPROC    training processes on this node (default 1); the batch is split over them (NPROC must divide it)
#   AMP      none (default, fp32 as published) or bf16 (faster on recent GPUs, not the published)
#   WORKERS  loader processes per training process (default 8; the draws do not depend on it)
# Paths given as arguments or variables are relative to the current folder; the defaults to the repository.
# Flags after the paths are appended, so they override the ones below.
source "$(dirname "$0")/take_paths.sh"
take_paths MAE LSD OUT -- "$@"
set -- "${REST[@]}"
source "$(dirname "$0")/env.sh"  # cd's to the repository: the defaults below are relative to it
MAE=${MAE:-weights/mae_norm.pth}
LSD=${LSD:-data/lsd}
OUT=${OUT:-runs/cotex}
MASK=${MASK:-0}
PEERS=${PEERS:-2}
NPROC=${NPROC:-1}
AMP=${AMP:-none}
WORKERS=${WORKERS:-8}
if [[ ! -f $MAE ]]; then
  echo "shs/train_cotex.sh: no checkpoint at $MAE (give MAE as an argument or variable)" >&2
  exit 2
fi
# [published] batch 64 x int(1 / (1 - r)), at most 4096
BATCH=$(awk -v r="$MASK" 'BEGIN { if (!(r >= 0 && r < 1)) exit 1; b = 64 * int(1 / (1 - r)); print (b > 4096 ? 4096 : b) }') \
  || { echo "shs/train_cotex.sh: MASK=$MASK must be in [0, 1)" >&2; exit 2; }
if (( NPROC < 1 || BATCH % NPROC != 0 )); then
  echo "shs/train_cotex.sh: NPROC=$NPROC must divide the batch of $BATCH" >&2
  exit 2
fi
flags=(
  --lsd "$LSD" --output-dir "$OUT"
  # [published] PEERS ViT-B/16 peers (drop-path 0.1), each a Linear(768, 6) head (trunc-normal std 2e-5, bias 0);
  # each drops its own random MASK share of patch tokens in training (none in evaluation); the prediction is the
  # argmax of the sum of their logits; 6 classes, macro-F1 (layout and edition lsd).
  --model cotex --model-size base --peers "$PEERS" --mask-ratio "$MASK" --drop-path 0.1
  # [published] Every peer starts from the same MAE encoder (decoder and mask token dropped).
  --backbone-init "$MAE"
  # [published] 224 px; training view resize 228, random crop 224, flip 0.5 (drawn per image); no colour jitter;
  # ImageNet mean/std. Evaluation: resize 224.
  --size 224 --flip 0.5
  # [published] Loss: the peers' mean cross-entropy + 100 x their agreement (KL to the mean prediction,
  # averaged over batch x classes). --js per_sample is the divergence itself (ours, an option).
  --ssl cotex --lambda-js 100 --js published
  # [published] AdamW, lr 5e-4 unscaled, weight decay 0.05 (none on 1-D parameters, pos_embed, cls_token),
  # layer-wise lr decay 0.65, batch BATCH x 4 accumulation, gradient norm clipped to 0.05.
  --optimizer adamw --lr 5e-4 --weight-decay 0.05 --layer-decay 0.65
  --batch-size $((BATCH / NPROC)) --accum-steps 4 --clip-grad 0.05
  # [published] 6 epochs: 5 of warm-up, then a one-epoch half-cosine to 1e-6 (per optimiser step here).
  --sched cosine --warmup-epochs 5 --epochs 6 --min-lr 1e-6
  # [published] An epoch is one shuffled pass over the training images. [ours] no early stop in 6 epochs.
  --epoch-fraction 1.0 --patience 0
  # [published] Validation on every real validation image after each epoch; best.pth is the best macro-F1.
  --val-samples 0 --eval-every 1 --eval-batch-size 256 --select student
  # Run: fp32 by default as published; speed-only settings; [ours] the seed.
  --amp "$AMP" --workers "$WORKERS" --seed 123
)
if (( NPROC == 1 )); then
  exec $PY train.py "${flags[@]}" "$@"
fi
exec $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py "${flags[@]}" "$@"
