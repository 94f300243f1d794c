#!/usr/bin/env bash
# CNU_ADL (ABAW 2020, EXPR + VA) trained at full size in the published two stages: the ResNet-50 face network on
# single frames first, then the block model (statistics of the last 16 selected frames + the current frame's
# features) on that frozen face network. Each flag says whether it is [published] (read from the published
# notebooks and sources, ../shared/reference/other_systems.md §3) or [ours] (the training loop, optimiser, lr,
# epochs and loss weights were never published: our choice; README, "CNU_ADL").
#
#   bash shs/train_cnu.sh [FACE [DB [OUT]]] [more train.py flags, given to both stages]
#   FACE=/w/resnet50_vggface2.pth DB=/data/affwild2_db bash shs/train_cnu.sh
#
#   FACE     face-network weights for stage 1 (models.cnu.load_face_net): a VGGFace2 ResNet-50 state dict in
#            torchvision or Caffe naming (published start: VGGFace2, then AffectNet and RAF-DB fine-tuning, in a
#            Keras file we cannot read), or a whole cnu face network; default weights/resnet50_vggface2.pth
#   DB       database of the ABAW 2020/2021 per-task files (create_database.py); default data/affwild2_db
#   OUT      output folder; stage 1 in OUT/face, stage 2 in OUT/block; default runs/cnu
#   STAGES   "face block" (default, published), "block" (stage 2 only, from OUT/face/best.pth) or "joint" (ours:
#            one end-to-end run from FACE, in OUT/joint)
#   LSTM     1 adds the 2-layer BiLSTM-1024 over the block's softmax ([published] their "Frame + LSTM" model)
#   WORKERS  loader processes (default 8; the draws do not depend on it)
# Paths given as arguments or variables are relative to the current folder; the defaults to the repository.
# Flags after the paths are appended, so they override the ones below.
source "$(dirname "$0")/take_paths.sh"
take_paths FACE DB OUT -- "$@"
set -- "${REST[@]}"
source "$(dirname "$0")/env.sh"  # cd's to the repository: the defaults below are relative to it
FACE=${FACE:-weights/resnet50_vggface2.pth}
DB=${DB:-data/affwild2_db}
OUT=${OUT:-runs/cnu}
STAGES=${STAGES:-face block}
LSTM=${LSTM:-0}
WORKERS=${WORKERS:-8}
common=(
  --db "$DB"
  # [published] The face network: ResNet-50 → features Dense(2048, ReLU) → predictions Dense(7) in EmotiW order
  # (mapped to Aff-Wild2's), layers before conv4_x frozen; 224 px, BGR minus VGGFace2's means, no std.
  # [ours] the 112 px aligned crops of our database resized to 224 (published: the official non-aligned crops).
  --model cnu --model-size base --size 224 --edition abaw2020
  # [published] Augmentation drawn per frame of the block: ShiftScaleRotate (shift 0.0625, scale 0.1, 45 degrees,
  # borders reflected), then a flip with probability 0.5; no colour jitter. [ours] on the 112 px crop (published:
  # after resizing to 260 and a centre crop of 224).
  --shift-scale-rotate 0.0625,0.1,45 --flip 0.5 --jitter 0
  # [published] Class-balanced draws, class after class; an epoch = the largest class count x 7 (often > 10^5 on
  # Aff-Wild2: [ours] --samples-per-epoch caps it at 64,000 blocks).
  --balance-expr max --samples-per-epoch 64000
  # [ours] Adam, lr 1e-4, cosine after one warm-up epoch, 10 epochs, the best validation total kept.
  --optimizer adam --lr 1e-4 --weight-decay 0 --sched cosine --warmup-epochs 1 --epochs 10 --patience 3
  --batch-size 32 --eval-every 1 --val-samples 0 --eval-batch-size 256 --workers "$WORKERS" --seed 0
)
lstm=()
[[ $LSTM == 1 ]] && lstm=(--cnu-lstm)
for stage in $STAGES; do
  case $stage in
    face)  # [published] stage 1: the face network alone, 7-class cross-entropy on single frames (EXPR labels)
      [[ -f $FACE ]] || { echo "shs/train_cnu.sh: no face-network weights at $FACE (give FACE)" >&2; exit 2; }
      $PY train.py "${common[@]}" --output-dir "$OUT/face" --layout expr7 --cnu-stage face --clip-len 1 \
        --backbone-init "$FACE" "$@" ;;
    block)  # [published] stage 2: blocks of 16 selected frames (a face, EXPR and VA labels) on the frozen face
      # network; CE + (1 - CCC) for valence and for arousal + the auxiliary head's MSE. [ours] weights 1/1/1.
      $PY train.py "${common[@]}" --output-dir "$OUT/block" --layout cnu --cnu-stage block --clip-len 16 \
        --backbone-init "$OUT/face/best.pth" --aux-weight 1 "${lstm[@]}" "$@" ;;
    joint)  # [ours] one run: face network (above conv4_x) and block heads together, history frames without
      # gradient (the backward pass of the current frame only)
      [[ -f $FACE ]] || { echo "shs/train_cnu.sh: no face-network weights at $FACE (give FACE)" >&2; exit 2; }
      $PY train.py "${common[@]}" --output-dir "$OUT/joint" --layout cnu --cnu-stage joint --clip-len 16 \
        --backbone-init "$FACE" --no-history-grad --face-lr-scale 0.1 "${lstm[@]}" "$@" ;;
    *) echo "shs/train_cnu.sh: unknown stage '$stage' (face, block, joint)" >&2; exit 2 ;;
  esac
done
