"""train.py / app.training: resume equality, 2-process DDP, bad inputs, checkpoints, predictions, learning."""

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from toy_db import make_toy_db

import train
from app import checkpoints, training, validation
from app.inference import db_track_source, fill_faceless, predict_source
from app.split_run import predict_tracks, tracks_of_split
from app.submission import read_per_video_folder, write_per_video
from data.clips import ClipDataset
from models.losses import MultiTaskLoss
from models.registry import build_model, load_model
from opts import test_parser as predict_parser
from opts import train_parser
from tasks import get_edition, get_layout
from utils.checkpoint import read_checkpoint
from utils.inputs import InputSpec
from utils.outputs import decide

ROOT = Path(__file__).resolve().parents[1]
# A model of full width on tiny inputs: 2 frames of 16x16 and 0.3 s of audio; 2 steps of 2 clips per epoch.
TINY = ["--size", "16", "--clip-len", "2", "--dilation", "2", "--audio-seconds", "0.3", "--batch-size", "2",
        "--samples-per-epoch", "4", "--val-samples", "8", "--eval-batch-size", "8", "--workers", "0",
        "--no-tensorboard", "--no-progress", "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_toy_db(tmp_path_factory.mktemp("toy") / "db")


def args_for(db: Path, out: Path, *extra: str):
    return train_parser().parse_args(["--db", str(db), "--output-dir", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def mt_run(db, tmp_path_factory):
    """One epoch of the MTMT model with the mean teacher (the teacher is selected and saved)."""
    out = tmp_path_factory.mktemp("mt_run")
    result = training.run(args_for(db, out, "--model", "mtmt", "--layout", "mtmt", "--ssl", "mean_teacher",
                                 "--epochs", "1"))
    return out, result


def test_loss_sees_only_valid_labels_of_a_batch(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=1, size=16))
    batch = [ds[i] for i in range(8)]
    targets = {k: torch.stack([b[k] for b in batch]) for k in ("expr", "au", "va")}
    valid = {k: torch.stack([b[f"{k}_valid"] for b in batch]) for k in ("expr", "au", "va")}
    assert not valid["expr"].all() and not valid["va"].all() and not valid["au"].all()
    out = torch.randn(8, 22, requires_grad=True)
    loss = MultiTaskLoss("abaw2021")
    total, _ = loss(out, targets, valid)
    scrambled = {"expr": torch.where(valid["expr"], targets["expr"], 3),
                 "au": torch.where(valid["au"], targets["au"], 0.5),
                 "va": torch.where(valid["va"][:, None], targets["va"], 0.9)}
    torch.testing.assert_close(loss(out, scrambled, valid)[0], total)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(db, tmp_path, capsys):
    """Also: --overwrite replaces an earlier run ("straight") and removes stale checkpoint temp files only."""
    extra = ["--model", "mtmt", "--layout", "mtmt", "--ssl", "mean_teacher", "--sched", "cosine",
             "--flip", "0.5", "--jitter", "0.2", "--precise-bn", "1"]
    stale, live = overwritten_run(tmp_path / "straight")
    training.run(args_for(db, tmp_path / "straight", *extra, "--epochs", "2", "--overwrite"))
    check_overwritten(tmp_path / "straight", stale, live, capsys.readouterr().out)
    training.run(args_for(db, tmp_path / "split", *extra, "--epochs", "2", "--stop-after", "1"))
    training.run(args_for(db, tmp_path / "split", *extra, "--epochs", "2",
                        "--resume", str(tmp_path / "split" / "last.pth")))
    a = read_checkpoint(tmp_path / "straight" / "last.pth")
    b = read_checkpoint(tmp_path / "split" / "last.pth")
    assert a["step"] == b["step"] == 4 and a["teacher"]["step"] == b["teacher"]["step"] == 4
    for key in ("student", "model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key} {name}"
    for name, tensor in a["teacher"]["teacher"].items():
        assert torch.equal(tensor, b["teacher"]["teacher"][name]), name
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["scheduler"] == b["scheduler"] and a["sampler"] == b["sampler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[0] == "0" and rows[2].split(",")[0] == "1"


def test_eval_every_validates_every_n_epochs_and_the_last(db, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    result = training.run(args_for(db, out, "--model", "resnet18", "--epochs", "3", "--eval-every", "2"))
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [r["val_total"] != "" for r in rows] == [False, True, True]  # epoch 1 (every 2nd) and the last
    assert "epoch 0: loss" in capsys.readouterr().out and result["best_epoch"] in (1, 2)
    assert read_checkpoint(out / "last.pth")["epoch"] == 2 and (out / "best.pth").is_file()
    # killed in epoch 1, after the unvalidated epoch 0: neither a checkpoint nor a log row of epoch 0 exists,
    # so log.csv and last.pth never disagree (a resume would start again at the last validated epoch)
    calls = []
    real = training.train_one_epoch

    def killed_in_epoch_1(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(training, "train_one_epoch", killed_in_epoch_1)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        training.run(args_for(db, part, "--model", "resnet18", "--epochs", "3", "--eval-every", "2"))
    assert not (part / "last.pth").exists() and not (part / "log.csv").exists()
    # a --stop-after stop validates too, so the run's best.pth always exists
    assert training.validates(0, 5, 1, 10) and not training.validates(1, 5, 10, 10)


def overwritten_run(out: Path) -> tuple[Path, Path]:
    """An earlier run in ``out``, a file of the user's, and two checkpoint temp files: a stale one and a live one."""
    old_run(out)
    stale = out / f".last.pth.{os.getpid() + 10**7}.tmp"  # no such process: left by a killed save
    live = out / f".best.pth.{os.getppid()}.tmp"  # a running process may still write it
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    return stale, live


def check_overwritten(out: Path, stale: Path, live: Path, said: str) -> None:
    assert "--overwrite: removed the previous run's config.json, last.pth, best.pth, log.csv, tb" in said
    assert f"removed {stale}" in said
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [live.name, "best.pth", "config.json", "last.pth", "log.csv", "notes.txt"])  # --no-tensorboard: no tb/
    assert (out / "notes.txt").read_bytes() == b"old notes.txt"
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()] == ["epoch", "0", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = training.run(train_parser().parse_args(argv))
    torch.save({"student": result["model"].state_dict(), "teacher": result["teacher"].state_dict(),
                "best": result["best_score"]}, Path(out) / f"rank{rank}.pt")


def test_two_process_ddp_on_cpu_keeps_ranks_in_sync(db, tmp_path):
    argv = ["--db", str(db), "--output-dir", str(tmp_path / "run"), *TINY, "--epochs", "1", "--ssl", "mean_teacher",
            "--samples-per-epoch", "8", "--precise-bn", "1"]
    mp.spawn(_ddp_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["best"] == r1["best"]
    for key in ("student", "teacher"):
        for name, tensor in r0[key].items():
            assert torch.equal(tensor, r1[key][name]), f"{key} {name}"
    saved = read_checkpoint(tmp_path / "run" / "last.pth")
    assert saved["step"] == 2  # 8 clips over 2 processes of batch 2
    assert all(torch.equal(t, r0["teacher"][k]) for k, t in saved["model"].items())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["select"] == "teacher"


@pytest.mark.parametrize("case", ["mask", "empty_split", "corrupt_resume", "corrupt_init", "other_layout"])
def test_bad_inputs_fail_before_training(case, db, mt_run, tmp_path, capsys):
    argv = ["--db", str(db), "--output-dir", str(tmp_path / "out"), *TINY, "--epochs", "1"]
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    if case == "mask":
        argv[1] = str(make_toy_db(tmp_path / "tsav_only", mask_kinds=("tsav",)))
        argv += ["--mask", "mtmt"]
        message = "masks"
    elif case == "empty_split":
        argv[1] = str(make_toy_db(tmp_path / "no_val", with_val=False))
        message = "no track annotated in Validation_Set"
    elif case == "corrupt_resume":
        argv += ["--resume", str(corrupt)]
        message = "not a readable PyTorch checkpoint"
    elif case == "corrupt_init":
        argv += ["--init-from", str(corrupt)]
        message = "not a readable PyTorch checkpoint"
    else:
        argv += ["--resume", str(mt_run[0] / "last.pth"), "--ssl", "mean_teacher"]  # an mtmt-layout run
        message = "layout 'mtmt'"
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error:") and message in err
    assert not (tmp_path / "out" / "last.pth").exists()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoints.save_atomic({"x": torch.ones(3)}, path)

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_atomic({"x": torch.zeros(3)}, path)
    assert torch.equal(read_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_saved_model_is_the_evaluated_one_and_loads_with_load_model(mt_run):
    out, result = mt_run
    best, last = read_checkpoint(out / "best.pth"), read_checkpoint(out / "last.pth")
    assert best["selected"] == "teacher" and best["layout"] == "mtmt" and "optimizer" not in best
    assert best["scores"]["total"] == pytest.approx(result["best_score"])
    teacher = last["teacher"]["teacher"]
    model = load_model(out / "best.pth")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, teacher[name]), name
    assert model.layout.name == "mtmt"


def test_init_from_copies_streams_across_architectures(db, tmp_path, capsys):
    torch.manual_seed(5)
    tsav = build_model("tsav", "abaw2020")
    torch.save({"state_dict": tsav.state_dict()}, tmp_path / "TSAV.pth.tar")  # the published file's form
    args = args_for(db, tmp_path, "--model", "mtmt", "--layout", "mtmt", "--init-from", str(tmp_path / "TSAV.pth.tar"))
    model = training.make_model(training.resolve(args, torch.device("cpu")), get_layout("mtmt"), print)
    own, source = model.state_dict(), tsav.state_dict()
    for key in ("audio_model.resnet.conv1.weight", "video_model.r2plus1d.stem.0.weight",
                "video_model.r2plus1d.layer4.1.conv2.0.3.weight"):
        assert torch.equal(own[key], source[key])
    assert "streams" in capsys.readouterr().out
    args = args_for(db, tmp_path, "--layout", "abaw2020", "--init-from", str(tmp_path / "TSAV.pth.tar"))
    same = training.make_model(training.resolve(args, torch.device("cpu")), get_layout("abaw2020"), print)
    assert all(torch.equal(t, source[k]) for k, t in same.state_dict().items())  # same model: every weight


def test_predict_every_frame_of_a_track_and_write_submission(db, mt_run, tmp_path):
    model = load_model(mt_run[0] / "best.pth")
    assert model.input_spec == InputSpec(clip_len=2, dilation=2, size=16, audio_seconds=0.3)
    scores = predict_source(model, db_track_source(str(db), "a"), batch_size=7)  # frames 5 and 6 have no face
    preds = decide(scores, model.layout, get_edition("abaw2021"))
    assert preds["VA"].shape == (30, 2) and preds["EXPR"].shape == (30,) and preds["AU"].shape == (30, 12)
    assert np.abs(preds["VA"]).max() <= 1 and set(np.unique(preds["AU"])) <= {0, 1}
    # test_val_aff2.py's split mode: every track of the split, for each task the tracks annotated for it
    args = predict_parser().parse_args(["--checkpoint", str(mt_run[0] / "best.pth"), "--db", str(db),
                                        "--batch-size", "16", "--workers", "0", "--no-raw"])
    wanted = tracks_of_split(str(db), "val", [])
    tracks = sorted({t for ts in wanted.values() for t in ts})
    split, *_ = predict_tracks(args, model, torch.device("cpu"), get_edition("abaw2021"), wanted, tracks, tmp_path)
    assert sorted(split) == ["AU", "EXPR", "VA"] and sorted(split["EXPR"]) == ["b_left", "b_right", "c"]
    assert sorted(split["VA"]) == ["b_left", "b_right"]
    back = read_per_video_folder(write_per_video(tmp_path / "pred", split, "abaw2021"), "abaw2021")
    assert len(back["EXPR"]["c"]) == 20 and len(back["AU"]["b_left"]) == 24


def test_faceless_frames_are_filled_from_their_neighbours():
    face = np.array([False, True, True, False, False, False, True, False])
    va = np.arange(16, dtype=float).reshape(8, 2)
    expr_prob = np.arange(8)[:, None] * np.array([[10.0, 1.0]])  # row k: (10k, k)
    au_prob = np.eye(8, 3)
    out = fill_faceless({"va": va, "expr_prob": expr_prob, "au_prob": au_prob}, face)
    np.testing.assert_allclose(out["va"][:, 0], [2, 2, 4, 6, 8, 10, 12, 12])  # linear inside, held at the ends
    np.testing.assert_array_equal(out["expr_prob"][:, 0], [10, 10, 20, 20, 20, 60, 60, 60])  # nearest face,
    nearest = [1, 1, 2, 2, 2, 6, 6, 6]  # the earlier one on ties; every score of a frame comes from that one frame
    np.testing.assert_array_equal(out["expr_prob"], expr_prob[nearest])
    np.testing.assert_array_equal(out["au_prob"], au_prob[nearest])
    assert fill_faceless({"va": va}, np.zeros(8, bool))["va"] is va  # no face at all: the model's output


def test_precise_bn_recomputes_statistics_from_plain_clips(db):
    args = args_for(db, Path("unused"), "--batch-size", "6")
    spec = training.input_spec(args)
    ds = ClipDataset(db, "train", "abaw2021", spec)
    model = build_model("tsav", "abaw2021", dropout=0.5, input_spec=spec)
    bn = model.video_model.r2plus1d.stem[1]
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    model.train()
    with torch.no_grad():
        model(model.prepare(torch.utils.data.default_collate([ds[0], ds[1]]), torch.device("cpu")))  # other stats
    seen.clear()
    validation.precise_bn(model, ds, list(range(3, 15)), args, torch.device("cpu"))
    assert len(seen) == 2 and model.training and bn.momentum == 0.1
    expected = torch.stack([x.mean(dim=(0, 2, 3, 4)) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)
    before = bn.running_var.clone()
    validation.precise_bn(model, ds, list(range(3, 15)), args, torch.device("cpu"))
    torch.testing.assert_close(bn.running_var, before, rtol=0, atol=0)  # a plain average: same clips, same stats


def demo_args_file() -> Path:
    """The train.py flags of the TSAV demo (bash shs/demo.sh)."""
    return ROOT / "shs" / "demo_tsav.args"


@pytest.mark.slow
def test_learns_the_mini_dataset(demo_db, tmp_path):
    """The demo's CPU run must score far above chance on the validation videos: the validation of its last epoch
    (the demo's fixed 300 validation frames, through the inference path and decision rule of test_val_aff2.py,
    official metrics; the full demo scores every frame with test_val_aff2.py itself)."""
    db, _ = demo_db
    out = tmp_path / "run"
    # The demo's flags, 24 of its 40 epochs and one validation (≈ 8 min on 2 cores). Measured on 2026-12-01
    # (every validation frame): EXPR F1 0.74, valence CCC 0.74; at 16 epochs EXPR F1 0.56, valence 0.59, so 24.
    # Arousal (the sound's loudness and the face's jitter in the mini dataset) is learnt late and unevenly (0.05 to
    # 0.47 at 24-28 epochs across runs), so it is not asserted here; the full demo's figures (README) cover it.
    assert train.main([f"@{demo_args_file()}", "--db", str(db), "--output-dir", str(out), "--no-progress",
                       "--epochs", "24", "--eval-every", "24"]) == 0
    with open(out / "log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    expr_f1, valence = float(last["expr_f1"]), float(last["ccc_valence"])
    assert expr_f1 >= 0.6 and valence >= 0.5, last


def old_run(out: Path) -> dict[str, bytes]:
    """A folder holding a (fake) earlier run and a file of the user's; returns every file's bytes."""
    (out / "tb").mkdir(parents=True)
    for name in ("config.json", "last.pth", "best.pth", "log.csv", "tb/events", "notes.txt"):
        (out / name).write_bytes(f"old {name}".encode())
    return {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_an_existing_run_is_refused_before_any_work(db, mt_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    before = old_run(out)
    monkeypatch.setattr(training, "make_datasets", lambda *a: pytest.fail("read the database before refusing"))
    base = ["--db", str(db), "--output-dir", str(out), *TINY, "--epochs", "1"]
    cases = [([], "holds a training run (config.json, last.pth, best.pth, log.csv, tb)"),
             (["--model", "mtmt", "--layout", "mtmt", "--ssl", "mean_teacher", "--resume", str(mt_run[0] / "last.pth")],
              f"holds another run than --resume {mt_run[0] / 'last.pth'}"),
             (["--resume", str(out / "last.pth"), "--overwrite"], "--overwrite would delete the run")]
    for extra, message in cases:
        assert train.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"train.py: error: {out}: ") and message in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_only_rank_0_looks_at_the_output_folder(db, tmp_path, monkeypatch):
    """Every rank stops on rank 0's answer; the others never decide on their own (DDP)."""
    args = args_for(db, old_run(tmp_path / "out") and tmp_path / "out", "--epochs", "1")
    rank1 = training.dist.DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    monkeypatch.setattr(training.run_dir, "output_dir_problem", lambda *a: pytest.fail("rank 1 decided"))
    monkeypatch.setattr(training.dist, "broadcast_object", lambda obj: "rank 0: refused" if obj is None else obj)
    with pytest.raises(ValueError, match="^rank 0: refused$"):
        training.setup(args, rank1)


@pytest.mark.parametrize("flag,value", [
    ("--lr", "0"), ("--lr", "-1e-4"), ("--batch-size", "0"), ("--epochs", "-1"), ("--workers", "-1"),
    ("--audio-seconds", "0"), ("--epoch-fraction", "0"), ("--samples-per-epoch", "-8"), ("--val-samples", "-1"),
    ("--patience", "-2"), ("--stop-after", "-1"), ("--jitter", "1"), ("--flip", "1.5"), ("--dropout", "1"),
    ("--ema-decay", "2"), ("--seed", "-1"), ("--weight-decay", "nan"), ("--clip-grad", "-1"), ("--gamma", "0"),
    ("--precise-bn", "-1"), ("--task-weights", "expr=-1"), ("--task-weights", "pose=1"), ("--size", "0"),
])
def test_nonsensical_flag_values_are_refused_when_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train_parser().parse_args([flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"argument {flag}: expected" in err, err


def test_zero_means_off_or_automatic_where_documented():
    args = train_parser().parse_args(["--workers", "0", "--samples-per-epoch", "0", "--patience", "0",
                                      "--stop-after", "0", "--val-samples", "0", "--precise-bn", "0", "--jitter", "0",
                                      "--clip-grad", "0", "--task-weights", "expr=0,au=1,va=1"])
    assert args.workers == args.patience == args.precise_bn == 0 and args.task_weights == "expr=0,au=1,va=1"


def _refused_worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        training.run(train_parser().parse_args(argv))
    except training.SetupError as e:
        (Path(out) / f"rank{rank}.txt").write_text(str(e))


@pytest.mark.slow  # two spawned processes: ~25 s on 2 busy cores, most of it importing torch
def test_every_ddp_rank_stops_on_an_existing_run(db, tmp_path):
    """Rank 0 decides and both processes stop with its answer (none hangs in a collective)."""
    out = tmp_path / "run"
    before = old_run(out)
    argv = ["--db", str(db), "--output-dir", str(out), *TINY, "--epochs", "1"]
    mp.spawn(_refused_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert said[0] == said[1] and said[0].startswith(f"{out}: holds a training run")
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
