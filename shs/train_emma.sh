#!/usr/bin/env bash
# EMMA (ICT-VIPL, ABAW4 multi-task track, 2nd) trained with its published recipe at full size: an MAE ViT-B/16
# and a frozen DAN on one 224 px frame, EMMA's losses, AdamW with layer-wise lr decay, warm-up + cosine per step.
# Each flag below says whether it is [published] (read from the published code, ../shared/reference/
# other_systems.md §1) or [ours] (a reconstruction or a deliberate difference; README, "Every difference").
#
#   bash shs/train_emma.sh [MAE [DAN [DB [OUT]]]] [more train.py flags]
#   MAE=/w/mae_norm.pth DAN=/w/affecnet8_epoch5_acc0.6209.pth DB=/data/saffwild2_db bash shs/train_emma.sh
#
#   MAE      MAE ViT-B/16 checkpoint ({'model': ...}; published: mae_norm.pth, pre-trained on CelebA faces);
#            default weights/mae_norm.pth
#   DAN      DAN's AffectNet-8 checkpoint (published: affecnet8_epoch5_acc0.6209.pth of yaoing/DAN);
#            default weights/affecnet8_epoch5_acc0.6209.pth
#   DB       database of the s-Aff-Wild2 MTL release (create_database.py --cropped-aligned with the
#            training/validation_set_annotations.txt); default data/saffwild2_db
#   OUT      output folder; default runs/emma
#   NPROC    training processes on this node (default 1); each takes a batch of 100/NPROC (NPROC must divide
#            100), so the effective batch stays 100 x 4 = 400 and the published learning rate holds
#   DAN_BN   frozen (default, ours: DAN keeps its AffectNet statistics) or adapt (published: DAN's BatchNorm
#            statistics follow the training frames, as in the released EMMA file)
#   LR       base learning rate (default 7.8125e-4 = 5e-4 x 400 / 256, published). The published clipping ran
#            over VA-head gradients still multiplied by the AMP loss scale, so its ViT steps were far smaller
#            than this lr says; ours clips the true gradient (README): lower LR if training diverges
#   AMP      none (default, published: fp32 arithmetic) or bf16 (faster on recent GPUs, not the published)
#   WORKERS  loader processes per training process (default 8; the draws do not depend on it)
# Paths given as arguments or variables are relative to the current folder; the defaults to the repository.
# Flags after the paths are appended, so they override the ones below.
source "$(dirname "$0")/take_paths.sh"
take_paths MAE DAN DB OUT -- "$@"
set -- "${REST[@]}"
source "$(dirname "$0")/env.sh"  # cd's to the repository: the defaults below are relative to it
MAE=${MAE:-weights/mae_norm.pth}
DAN=${DAN:-weights/affecnet8_epoch5_acc0.6209.pth}
DB=${DB:-data/saffwild2_db}
OUT=${OUT:-runs/emma}
NPROC=${NPROC:-1}
DAN_BN=${DAN_BN:-frozen}
LR=${LR:-7.8125e-4}
AMP=${AMP:-none}
WORKERS=${WORKERS:-8}
for f in "$MAE" "$DAN"; do
  if [[ ! -f $f ]]; then
    echo "shs/train_emma.sh: no checkpoint at $f (give MAE and DAN as arguments or variables)" >&2
    exit 2
  fi
done
if (( NPROC < 1 || 100 % NPROC != 0 )); then
  echo "shs/train_emma.sh: NPROC=$NPROC must divide the published batch of 100" >&2
  exit 2
fi
flags=(
  --db "$DB" --output-dir "$OUT"
  # [published] The network: ViT-B/16 (drop-path 0.1, head 768-512-20) + DAN (8 AffectNet logits, frozen) + VA head
  # 28-256-2; outputs [V, A, EXPR 8, AU 12], scored by the ABAW4 MTL edition (P = CCC + EXPR F1 + AU F1).
  --model emma --model-size base --layout emma --edition abaw4
  # [published] Starting weights: the MAE encoder (decoder and mask token dropped) and DAN's AffectNet-8 file.
  --backbone-init "$MAE" --dan-init "$DAN"
  # [ours by default] DAN's BatchNorm: frozen (eval mode); DAN_BN=adapt restores the published behaviour.
  --dan-bn "$DAN_BN"
  # [published] One frame, the 112 px crop resized to 224 (ImageNet mean/std, no mask, no audio).
  --size 224
  # [published] Training view: resize 232, colour jitter 0.4/0.4/0.4/0.1 with probability 0.2 (the model draws
  # the 0.2), random crop 224, horizontal flip with probability 0.5. [ours] no separate teacher view (--ssl none).
  --flip 0.5 --jitter 0.4 --hue 0.1
  # [published] EMMA's losses: VA sum of 1 - CCC (unbiased statistics, eps 1e-4), EXPR cross-entropy over valid
  # rows, AU BCE with per-AU positive weights summed over valid entries / batch size; task weights 1/1/1.
  --loss emma --task-weights expr=1,au=1,va=1 --ssl none
  # [published] AdamW, base lr 5e-4 x effective batch / 256 (LR), weight decay 0.05 (none on 1-D parameters,
  # pos_embed, cls_token), layer-wise lr decay 0.65 (the model's groups), VA head at a constant 1e-4 without
  # weight decay. [ours] the VA head is a group of the same AdamW (published: a second Adam whose gradients
  # were zeroed only every 4th step), so it neither warms up nor decays.
  --optimizer adamw --lr "$LR" --weight-decay 0.05
  # [published] Batch 100 x 4 accumulation (effective 400), gradient norm clipped to 0.05 (ours: after
  # unscaling, over the true gradient of every group).
  --batch-size $((100 / NPROC)) --accum-steps 4 --clip-grad 0.05
  # [published] 5 warm-up epochs, then a half-cosine to 1e-6 at epoch 30, per optimiser step (each group's
  # floor scales like its lr). [ours] our warm-up starts at 1/steps (published: the epoch counter starts at 1,
  # so its warm-up starts at lr/5).
  --sched cosine --warmup-epochs 5 --epochs 30 --min-lr 1e-6
  # [published] An epoch is one shuffled pass over the labelled training frames (uniform draws are without
  # replacement); all 30 epochs run (no early stop). [ours] frames without any label are not drawn.
  --epoch-fraction 1.0 --patience 0
  # [ours] Validation on every labelled validation frame after each epoch, official ABAW4 metrics; best.pth is the
  # best P (published: a best file per task and one for the total, with AU thresholds on raw logits).
  --val-samples 0 --eval-every 1 --eval-batch-size 256 --select student
  # Run: fp32 by default as published; speed-only settings; [ours] the seed.
  --amp "$AMP" --workers "$WORKERS" --seed 123
)
if (( NPROC == 1 )); then
  exec $PY train.py "${flags[@]}" "$@"
fi
exec $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py "${flags[@]}" "$@"
