"""Every command-line flag of the top-level scripts, with relative defaults, grouped per script.

Each ``*_parser()`` returns a plain ``argparse.ArgumentParser``; the scripts only parse and call one
function. Nothing here reads global state.
"""

from __future__ import annotations

import argparse
import re

import tasks
from opts_types import (  # noqa: F401 (the argparse types, also read as opts._number etc.)
    _amount,
    _count,
    _factor_spread,
    _number,
    _positive,
    _positive_float,
    _positive_int,
    _probability,
    _shift_scale_rotate,
)

EDITIONS = tuple(tasks.EDITIONS)
# Names of the model families, semi-supervised methods and decision profiles (models.registry.MODELS,
# models.ssl.METHODS, utils.outputs.PROFILES);
# spelled here so that parsing flags imports no torch.
MODELS = ("tsav", "mtmt", "resnet18", "resnet50", "emma", "cotex", "cnu")
# sizes of the families that have several (models.emma.VARIANTS, models.cotex.SIZES)
MODEL_SIZES = ("base", "small", "tiny")
LOSSES = ("ours", "emma")  # models.losses.LOSS_KINDS
SSL_METHODS = ("none", "mean_teacher", "cotex", "pseudo_label")
THRESHOLDS = ("fixed", "flexmatch", "freematch", "adacm")  # models.pseudo_label.POLICIES
DECISIONS = ("default", "tsav2020", "mtmt2021", "emma", "emma_thresholds")  # utils.outputs.PROFILES

# Relative defaults shared by the scripts (the demo writes under demo_out/).
DEFAULT_DATA = "demo_out/mini_affwild2"
DEFAULT_ANNOTATIONS = f"{DEFAULT_DATA}/annotations/abaw2021"


def evaluate_parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        description="Score ABAW predictions with the official metrics of an edition, or check a "
        "submission for format problems (--check). With --edition lsd: an LSD prediction file (image,expression "
        "rows) against a split folder of class folders given as --annotations.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pred", help="submission folder (VA_Set/ EXPR_Set/ AU_Set/ of per-video files) "
                      "or one single-file submission (2023+ per track, or MTL); with --edition lsd an LSD "
                      "prediction file (test_val_aff2.py --lsd's predictions.txt)")
    what.add_argument("--check", metavar="PATH", help="check this submission (folder or file) and report "
                      "every problem with file and line; exit code 1 if there is any")
    what.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="per-task agreement of two prediction sets (submission folders or files, or raw/ "
                      "folders of test_val_aff2.py .npz outputs): EXPR/AU equal fraction, VA max |difference|")
    p.add_argument("--annotations", default=DEFAULT_ANNOTATIONS,
                   help="folder holding the task folders (VA_Set/EXPR_Set/AU_Set or the 2022+ names) "
                   "or the multi-task annotation files; with --edition lsd: the split folder the predictions "
                   "are for (e.g. LSD_ROOT/val: one folder per class, or bare images for --check of a test set)")
    p.add_argument("--edition", choices=EDITIONS, default="abaw2021",
                   help="which edition's metrics, class count and AU set to use (with --compare: how to read "
                   "per-video files and how many EXPR classes raw outputs have)")
    p.add_argument("--split", default=tasks.VAL_SPLIT,
                   help="annotation split to score against (Validation_Set or Train_Set); not used with "
                   "--edition lsd (--annotations names the split folder)")
    p.add_argument("--json", default=None,
                   help="also write the scores (with --compare: the agreement) as JSON to this file")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --pred: score a submission that leaves labelled frames of some tracks without a "
                   "prediction (by default an error: see README, Scoring)")
    p.add_argument("--videos", nargs="*", default=None,
                   help="with --check: folders of the videos, to count the frames each file must have "
                   "(without it the annotation line counts are used)")
    p.add_argument("--test-list", nargs="*", default=None,
                   help="with --check: test-set list file(s) that name the expected tracks instead of the "
                   "annotation split: one track name per line (needs --videos for frame counts) or one "
                   "image per line (video/00001.jpg). A list is for the task its file name names "
                   "(VA/valence, EXPR/expression, AU/action), else for every task")
    return p


def _shard_spec(text: str) -> tuple[int, int]:
    """'K/N' → (K, N): this build takes every N-th video (sorted by name) starting at K."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 0 <= K < N (e.g. 0/4 ... 3/4)")
    return int(m.group(1)), int(m.group(2))


class _OneLineErrors(argparse.ArgumentParser):
    """Bad flags: one line naming the flag (and a hint), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def create_database_parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        description="Raw videos → aligned 112x112 faces, TSAV/MTMT masks, log-mel and labels in one LMDB. "
        "Resumable: rerun the same command after a kill and finished videos are skipped (failed ones are "
        "retried). Exit code 1 when a video failed, 2 on bad arguments or paths.")
    p.add_argument("--videos", nargs="+", default=[f"{DEFAULT_DATA}/videos"],
                   help="folder(s) searched recursively for .mp4/.avi videos (batch1/ batch2/ or flat)")
    p.add_argument("--annotations", default=DEFAULT_ANNOTATIONS,
                   help="annotation folder of any edition (task folders or the multi-task files); "
                   "'' to build without labels")
    p.add_argument("--test-lists", nargs="*", default=[],
                   help="test-set list files (track names or track/00001.jpg images): their _left/_right names "
                   "tell which videos hold two people; their tracks get split 'test' for the task the file "
                   "name names (VA/EXPR/AU; any other name: every task)")
    p.add_argument("--out", default="demo_out/db", help="LMDB folder to create or resume")
    p.add_argument("--workers", type=_positive_int, default=2,
                   help="processes that decode/detect/align in parallel (one writer); 1 = in-process")
    p.add_argument("--detector", choices=("hog", "cnn"), default="hog",
                   help="dlib face detector: HOG (fast, CPU) or the CNN/MMOD model (slow on CPU)")
    p.add_argument("--detect-every", type=_positive_int, default=5,
                   help="run the detector every k frames; landmarks follow the face in between")
    p.add_argument("--masks", default="none",
                   help="masks to store as PNG besides the landmarks: none, or comma-separated tsav (lines), "
                        "mtmt (filled regions); training and inference draw a mask that is not stored from the "
                        "stored landmarks (same pixels), so none saves ~1.5 KB per frame")
    p.add_argument("--crop-format", choices=("jpeg", "webp"), default="jpeg",
                   help="codec of the stored 112x112 crops: jpeg (as TSAV; fastest to decode) or webp (about half "
                        "the bytes at the same fidelity, 2x slower to decode: see README, benchmarks)")
    p.add_argument("--crop-quality", type=int, default=95, choices=range(50, 101), metavar="50-100",
                   help="quality of the stored crops (95 as TSAV)")
    p.add_argument("--shard", type=_shard_spec, default=None,
                   help="K/N: build only every N-th video (sorted by name) starting at K (0-based)")
    p.add_argument("--merge", nargs="+", default=None, metavar="SHARD_DB",
                   help="instead of building, merge these shard databases into --out")
    p.add_argument("--cropped-aligned", default=None,
                   help="import official cropped_aligned/<track>/%%05d.jpg crops instead of detecting faces")
    p.add_argument("--tsav-alignment", default=None,
                   help="import TSAV alignment pickles, one per track: <track>.pkl or <track>_alignment_mask.pkl")
    p.add_argument("--store-pcm", action="store_true",
                   help="also store each video's 44.1 kHz mono PCM (int16, ~88 KB per second of video): what "
                        "--audio-window reference (TSAV's per-frame audio computation) needs")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="process only the first N videos by name (after --shard)")
    p.add_argument("--limit-frames", type=_positive_int, default=None,
                   help="debugging: only the first N frames per video")
    p.add_argument("--chunk-mb", type=_positive_float, default=16.0,
                   help="MB of crops handed to the writer at a time: a long video is written in several "
                        "transactions (its meta last), so memory does not grow with its length")
    p.add_argument("--report", metavar="DB", default=None,
                   help="print a per-track summary of an existing database instead of building")
    p.add_argument("--json", default=None, help="with --report: also write the report as JSON here")
    p.add_argument("--verify", action="store_true",
                   help="with --report: recompute every video's sha256 from its stored bytes (exit 1 on a "
                        "mismatch); when building: also rebuild complete videos whose bytes no longer match")
    return p


def _args_of_line(line: str) -> list[str]:
    """An @FILE line: whitespace-separated flags and values; '#' starts a comment."""
    return line.split("#", 1)[0].split()


def _task_weights(text: str) -> str:
    """argparse type of --task-weights: checked here, kept as text (app.training parses it again)."""
    try:
        tasks.parse_task_weights(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--task-weights: ")) from None
    return text


def train_parser() -> argparse.ArgumentParser:
    """train.py: defaults are the published MTMT/TSAV settings (SPEC §3, §4) on full-size inputs."""
    p = _OneLineErrors(
        description="Train the two-stream aural-visual model (TSAV) or its MTMT variant on the LMDB database, "
        "optionally with the multi-task mean teacher. Launch with torchrun for several GPUs/nodes. "
        "@FILE reads flags from a file (e.g. shs/demo_tsav.args): one or more per line, # comments.",
        fromfile_prefix_chars="@")
    p.convert_arg_line_to_args = _args_of_line
    g = p.add_argument_group("data")
    g.add_argument("--db", default="demo_out/db", help="LMDB database built by create_database.py")
    g.add_argument("--lsd", default=None,
                   help="train on an ABAW4 LSD image folder instead of --db: ROOT/train/<CLASS>/ (synthetic) and "
                   "ROOT/val/<CLASS>/ (real) images, 6 classes; layout and edition lsd (e.g. --model cotex)")
    g.add_argument("--output-dir", default="runs/train",
                   help="folder for config.json, last.pth, best.pth, log.csv, tb/; one that holds them already is "
                   "refused unless --resume continues a checkpoint in it or --overwrite is given")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in --output-dir: its config.json, last.pth, best.pth, log.csv and tb/ are "
                   "removed when training starts (other files there are kept)")
    g.add_argument("--layout", default="abaw2021", choices=tuple(tasks.LAYOUTS),
                   help="output layout (which column means what; sets the EXPR classes and AU set)")
    g.add_argument("--edition", default=None, choices=EDITIONS,
                   help="edition whose official metrics score validation (default: the layout's)")
    g.add_argument("--mask", default="tsav", choices=("tsav", "mtmt"),
                   help="which stored mask is the 4th input channel (the database must hold it)")
    g.add_argument("--size", type=_positive_int, default=None,
                   help="frame height and width in pixels (default: the model's own, 112; emma, cotex, cnu 224)")
    g.add_argument("--clip-len", type=_positive_int, default=None,
                   help="frames per clip or block, the labelled frame last (default: the model's own: tsav/mtmt 8, "
                   "cnu 16, frame models 1)")
    g.add_argument("--dilation", type=_positive_int, default=None,
                   help="spacing of the clip's frames, in source frames (default: the model's own: tsav/mtmt 6, else "
                   "1; cnu's blocks take the selected frames, gaps skipped, and ignore it)")
    g.add_argument("--audio-seconds", type=_positive, default=10.0, help="length of the centred log-mel window")
    g.add_argument("--audio-window", default="centred", choices=("centred", "reference"),
                   help="centred: a slice of the video's log-mel centred on the frame (ours); reference: TSAV's "
                        "per-frame mel of the waveform, shifted near the start and end (needs --store-pcm)")
    g.add_argument("--workers", type=_count, default=4, help="DataLoader worker processes per training process")
    g = p.add_argument_group("sampling and augmentation")
    g.add_argument("--samples-per-epoch", type=_count, default=0,
                   help="clips drawn per epoch over all processes (0: --epoch-fraction of the candidate frames)")
    g.add_argument("--epoch-fraction", type=_positive, default=0.01,
                   help="clips per epoch as a fraction of the candidate frames (MTMT: 1 %%)")
    g.add_argument("--balance-tasks", action="store_true",
                   help="draw so that each task's labelled frames get the same total weight")
    g.add_argument("--shift-scale-rotate", type=_shift_scale_rotate, default=None, metavar="SHIFT,SCALE,DEGREES",
                   help="an affine of each clip (each frame of a cnu block) before the flip: shift U(-SHIFT, SHIFT) x "
                   "size, zoom U(1-SCALE, 1+SCALE), rotation U(-DEGREES, DEGREES), borders reflected (CNU_ADL: "
                   "0.0625,0.1,45; default none)")
    g.add_argument("--balance-expr", nargs="?", const="weights", default=None, choices=("weights", "max"),
                   help="draw EXPR classes equally often: weights (bare flag) = per-frame draw weights, with "
                   "replacement; max = class by class in turn (draw k from class k mod C, each class's frames "
                   "shuffled and cycled), an epoch = the largest class count x C unless --samples-per-epoch "
                   "(CNU_ADL's class-balanced generator)")
    g.add_argument("--label-fraction", type=_number(float, 0.0, 1.0, low_open=True), default=1.0,
                   help="keep this seeded fraction of the training EXPR labels (e.g. 0.05); the others are hidden "
                   "(unlabelled frames for --ssl pseudo_label, their classes only measure pseudo-label precision)")
    g.add_argument("--flip", type=_probability, default=0.5,
                   help="probability of a horizontal flip of the student clip")
    g.add_argument("--jitter", type=_factor_spread, default=0.1,
                   help="student brightness/contrast/saturation jitter: factors in [1-x, 1+x] (0: off)")
    g.add_argument("--hue", type=_number(float, 0.0, 0.5), default=0.0,
                   help="student hue jitter, fraction of the colour circle")
    g.add_argument("--teacher-jitter", type=_factor_spread, default=0.2,
                   help="teacher brightness/contrast factors in [1-x, 1+x] (MTMT: 0.8-1.2)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tsav", choices=MODELS,
                   help="tsav: R(2+1)D-18 + ResNet-18 on clip + audio, one head; mtmt: SE video stream, task heads, "
                   "self-cure; resnet18: one frame (no mask, no audio), one head; emma: ViT + DAN (ABAW4 MTL); "
                   "cotex: --peers ViTs co-trained with --ssl cotex (ABAW4 LSD); cnu: ResNet face network on blocks "
                   "of selected frames, temporal statistics, EXPR/VA heads (ABAW 2020)")
    g.add_argument("--dropout", type=_factor_spread, default=0.0, help="dropout before the head(s)")
    g.add_argument("--init-from", default=None,
                   help="checkpoint to start from: same model and layout → every weight, else the two streams "
                   "(e.g. a TSAV checkpoint to start MTMT)")
    g.add_argument("--video-init", default=None, help="torchvision r2plus1d_18 state dict (Kinetics-400) file")
    g.add_argument("--audio-init", default=None, help="torchvision resnet18 state dict (ImageNet) file")
    g.add_argument("--backbone-init", default=None,
                   help="frame models: torchvision resnet18 state dict (ImageNet) file for the trunk; emma: the "
                   "MAE ViT checkpoint ({'model': ...}; decoder dropped, pos_embed resampled to --size)")
    g.add_argument("--model-size", default=None, choices=MODEL_SIZES,
                   help="size of a model that has several (emma: base = the published ViT-B/16 and ResNet-18 DAN; "
                   "small = a 4-block ViT of width 192; tiny = a 2-block ViT of width 64 on 32 px patches with a "
                   "narrow DAN, for tests and the CPU demo); cotex: base = ViT-B/16 peers, tiny = 2 blocks of width "
                   "64; cnu: base = the published ResNet-50 face network, small = ResNet-18 with narrow heads; "
                   "default: the full size. An error for other models")
    g.add_argument("--dan-init", default=None,
                   help="emma: DAN's AffectNet-8 checkpoint ({'iter', 'model_state_dict', ...}) for the frozen CNN")
    g.add_argument("--dan-bn", default=None, choices=("frozen", "adapt"),
                   help="emma: DAN's BatchNorm statistics stay as loaded (frozen, the default) or adapt to the "
                   "training frames (adapt, as the published code ran it); an error for other models")
    g.add_argument("--layer-decay", type=float, default=None,
                   help="emma: layer-wise lr decay of the ViT (lr x decay^(depth + 1 - layer)); default the "
                   "published 0.65 (1: every layer at the full lr, e.g. from scratch); an error for other models")
    g.add_argument("--drop-path", type=float, default=None,
                   help="emma, cotex: stochastic depth rate of the ViT blocks (default the published 0.1); an error "
                   "for other models")
    g.add_argument("--peers", type=_positive_int, default=None,
                   help="cotex: number of co-trained ViTs (default the published 2); an error for other models")
    g.add_argument("--cnu-stage", default=None, choices=("joint", "face", "block"),
                   help="cnu: joint = face network and block heads end to end (default); face = the face network "
                   "alone on one frame (--layout expr7 --clip-len 1; CNU_ADL's first stage); block = the face network "
                   "frozen (from --backbone-init, e.g. the face stage's best.pth), only the block heads learn")
    g.add_argument("--cnu-lstm", action="store_true", default=None,
                   help="cnu: add the 2-layer BiLSTM-1024 over the block's softmax to the head inputs (+2,048)")
    g.add_argument("--no-history-grad", dest="history_grad", action="store_false", default=None,
                   help="cnu: the block's T - 1 earlier frames without gradient (the current frame keeps it)")
    g.add_argument("--no-face-freeze", dest="freeze_below_layer3", action="store_false", default=None,
                   help="cnu: train the face network's layers before conv4_x too (published: frozen; a face network "
                   "from scratch needs them)")
    g.add_argument("--face-lr-scale", type=_amount, default=None,
                   help="cnu: the face network's lr = --lr x this (default 1)")
    g.add_argument("--mask-ratio", type=_number(float, 0.0, 1.0, high_open=True), default=None,
                   help="cotex: share of patch tokens each peer drops in training, its own random subset per "
                   "image (timm's patch dropout; default 0 as the shipped script, the paper masks most patches, "
                   "e.g. 0.75); an error for other models")
    g = p.add_argument_group("loss and mean teacher")
    g.add_argument("--loss", default="ours", choices=LOSSES,
                   help="supervised losses: ours (masked CE, per-AU BCE means, 1 - CCC; weights expr=3,au=1,va=1) "
                   "or emma (EMMA's: 1 - CCC with unbiased statistics and eps 1e-4, CE, BCE with per-AU "
                   "positive weights summed over valid entries / batch size; weights 1/1/1)")
    g.add_argument("--task-weights", type=_task_weights, default="",
                   help="supervised (and consistency) task weights, e.g. expr=3,au=1,va=1; tasks not named keep "
                   "the --loss default (ours: expr=3,au=1,va=1; emma: 1/1/1)")
    g.add_argument("--aux-weight", type=_amount, default=None,
                   help="cnu: weight of the auxiliary VA head's MSE (its loss: CE + (1 - CCC) of valence and of "
                   "arousal + this x MSE; default 1, CNU_ADL did not publish theirs); an error for other models")
    g.add_argument("--au-reduction", default="sum", choices=("sum", "mean"),
                   help="per-AU BCE terms summed over AUs (MTMT) or averaged (--loss ours only)")
    g.add_argument("--tsav-filter", action="store_true",
                   help="drop EXPR labels that contradict VA (reported TSAV filtering, unverified)")
    g.add_argument("--ssl", default="none", choices=SSL_METHODS,
                   help="semi-supervised method: none, mean_teacher (EMA teacher, consistency on its view) or cotex "
                   "(the peers' mean CE + --lambda-js x their Jensen-Shannon agreement; needs --model cotex)")
    g.add_argument("--lambda-js", type=_amount, default=100.0,
                   help="cotex: weight of the agreement term (published 100)")
    g.add_argument("--threshold", default="flexmatch", choices=THRESHOLDS,
                   help="pseudo_label: confidence threshold policy per class: fixed (--tau), flexmatch (curriculum "
                   "from the classes the pool has claimed), freematch (EMA of the confidence), adacm (from the "
                   "labelled frames after each epoch); see README")
    g.add_argument("--tau", type=_number(float, 0.0, 1.0), default=0.95,
                   help="pseudo_label: the fixed threshold, and flexmatch's top threshold")
    g.add_argument("--lambda-u", type=_amount, default=1.0, help="pseudo_label: weight of the unlabelled term")
    g.add_argument("--mu", type=_positive_int, default=7,
                   help="pseudo_label: unlabelled faces per labelled sample of a batch")
    g.add_argument("--pl-teacher", default="ema", choices=("ema", "student"),
                   help="pseudo_label: who labels the weak views: the EMA teacher (--ema-decay; validated and saved "
                   "with --select auto) or the student without gradient (in the same forward pass)")
    g.add_argument("--strong-ops", type=_positive_int, default=2,
                   help="pseudo_label: RandAugment operations per strong view (before the cutout)")
    g.add_argument("--unlabelled", action="append", default=None, metavar="DIR",
                   help="pseudo_label: a folder of aligned face images to pseudo-label too (repeatable; flat, or "
                   "class folders whose names are only used to measure precision); training frames without an "
                   "EXPR label are always in the pool")
    g.add_argument("--unlabelled-align", action="store_true",
                   help="pseudo_label: the --unlabelled images are photos, not aligned crops: find the face in each "
                   "(dlib HOG, the 68 landmarks) and align it to the 112 px template as create_database.py does, once "
                   "when the pool is built; images without a face are left out")
    g.add_argument("--unlabelled-truth", default=None,
                   help="pseudo_label: JSON of the --unlabelled images' hidden classes, for the precision columns of "
                   "log.csv only (e.g. the mini dataset's unlabelled_faces_truth.json)")
    g.add_argument("--js", default="published", choices=("published", "per_sample"),
                   help="cotex agreement term: published (KL entries averaged over batch x classes, i.e. the "
                   "Jensen-Shannon divergence / 6) or per_sample (the divergence itself, summed over classes)")
    g.add_argument("--consistency", default="missing", choices=("missing", "all"),
                   help="consistency per task on the samples missing that label (MTMT) or on all samples")
    g.add_argument("--consistency-weight", type=_amount, default=0.4,
                   help="maximum consistency weight (0: no consistency, the teacher is just an EMA of the weights)")
    g.add_argument("--rampup-epochs", type=_amount, default=15, help="sigmoid ramp-up length of the consistency weight")
    g.add_argument("--rampup-by", default="step", choices=("step", "epoch"),
                   help="ramp the consistency weight by the fractional epoch of each step (ours) or by the whole "
                        "epoch number (MTMT's code)")
    g.add_argument("--teacher-bn", default="eval", choices=("eval", "train"),
                   help="BatchNorm of the teacher when it makes its targets: running statistics (ours) or batch "
                        "statistics (MTMT's code)")
    g.add_argument("--ccc-loss", default="ours", choices=("ours", "reference"),
                   help="VA loss 1 - CCC over the valid entries with population statistics (ours), or MTMT's: "
                        "unbiased variances, covariance of the valid entries divided by the whole batch size")
    g.add_argument("--expr-loss-classes", type=int, default=0, choices=(0, 8),
                   help="EXPR cross-entropy over the classes served (0, ours) or over all 8 logits of the mtmt "
                        "layout with the unused slot ignored as a target (8, MTMT's code)")
    g.add_argument("--ema-decay", type=_probability, default=0.99,
                   help="teacher EMA decay (after the 1-1/(step+1) warm-up)")
    g.add_argument("--rank-weight", type=_amount, default=12.0, help="weight of the self-cure rank term (mtmt model)")
    g.add_argument("--select", default="auto", choices=("auto", "student", "teacher"),
                   help="model that is validated and saved (auto: the teacher when the method keeps one: "
                   "--ssl mean_teacher, or pseudo_label with --pl-teacher ema)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=100, help="epochs to train (MTMT: at most 100)")
    g.add_argument("--stop-after", type=_count, default=0,
                   help="end this invocation after N epochs, to --resume later (e.g. cluster time limits); the "
                   "schedule still plans --epochs (0: run to the end)")
    g.add_argument("--batch-size", type=_positive_int, default=28, help="clips per batch per process")
    g.add_argument("--accum-steps", type=_positive_int, default=1,
                   help="batches whose gradients are accumulated into one optimiser step (effective batch: "
                   "batch size x N x processes); the schedule and the teacher's EMA count optimiser steps")
    g.add_argument("--optimizer", default="adam", choices=("adam", "adamw"),
                   help="adam: L2 weight decay on every parameter (MTMT/TSAV); adamw: decoupled weight decay, "
                   "none on biases, norm weights and the parameters the model exempts")
    g.add_argument("--lr", type=_positive, default=5e-4,
                   help="base learning rate (a model's parameter groups may scale it)")
    g.add_argument("--weight-decay", type=_amount, default=5e-5, help="weight decay (see --optimizer)")
    g.add_argument("--sched", "--schedule", default="none", choices=("none", "cosine", "step"),
                   help="learning-rate schedule, a factor per optimiser step on every scheduled group "
                   "(groups a model declares constant keep their lr)")
    g.add_argument("--warmup-epochs", type=_amount, default=0.0,
                   help="linear learning-rate warm-up, in epochs (fractions allowed)")
    g.add_argument("--min-lr", type=_amount, default=0.0,
                   help="final learning rate of the cosine schedule (each group's floor is scaled like its lr)")
    g.add_argument("--step-epochs", type=_positive_int, default=30, help="step schedule: epochs between decays")
    g.add_argument("--gamma", type=_positive, default=0.1, help="step schedule: decay factor")
    g.add_argument("--clip-grad", type=_amount, default=0.0,
                   help="clip the norm of the whole gradient (all groups, after AMP unscaling) to this (0: off)")
    g.add_argument("--patience", type=_count, default=10,
                   help="stop after this many validations without a better score (0: never)")
    g = p.add_argument_group("validation")
    g.add_argument("--val-samples", type=_count, default=0,
                   help="validate on a fixed seeded subset of this many labelled frames (0: all of them)")
    g.add_argument("--eval-every", type=_positive_int, default=1,
                   help="validate (after the precise-BN pass) and write checkpoints and log rows every N epochs "
                   "and after the last one (a killed run resumes from its last validated epoch); --patience counts "
                   "validations")
    g.add_argument("--eval-batch-size", type=_positive_int, default=64, help="clips per validation step")
    g.add_argument("--precise-bn", type=_count, default=0,
                   help="before validating, recompute BatchNorm statistics of the validated model over this many "
                   "un-augmented training batches (0: keep the running averages)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (torchrun: one GPU per process)")
    g.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
                   help="mixed precision on CUDA (auto: bf16 where supported; none on CPU)")
    g.add_argument("--channels-last", action="store_true", help="channels-last (3D) memory format on the GPU")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    g.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=123,
                   help="seed of the initialisation, sampling and augmentation")
    g.add_argument("--resume", default=None,
                   help="last.pth to continue from (model, teacher, optimiser, RNG, ...); with a checkpoint of "
                   "another folder the continuation is written to --output-dir, which must hold no run (or "
                   "--overwrite)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard logs to OUTPUT_DIR/tb")
    g.add_argument("--log-every", type=_positive_int, default=50, help="TensorBoard: steps between train scalars")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: when stderr is a terminal)")
    return p


def test_parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        description="Predict every frame of every video of a split from the database and write the edition's "
        "submission files (checked, and scored on val); or, with --video, predict one video file and write a "
        "per-frame CSV, a timeline plot and optionally an overlay MP4; or, with --fuse, late-fuse the raw outputs of "
        "earlier split runs into the split's submission files; or, with --lsd, predict every image of a split "
        "folder of an ABAW4 LSD root (predictions.txt, scored on a labelled split).")
    p.add_argument("--checkpoint", default=None,
                   help="best.pth/last.pth of train.py, or a published TSAV/MTMT checkpoint (required unless --fuse)")
    p.add_argument("--fuse", nargs="+", default=None, metavar="RAW",
                   help="late fusion instead of a model: two or more raw/ folders of earlier split runs on this --db "
                   "(one TRACK.npz per track, any layouts); VA and the class and AU probabilities are averaged by "
                   "name onto the edition's classes and AUs and written as this run's submission/, raw/ and "
                   "scores.json (see README, late fusion)")

    def weights(text: str) -> list[float]:
        return [_positive_float(w) for w in text.split(",")]

    p.add_argument("--fuse-weights", type=weights, default=None, metavar="W,W,...",
                   help="with --fuse: one positive weight per folder, in order, comma-separated (default: equal)")
    p.add_argument("--db", default="demo_out/db", help="LMDB database built by create_database.py")
    p.add_argument("--lsd", default=None, metavar="ROOT",
                   help="instead of --db: an ABAW4 LSD root; predict every image of its --split folder (class "
                   "folders: scored; bare images: predictions only) with a frame model that has the six classes "
                   "and write OUT/predictions.txt (rows image,class 0-5: Anger, Disgust, Fear, Happiness, "
                   "Sadness, Surprise), scores.json and confusion.png (see README, LSD predictions)")
    p.add_argument("--split", default="val",
                   help="val: tracks annotated in Validation_Set (scored); test: tracks of --test-lists, "
                   "or every track without annotations; with --lsd: the folder of ROOT to predict (val, train, "
                   "or a folder of test images)")
    p.add_argument("--edition", choices=EDITIONS, default="abaw2021",
                   help="edition whose classes, AU set, file format and metrics to use")
    p.add_argument("--format", choices=("auto",) + tasks.SUBMISSION_FORMATS, default="auto",
                   help="per-video files (2020-2022), one file per task (2023+), or one multi-task file (mtl: "
                   "s-Aff-Wild2 rows image,valence,arousal,expression,aus for the listed images); auto: the "
                   "edition's own (mtl for abaw4, per-video otherwise)")
    p.add_argument("--out", default="demo_out/test_val",
                   help="output folder: this run's files (submission/, raw/, scores.json; with --video the video's "
                   "files; with --lsd predictions.txt, scores.json, confusion.png) are replaced together once "
                   "complete, anything else in it is left alone")
    p.add_argument("--annotations", default=DEFAULT_ANNOTATIONS,
                   help="annotation folder to score val predictions against (evaluate.py)")
    p.add_argument("--test-lists", nargs="*", default=[],
                   help="test-set list files (track names; the task is read from the file name)")
    p.add_argument("--tracks", nargs="*", default=None, help="only these tracks of the split")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="clips (--lsd: images) per forward pass")
    p.add_argument("--chunk", type=_positive_int, default=512,
                   help="consecutive frames decoded together; each crop is decoded once per chunk")
    p.add_argument("--workers", type=_count, default=2, help="DataLoader processes decoding chunks (--lsd: images; "
                   "0: in the main process; --video always decodes in the main process)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast precision on CUDA (ignored on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last (3D) memory format on CUDA")
    p.add_argument("--flip-tta", action="store_true",
                   help="average the outputs of each clip and its mirror image (off by default)")
    p.add_argument("--smooth", type=_positive_int, default=1,
                   help="centred moving average over N frames of VA and the probabilities (1 = off)")
    p.add_argument("--decision", default="auto", choices=("auto", *DECISIONS),
                   help="how raw outputs become VA, EXPR and AU (auto: a published checkpoint's own authors' "
                        "rule, ours otherwise; with --fuse: how the fused probabilities are decided, auto = "
                        "default; see README, decision profiles)")
    p.add_argument("--audio-window", default="auto", choices=("auto", "centred", "reference"),
                   help="audio input (auto: what the checkpoint was trained with; reference for a published "
                        "checkpoint: TSAV's per-frame mel of the waveform)")
    p.add_argument("--au-threshold", type=_probability, default=0.5,
                   help="AU probability threshold for 0/1 outputs (0 to 1)")
    p.add_argument("--faceless", choices=("model", "fill", "hold"), default="model",
                   help="frames without a face: model = the model's own prediction from context (and audio; a "
                   "model of blocks of face frames, e.g. cnu, holds the last face frame's); fill = VA interpolated "
                   "between face frames, EXPR/AU from the nearest face frame; hold = VA interpolated, EXPR/AU held "
                   "from the last face frame before (the first face frame's before any): CNU_ADL's post-processing")
    p.add_argument("--no-raw", action="store_true", help="do not save per-frame raw outputs (.npz)")
    p.add_argument("--video", default=None,
                   help="predict this one video file instead of a database split (any video, any source)")
    p.add_argument("--overlay", action="store_true",
                   help="with --video: also write an MP4 with the face box and predictions drawn, audio kept")
    p.add_argument("--detector", choices=("hog", "cnn"), default="hog", help="with --video: dlib face detector")
    p.add_argument("--detect-every", type=_positive_int, default=5,
                   help="with --video: run the detector every k frames")
    return p
