"""EMMA in train.py: its published losses (``--loss emma``) against hand-computed values, the model flags
(``--model-size``, ``--dan-init``, ``--dan-bn``) and where they are refused, one epoch of the tiny EMMA on the
toy database, and the flag list of shs/train_emma.sh."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import test_val_aff2
import train
from app import training
from models import losses
from models.dan import DAN
from models.emma import EMMA, VARIANTS
from models.losses import EMMA_AU_POS_WEIGHT, MultiTaskLoss, emma_au_bce, emma_au_pos_weight, emma_ccc
from models.registry import MODELS, load_model
from opts import LOSSES, MODEL_SIZES, train_parser
from tasks import AU_NAMES_12, LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "shs" / "train_emma.sh"
# The tiny EMMA on 32 px frames (2×2 patches); 2 steps of 2 frames, 8 validation frames.
TINY = ["--model", "emma", "--model-size", "tiny", "--layout", "emma", "--size", "32", "--batch-size", "2",
        "--samples-per-epoch", "4", "--val-samples", "8", "--eval-batch-size", "8", "--workers", "0",
        "--no-tensorboard", "--no-progress", "--device", "cpu", "--seed", "1"]


def published_ccc(x: list[float], y: list[float], eps: float = 1e-4) -> float:
    """EMMA's CCC as its code forms it, in plain floats: ρ (denominator padded by eps) times the unbiased
    standard deviations, over s_x² + s_y² + (x̄ − ȳ)² + eps."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    rho = sxy / (math.sqrt(sxx) * math.sqrt(syy) + eps)
    sx, sy = math.sqrt(sxx / (n - 1)), math.sqrt(syy / (n - 1))
    return 2 * rho * sx * sy / (sx**2 + sy**2 + (mx - my) ** 2 + eps)


# ---------------------------------------------------------------------------------------------------
# Losses


def test_emma_ccc_has_eps_in_the_denominator_and_unbiased_statistics():
    # x = y = [0, 1]: Sxx = Syy = Sxy = 0.5, s² = 0.5 → CCC = (0.5 / 0.5001) / 1.0001, not 1
    perfect = emma_ccc(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert perfect.item() == pytest.approx((0.5 / 0.5001) / 1.0001, rel=1e-6)
    assert 1 - perfect.item() == pytest.approx(2.9993e-4, rel=1e-3)
    x, y = [0.2, -0.4, 0.6, 0.1], [0.1, -0.2, 0.3, 0.5]
    got = emma_ccc(torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(published_ccc(x, y), rel=1e-5)
    assert got != pytest.approx(losses.concordance_cc(torch.tensor(x), torch.tensor(y)).item(), rel=1e-3)
    # a constant prediction: CCC 0 and finite (zero) gradients, no NaN from √0
    flat = torch.zeros(4, requires_grad=True)
    value = emma_ccc(flat, torch.tensor(y))
    value.backward()
    assert abs(value.item()) < 1e-9 and torch.isfinite(flat.grad).all()


def test_emma_va_loss_sums_one_minus_ccc_over_the_valid_rows_of_each_dimension():
    v, a = [0.2, -0.4, 0.6, 0.1, 0.9], [0.3, 0.0, -0.5, 0.2, -0.1]
    tv, ta = [0.1, -0.2, 0.3, 0.5, -5.0], [0.2, 0.1, -0.4, 0.0, -5.0]  # the last row: the −5 sentinel
    out = torch.zeros(5, 22)
    out[:, 0], out[:, 1] = torch.tensor(v), torch.tensor(a)
    target = torch.tensor([tv, ta]).T
    crit = MultiTaskLoss("emma", kind="emma")
    _, parts = crit(out, {"va": target}, {"va": torch.tensor([True] * 4 + [False])})
    expected = (1 - published_ccc(v[:4], tv[:4])) + (1 - published_ccc(a[:4], ta[:4]))
    assert parts["va"].item() == pytest.approx(expected, rel=1e-5)
    _, read = crit(out, {"va": target})  # validity read from the targets gives the same
    assert read["va"].item() == pytest.approx(expected, rel=1e-5)


def test_emma_au_loss_weights_positives_sums_valid_entries_and_divides_by_the_batch():
    w = [EMMA_AU_POS_WEIGHT[au] for au in AU_NAMES_12]
    assert w[0] == 7.10 and w[7] == 34.05 and w[10] == 0.58 and len(w) == 12
    torch.testing.assert_close(emma_au_pos_weight("emma"), torch.tensor(w))
    logits = torch.zeros(3, 12)
    logits[0, 0], logits[0, 1], logits[1, 10] = 2.0, -1.0, 0.5
    logits[2, 5] = float("nan")  # an invalid entry: neither its value nor its target may matter
    target = torch.zeros(3, 12)
    target[0, 0], target[1, 10], target[1, 3] = 1, 1, 1
    target[2, 5] = -1
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[2] = False  # a frame without AU labels still counts in the batch size
    valid[1, 4] = False
    logits.requires_grad_(True)
    got = emma_au_bce(logits, target, valid, torch.tensor(w))

    def softplus(z: float) -> float:
        return math.log1p(math.exp(z))

    total = 0.0
    for i in range(3):
        for k in range(12):
            if valid[i, k]:
                z = float(logits[i, k].detach())
                total += w[k] * softplus(-z) if target[i, k] == 1 else softplus(z)
    assert got.item() == pytest.approx(total / 3, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[2].abs().sum() == 0 and logits.grad[1, 4] == 0
    none = emma_au_bce(logits, target, torch.zeros(3, 12, dtype=torch.bool), torch.tensor(w))
    assert none.item() == 0 and none.requires_grad


def test_emma_kind_weights_one_each_and_ours_is_unchanged():
    torch.manual_seed(0)
    out = torch.randn(6, 22, requires_grad=True)
    targets = {"va": torch.rand(6, 2) * 2 - 1, "expr": torch.tensor([0, 1, 7, -1, 3, 2]),
               "au": torch.randint(0, 2, (6, 12)).float()}
    crit = MultiTaskLoss("emma", kind="emma")
    assert crit.weights == {"expr": 1.0, "au": 1.0, "va": 1.0}
    total, parts = crit(out, targets)
    torch.testing.assert_close(total, parts["va"] + parts["expr"] + parts["au"])
    expr = nn.functional.cross_entropy(out[[0, 1, 2, 4, 5], 2:10], targets["expr"][[0, 1, 2, 4, 5]])
    torch.testing.assert_close(parts["expr"], expr)
    assert MultiTaskLoss("emma", {"expr": 3.0}, kind="emma").weights == {"expr": 3.0, "au": 1.0, "va": 1.0}
    ours_total, ours = MultiTaskLoss("emma")(out, targets)  # default: today's losses and weights 3/1/1
    assert not torch.allclose(ours["au"], parts["au"]) and not torch.allclose(ours["va"], parts["va"])
    torch.testing.assert_close(ours_total, 3 * ours["expr"] + ours["au"] + ours["va"])


def test_emma_loss_refuses_mtmt_options_and_aus_without_a_weight():
    with pytest.raises(ValueError, match="ccc-loss reference"):
        MultiTaskLoss("emma", ccc="reference", kind="emma")
    with pytest.raises(ValueError, match="expr-loss-classes"):
        MultiTaskLoss("mtmt", expr_classes=8, kind="emma")
    with pytest.raises(ValueError, match="AU20"):
        MultiTaskLoss("abaw2020", kind="emma")
    with pytest.raises(ValueError, match="unknown loss"):
        MultiTaskLoss("emma", kind="tsav")


# ---------------------------------------------------------------------------------------------------
# Flags


def test_opts_spells_the_sizes_and_losses():
    assert set(MODEL_SIZES) == {v for f in MODELS.values() for v in f.variants}
    assert LOSSES == losses.LOSS_KINDS
    args = train_parser().parse_args([])
    assert args.loss == "ours" and args.model_size is None and args.dan_bn is None and args.dan_init is None
    assert args.task_weights == ""  # → each --loss's own default weights


def test_model_flags_reach_emma_and_are_refused_elsewhere(tmp_path):
    args = train_parser().parse_args(TINY + ["--dan-bn", "adapt"])
    model = training.make_model(args, LAYOUTS["emma"], print)
    assert isinstance(model, EMMA) and model.variant == "tiny" and model.dan_bn == "adapt"
    assert model.input_spec.size == 32 and model.cnn.training
    model = training.make_model(train_parser().parse_args(TINY + ["--layer-decay", "1", "--drop-path", "0"]),
                                LAYOUTS["emma"], print)
    assert {g["lr_scale"] for g in model.param_groups(1e-3) if g["name"] != "va_head"} == {1.0}
    assert all(isinstance(b.drop_path1, nn.Identity) for b in model.vit.blocks)  # timm: rate 0 → no DropPath
    frame = ["--model", "resnet18", "--size", "32"]
    for extra, match in ((["--model-size", "tiny"], "no size 'tiny'"), (["--dan-bn", "frozen"], "dan-bn is for emma"),
                         (["--layer-decay", "1"], "layer-decay is for emma"),
                         (["--dan-init", str(tmp_path / "dan.pth")], "dan-init is for emma")):
        with pytest.raises(ValueError, match=match):
            training.make_model(train_parser().parse_args(frame + extra), LAYOUTS["abaw2021"], print)
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--model-size", "huge"])


# ---------------------------------------------------------------------------------------------------
# One epoch end to end


@pytest.mark.slow  # one epoch of the tiny EMMA (ViT + DAN on 32 px frames): ~7 s on 2 busy cores
def test_one_epoch_of_tiny_emma_with_its_losses_writes_a_loadable_best(toy, tmp_path):
    torch.manual_seed(3)
    dan = DAN(widths=VARIANTS["tiny"].dan_widths, blocks=VARIANTS["tiny"].dan_blocks)  # the tiny size's DAN
    g = torch.Generator().manual_seed(4)
    for m in dan.modules():  # statistics unlike a fresh DAN's, so keeping them is visible
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
    torch.save({"iter": 5, "model_state_dict": dan.state_dict()}, tmp_path / "affecnet8.pth")
    out = tmp_path / "run"
    args = train_parser().parse_args(["--db", str(toy), "--output-dir", str(out), *TINY, "--epochs", "1",
                                      "--loss", "emma", "--optimizer", "adamw", "--weight-decay", "0.05",
                                      "--clip-grad", "0.05", "--accum-steps", "2",
                                      "--dan-init", str(tmp_path / "affecnet8.pth")])
    result = training.run(args)
    trained = result["model"]
    assert result["steps"] == 1 and trained.view_generator is not None  # seed_views was called
    last = torch.load(out / "last.pth", weights_only=True)  # a resume continues the training views' stream
    assert torch.equal(last["rng"]["views"], trained.view_generator.get_state())
    assert all(torch.equal(v, dan.state_dict()[k]) for k, v in trained.cnn.state_dict().items())  # frozen DAN
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == "emma" and config["model_size"] == "tiny"
    loaded = load_model(out / "best.pth")
    assert isinstance(loaded, EMMA) and loaded.variant == "tiny" and loaded.layout == LAYOUTS["emma"]
    assert loaded.input_spec.size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded({"image": x}), trained.eval()({"image": x}))


# ---------------------------------------------------------------------------------------------------
# The recipe script


def script_flags(**env: str) -> list[str]:
    """The train.py flags of shs/train_emma.sh: its flags=( ... ) array expanded by bash with ``env``."""
    lines = SCRIPT.read_text().splitlines()
    start = lines.index("flags=(")
    end = lines.index(")", start)
    values = {"MAE": "m.pth", "DAN": "d.pth", "DB": "db", "OUT": "out", "NPROC": "1", "DAN_BN": "frozen",
              "LR": "7.8125e-4", "AMP": "none", "WORKERS": "8", **env}
    prelude = "".join(f"{k}={v}\n" for k, v in values.items())
    code = prelude + "\n".join(lines[start:end + 1]) + '\nprintf "%s\\0" "${flags[@]}"\n'
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_recipe_script_is_valid_bash_and_its_flags_are_the_published_recipe():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    args = train_parser().parse_args(script_flags())
    assert (args.model, args.model_size, args.layout, args.edition, args.size) == ("emma", "base", "emma", "abaw4", 224)
    assert (args.backbone_init, args.dan_init, args.dan_bn, args.loss) == ("m.pth", "d.pth", "frozen", "emma")
    effective = args.batch_size * args.accum_steps
    assert effective == 400 and args.lr == pytest.approx(5e-4 * effective / 256)
    assert (args.optimizer, args.weight_decay, args.clip_grad) == ("adamw", 0.05, 0.05)
    assert (args.sched, args.warmup_epochs, args.epochs, args.min_lr) == ("cosine", 5, 30, 1e-6)
    assert (args.flip, args.jitter, args.hue, args.amp) == (0.5, 0.4, 0.1, "none")
    four = train_parser().parse_args(script_flags(NPROC="4", DAN_BN="adapt"))
    assert four.batch_size == 25 and four.dan_bn == "adapt"  # 25 × 4 processes × 4 steps = 400


@pytest.mark.slow  # two steps of the tiny EMMA with its EMA teacher: ~5 s
def test_tiny_emma_trains_as_a_mean_teacher_and_saves_the_teacher(toy, tmp_path):
    out = tmp_path / "mt"
    args = train_parser().parse_args(["--db", str(toy), "--output-dir", str(out), *TINY, "--epochs", "1",
                                      "--samples-per-epoch", "4", "--ssl", "mean_teacher", "--consistency", "all",
                                      "--consistency-weight", "1", "--rampup-epochs", "0", "--select", "teacher"])
    result = training.run(args)
    assert result["steps"] == 2
    rows = (out / "log.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("consistency")]) > 0  # the teacher's targets reached the loss
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["selected"] == "teacher"
    teacher = load_model(out / "best.pth")
    assert isinstance(teacher, EMMA) and teacher.variant == "tiny"
    student = result["model"].state_dict()
    moved = [k for k, v in teacher.state_dict().items() if k.startswith("vit.") and v.is_floating_point()
             and not torch.equal(v, student[k])]
    assert moved  # an EMA of the student's weights, not the student itself


# ---------------------------------------------------------------------------------------------------
# The demo's learning check


@pytest.mark.slow
def test_the_emma_demo_flags_learn_the_mini_dataset(demo_db, tmp_path):
    """shs/demo_emma.args for 20 of its epochs (≈ 1 min) on the demo's videos. To share the TSAV learning check's
    database this trains on the ABAW 2021 per-task labels (every frame, 7 classes, 8 of the 12 AUs) and is scored
    by that edition; the demo itself uses the MTL files (README, "Systems and their demos")."""
    db, annotations = demo_db
    out = tmp_path / "run"
    args = ["@" + str(Path(__file__).resolve().parents[1] / "shs" / "demo_emma.args"), "--db", str(db),
            "--output-dir", str(out), "--edition", "abaw2021", "--no-progress", "--epochs", "20", "--eval-every", "20"]
    assert train.main(args) == 0
    pred = tmp_path / "pred"
    assert test_val_aff2.main(["--checkpoint", str(out / "best.pth"), "--db", str(db), "--split", "val",
                               "--edition", "abaw2021", "--annotations", str(annotations), "--out", str(pred),
                               "--workers", "1"]) == 0
    scores = json.loads((pred / "scores.json").read_text())
    assert scores["expr"]["f1"] >= 0.6 and scores["va"]["ccc_valence"] >= 0.5, scores
