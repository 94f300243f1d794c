"""CNU_ADL in train.py (issue 16): the two published stages (face network, then the block model on it) and the
joint run, the model's own loss and its log column, the class-cycling sampler, the checkpoint it writes and its
flags' checks. Tiny ResNet-18 face networks on the session's toy database."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch

import train
from app import training
from models.cnu import CNU, CNULoss
from models.registry import load_model
from opts import train_parser
from tasks import LAYOUTS

SCRIPT = Path(__file__).resolve().parents[1] / "shs" / "train_cnu.sh"
CNU_LEARN_EPOCHS = 12  # of the demo's 30: measured EXPR F1 and valence in the test's docstring
TINY = ["--model", "cnu", "--model-size", "small", "--size", "32", "--batch-size", "4", "--samples-per-epoch", "8",
        "--eval-batch-size", "16", "--workers", "0", "--no-tensorboard", "--no-progress", "--device", "cpu",
        "--seed", "3", "--epochs", "1"]


def run_args(db: Path, out: Path, *extra: str):
    return train_parser().parse_args(["--db", str(db), "--output-dir", str(out), *TINY, *extra])


def log_rows(out: Path) -> list[dict]:
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def test_face_stage_then_block_stage_keeps_the_face_network(toy, tmp_path):
    face_run = tmp_path / "face"
    training.run(run_args(toy, face_run, "--layout", "expr7", "--cnu-stage", "face", "--clip-len", "1"))
    face_model = load_model(face_run / "best.pth")
    assert isinstance(face_model, CNU) and face_model.stage == "face" and face_model.layout == LAYOUTS["expr7"]
    assert not hasattr(face_model, "expr_head") and face_model.input_spec.block == "selected"
    block_run = tmp_path / "block"
    training.run(run_args(toy, block_run, "--layout", "cnu", "--cnu-stage", "block", "--clip-len", "4",
                          "--backbone-init", str(face_run / "best.pth"), "--balance-expr", "max"))
    block_model = load_model(block_run / "best.pth")
    assert block_model.stage == "block" and block_model.layout == LAYOUTS["cnu"]
    assert block_model.input_spec.clip_len == 4
    for k, v in face_model.face.state_dict().items():  # frozen through the block stage, BatchNorm statistics too
        assert torch.equal(v, block_model.face.state_dict()[k]), k
    rows = log_rows(block_run)
    assert float(rows[0]["loss_aux"]) > 0 and float(rows[0]["loss_va"]) > 0


def test_joint_run_defaults_and_flags(toy, tmp_path):
    args = training.resolve(run_args(toy, tmp_path / "x"), torch.device("cpu"))
    assert (args.clip_len, args.dilation, args.layout) == (16, 1, "abaw2021")  # the model's own block length
    model = training.make_model(args.__class__(**{**vars(args), "layout": "cnu", "cnu_lstm": True,
                                                  "history_grad": False, "face_lr_scale": 0.5}),
                                LAYOUTS["cnu"], print)
    assert model.lstm and not model.history_grad and model.face_lr_scale == 0.5 and model.stage == "joint"
    assert isinstance(training.model_loss(args, model, None), CNULoss)
    with pytest.raises(ValueError, match="own loss"):
        training.model_loss(train_parser().parse_args(["--db", "x", *TINY, "--loss", "emma"]), model, None)
    with pytest.raises(ValueError, match="--aux-weight is for cnu"):
        training.model_loss(train_parser().parse_args(["--db", "x", "--aux-weight", "2"]), torch.nn.Linear(1, 1), None)
    with pytest.raises(ValueError, match="--cnu-stage is for cnu"):
        training.make_model(train_parser().parse_args(["--db", "x", "--model", "resnet18", "--cnu-stage", "face"]),
                            LAYOUTS["abaw2021"], print)
    with pytest.raises(ValueError, match="EXPR-only layout"):
        training.run(run_args(toy, tmp_path / "bad", "--layout", "cnu", "--cnu-stage", "face"))
    out = tmp_path / "joint"
    result = training.run(run_args(toy, out, "--layout", "cnu", "--clip-len", "3", "--aux-weight", "0"))
    assert result["steps"] == 2
    assert float(log_rows(out)[0]["loss_aux"]) >= 0


def script_calls(tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    """The train.py command lines shs/train_cnu.sh runs, recorded by a stand-in ``python`` (env.sh uses the active
    virtual environment's python: a fake one on PATH records the calls and skips the install)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text('#!/usr/bin/env bash\n[[ $1 == -m ]] && exit 0\nprintf "%s\\x1f" "$@" >> "$CALLS"\n'
                    'echo >> "$CALLS"\n')
    fake.chmod(0o755)
    calls.unlink(missing_ok=True)
    (tmp_path / "face.pth").touch()
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VIRTUAL_ENV": str(tmp_path), "CALLS": str(calls),
               "HOME": str(tmp_path), **env}
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [line.split("\x1f")[:-1] for line in calls.read_text().splitlines()]


def test_recipe_script_runs_the_published_stages(tmp_path):
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    face, block = script_calls(tmp_path, "face.pth", "db", "out", "--epochs", "2")
    assert face[0] == "train.py" and block[0] == "train.py"
    first, second = train_parser().parse_args(face[1:]), train_parser().parse_args(block[1:])
    assert (first.model, first.model_size, first.layout, first.cnu_stage, first.clip_len) == ("cnu", "base", "expr7",
                                                                                              "face", 1)
    assert first.backbone_init == str(tmp_path / "face.pth") and first.output_dir == str(tmp_path / "out" / "face")
    assert (second.layout, second.cnu_stage, second.clip_len, second.aux_weight) == ("cnu", "block", 16, 1.0)
    assert second.backbone_init == str(tmp_path / "out" / "face" / "best.pth")
    for args in (first, second):
        assert (args.size, args.edition, args.balance_expr, args.flip, args.epochs) == (224, "abaw2020", "max", 0.5, 2)
        assert args.shift_scale_rotate == (0.0625, 0.1, 45)
    (joint,) = script_calls(tmp_path, "face.pth", STAGES="joint", LSTM="1")
    joint = train_parser().parse_args(joint[1:])
    assert (joint.cnu_stage, joint.cnu_lstm, joint.history_grad) == ("joint", True, False)
    done = subprocess.run(["bash", str(SCRIPT), "missing.pth"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(tmp_path),
                               "CALLS": str(tmp_path / "calls")})
    assert done.returncode == 2 and "no face-network weights" in done.stderr


@pytest.mark.slow
def test_the_cnu_demo_flags_learn_the_mini_dataset(demo_db, tmp_path):
    """shs/demo_cnu.args for 12 of its 30 epochs on the demo's database (ABAW 2021 files: the same EXPR and
    VA labels as the 2020 files the demo scores), validated once on every EXPR∩VA validation frame through the
    cached block inference: EXPR F1 ≥ 0.6 and valence CCC ≥ 0.5, what the demo promises."""
    db, _ = demo_db
    out = tmp_path / "run"
    assert train.main([f"@{SCRIPT.parent / 'demo_cnu.args'}", "--db", str(db), "--edition", "abaw2021",
                       "--output-dir", str(out), "--no-progress", "--epochs", str(CNU_LEARN_EPOCHS),
                       "--eval-every", str(CNU_LEARN_EPOCHS)]) == 0
    last = log_rows(out)[-1]
    assert float(last["expr_f1"]) >= 0.6 and float(last["ccc_valence"]) >= 0.5, last
