"""Masked CoTEX in train.py: ``--ssl cotex`` over the peers of ``--model cotex`` on an LSD image folder (--lsd) or
the database, its flags, its log, a resumed run, the checkpoint it writes, and shs/train_cotex.sh's recipe."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from test_lsd import make_split

import test_val_aff2
import train
from app import training
from models.cotex import CoTEX
from models.registry import load_model
from models.ssl import CoTraining
from opts import train_parser
from tasks import LAYOUTS
from utils.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "shs" / "train_cotex.sh"
TINY = ["--model", "cotex", "--model-size", "tiny", "--ssl", "cotex", "--size", "32", "--batch-size", "4",
        "--samples-per-epoch", "8", "--eval-batch-size", "8", "--workers", "0", "--no-tensorboard", "--no-progress",
        "--device", "cpu", "--seed", "1", "--optimizer", "adamw", "--mask-ratio", "0.5"]


@pytest.fixture(scope="module")
def lsd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lsd")
    make_split(root, "train", per_class=3)
    make_split(root, "val", per_class=2)
    return root


def run_args(lsd: Path, out: Path, *extra: str):
    return train_parser().parse_args(["--lsd", str(lsd), "--output-dir", str(out), *TINY, *extra])


def test_a_cotex_run_on_lsd_images_logs_both_terms_and_saves_a_loadable_peer_model(lsd, tmp_path, capsys):
    out = tmp_path / "run"
    result = training.run(run_args(lsd, out, "--epochs", "2", "--peers", "3"))
    assert result["steps"] == 4 and result["epochs"] == 2
    printed = capsys.readouterr().out
    assert "layout lsd, edition lsd" in printed and "val EXPR" in printed and "18 images of" in printed
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[-1]["loss_js"]) >= 0 and float(rows[-1]["loss_expr"]) > 0
    assert rows[-1]["val_expr"] == rows[-1]["expr_f1"] != ""  # the lsd score is the macro-F1
    model = load_model(out / "best.pth")
    assert isinstance(model, CoTEX) and len(model.peers) == 3 and model.variant == "tiny"
    assert not model.training and model.layout == LAYOUTS["lsd"] and model.input_spec.size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model({"image": x}).shape == (2, 6)  # evaluation: the summed logits


def test_a_resumed_cotex_run_draws_the_same_masks_and_views_as_an_uninterrupted_one(lsd, tmp_path):
    training.run(run_args(lsd, tmp_path / "straight", "--epochs", "2"))
    training.run(run_args(lsd, tmp_path / "split", "--epochs", "2", "--stop-after", "1"))
    training.run(run_args(lsd, tmp_path / "split", "--epochs", "2", "--resume", str(tmp_path / "split" / "last.pth")))
    a, b = (read_checkpoint(tmp_path / run / "last.pth") for run in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_flags_pair_the_model_and_the_method_and_stay_with_their_models(lsd, tmp_path):
    with pytest.raises(training.SetupError, match="--model cotex trains with --ssl cotex"):
        training.run(run_args(lsd, tmp_path / "a", "--ssl", "none"))
    with pytest.raises(training.SetupError, match="edition lsd"):
        training.run(run_args(lsd, tmp_path / "b", "--edition", "abaw4"))
    with pytest.raises(training.SetupError, match="no such folder"):
        training.run(run_args(tmp_path / "nowhere", tmp_path / "c"))
    frame = train_parser().parse_args(["--model", "resnet18", "--size", "32", "--peers", "2"])
    with pytest.raises(ValueError, match="--peers is for cotex, not resnet18"):
        training.make_model(frame, LAYOUTS["abaw2021"], print)
    with pytest.raises(ValueError, match="peers of --model cotex"):
        CoTraining(torch.nn.Linear(2, 2), train_parser().parse_args([]))
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--mask-ratio", "1"])


def test_a_frame_model_trains_on_lsd_images_without_co_training(lsd, tmp_path):
    args = train_parser().parse_args(["--lsd", str(lsd), "--output-dir", str(tmp_path / "r"), "--model", "resnet18",
                                      "--size", "32", "--batch-size", "4", "--samples-per-epoch", "8", "--workers", "0",
                                      "--no-tensorboard", "--no-progress", "--epochs", "1"])
    result = training.run(args)
    assert result["steps"] == 2 and load_model(tmp_path / "r" / "best.pth").layout == LAYOUTS["lsd"]


def test_the_co_training_loss_replaces_the_supervised_one_and_masks_rows_without_a_label():
    method = CoTraining(CoTEX(peers=2, variant="tiny"), train_parser().parse_args(["--lambda-js", "10"]))
    logits = torch.randn(2, 3, 6)
    targets, valid = {"expr": torch.tensor([1, 5, 0])}, {"expr": torch.tensor([True, False, True])}
    total, parts = method.supervised_loss(logits, targets, valid, criterion=None)
    ce = sum(torch.nn.functional.cross_entropy(logits[i, [0, 2]], targets["expr"][[0, 2]]) for i in range(2)) / 2
    torch.testing.assert_close(parts["expr"], ce)
    torch.testing.assert_close(total, ce + 10 * parts["js"])
    with pytest.raises(ValueError, match="N×B×C"):
        method.supervised_loss(logits.sum(0), targets, valid, criterion=None)


def script_flags(**env: str) -> list[str]:
    """The train.py flags of shs/train_cotex.sh: its flags=( ... ) array expanded by bash with ``env``."""
    lines = SCRIPT.read_text().splitlines()
    start, values = lines.index("flags=("), {"MAE": "m.pth", "LSD": "lsd", "OUT": "out", "MASK": "0", "PEERS": "2",
                                             "NPROC": "1", "AMP": "none", "WORKERS": "8", "BATCH": "64", **env}
    code = ("".join(f"{k}={v}\n" for k, v in values.items()) + "\n".join(lines[start:lines.index(")", start) + 1])
            + '\nprintf "%s\\0" "${flags[@]}"\n')
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]


def test_recipe_script_is_valid_bash_and_its_flags_are_the_published_recipe():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    args = train_parser().parse_args(script_flags())
    assert (args.model, args.model_size, args.peers, args.mask_ratio, args.ssl) == ("cotex", "base", 2, 0.0, "cotex")
    assert (args.lsd, args.backbone_init, args.size, args.flip, args.drop_path) == ("lsd", "m.pth", 224, 0.5, 0.1)
    assert (args.optimizer, args.lr, args.weight_decay, args.layer_decay) == ("adamw", 5e-4, 0.05, 0.65)
    assert (args.batch_size, args.accum_steps, args.clip_grad) == (64, 4, 0.05)
    assert (args.lambda_js, args.js) == (100, "published")
    assert (args.sched, args.warmup_epochs, args.epochs, args.min_lr) == ("cosine", 5, 6, 1e-6)
    masked = train_parser().parse_args(script_flags(MASK="0.75", BATCH="256", NPROC="4"))
    assert masked.mask_ratio == 0.75 and masked.batch_size == 64  # 64 × int(1 / 0.25) = 256 over 4 processes
    line = next(x for x in SCRIPT.read_text().splitlines() if x.startswith("BATCH=$(awk")).rstrip(" \\")
    for mask, batch in (("0", "64"), ("0.5", "128"), ("0.75", "256"), ("0.9", "640"), ("0.999", "4096")):
        done = subprocess.run(["bash", "-c", f"MASK={mask}; {line}; echo $BATCH"], capture_output=True,
                              text=True, check=True)
        assert done.stdout.strip() == batch, mask  # the published rule, computed by the script
    assert subprocess.run(["bash", "-c", f"MASK=1; {line}"]).returncode != 0


@pytest.mark.slow
def test_the_cotex_demo_flags_learn_the_synthetic_to_real_gap(demo_lsd, tmp_path):
    """shs/demo_cotex.args for 8 of its 20 epochs (≈ 30 s) on the mini LSD set, scored on the real validation
    crops by test_val_aff2.py --lsd as the demo scores them: macro-F1 ≥ 0.6 over the 6 classes."""
    out = tmp_path / "run"
    assert train.main([f"@{ROOT / 'shs' / 'demo_cotex.args'}", "--lsd", str(demo_lsd), "--output-dir", str(out),
                       "--no-progress", "--no-tensorboard", "--epochs", "8"]) == 0
    pred = tmp_path / "pred"
    assert test_val_aff2.main(["--checkpoint", str(out / "best.pth"), "--lsd", str(demo_lsd), "--split", "val",
                               "--out", str(pred), "--workers", "1"]) == 0
    scores = json.loads((pred / "scores.json").read_text())
    assert scores["expr"]["f1"] >= 0.6, scores
    assert (pred / "confusion.png").stat().st_size > 0 and (pred / "predictions.txt").is_file()
