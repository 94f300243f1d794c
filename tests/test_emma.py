"""EMMA (models.emma, models.dan): key names of the published files, strict loading of files in each published
format (EMMA, DAN, MAE), pos_embed interpolation, the frozen DAN, output order, layer-wise lr decay groups,
the training view, and the emma decision profiles. Tiny shapes throughout: a 'narrow' ViT (the published
depth 12, so every published key name, at width 32) or the 'tiny' size; DAN keeps its published shapes."""

import argparse
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REFERENCE, describe, read_key_list
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from models import emma, prepare, registry
from models.dan import DAN
from models.emma import EMMA, Variant
from models.registry import build_model, load_model
from tasks import LAYOUTS, get_edition
from utils.checkpoint import CheckpointError, read_checkpoint
from utils.inputs import JITTER, PIXELS, TEACHER_JITTER, InputSpec
from utils.optim import Schedule, build_optimizer, build_scheduler
from utils.outputs import PROFILES, decide, decide_layout, output_scores

SMALL = InputSpec.frame(size=32)
NARROW = Variant(dim=32, depth=12, heads=2, head_hidden=16)  # every published ViT key name, tiny tensors


def key_file(name: str) -> dict[str, tuple[str, str]]:
    """{key: (shape, dtype)} of checkpoint_keys_<name>.txt in file order; skips the test when it is absent."""
    path = REFERENCE / f"checkpoint_keys_{name}.txt"
    if not path.is_file():
        pytest.skip(f"{path.name} not found (set ABAW_REFERENCE_DIR)")
    return read_key_list(path)


def randomise_bn(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture
def narrow(monkeypatch):
    """The 'narrow' size registered, and published files (no input settings) read at 32 px."""
    monkeypatch.setitem(emma.VARIANTS, "narrow", NARROW)
    family = registry.MODELS["emma"]
    family = dataclasses.replace(family, default_input=lambda: SMALL, variants=(*family.variants, "narrow"))
    monkeypatch.setitem(registry.MODELS, "emma", family)


@pytest.fixture(scope="module")
def tiny() -> EMMA:
    torch.manual_seed(0)
    model = build_model("emma", "emma", input_spec=SMALL, variant="tiny")
    randomise_bn(model)
    return model.eval()


def image(b: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# Key names and shapes of the published files (full size, on the meta device: no memory)


def test_full_size_state_dicts_match_the_published_key_lists():
    with torch.device("meta"):
        model = EMMA()  # ViT-B/16 at 224 px, the emma layout
    assert describe(model.state_dict()) == key_file("emma")
    assert list(model.state_dict()) == list(key_file("emma"))  # the same order, too
    assert describe(model.cnn.state_dict()) == key_file("dan")
    encoder = {k: v for k, v in model.vit.state_dict().items() if not k.startswith("head.")}
    assert describe(encoder) == key_file("mae_vit_b16")


# ---------------------------------------------------------------------------------------------------
# Files in each published format load strictly


def test_a_released_emma_file_loads_strictly_as_the_published_system(narrow, tmp_path):
    torch.manual_seed(1)
    source = EMMA(input_spec=SMALL, variant="narrow")
    randomise_bn(source)
    weights = source.state_dict()
    state = {k: weights[k] for k in key_file("emma")}  # the published names, in the file's order
    torch.save({"epoch": 12, "model": state}, tmp_path / "EMMA.pth")
    model = load_model(tmp_path / "EMMA.pth")
    assert isinstance(model, EMMA) and model.variant == "narrow" and model.layout == LAYOUTS["emma"]
    assert model.decision == "emma" and not model.training and not model.cnn.training
    assert model.input_spec == SMALL  # no settings in the file: the family's published input
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    x = image()
    with torch.no_grad():
        out = model({"image": x})
        vit, dan = model.vit(x), model.cnn(x)
    assert out.shape == (3, 22)
    torch.testing.assert_close(out[:, 2:], vit)  # [V, A | EXPR 8 | AU 12]
    torch.testing.assert_close(out[:, :2], model.va_head(torch.cat([dan, vit], dim=1)))


def test_our_checkpoint_keeps_its_size_input_and_decision(tiny, tmp_path):
    torch.save({"model": tiny.state_dict(), **tiny.settings()}, tmp_path / "best.pth")
    loaded = load_model(tmp_path / "best.pth")
    assert loaded.variant == "tiny" and loaded.input_spec == SMALL and loaded.decision == "emma"
    x = image(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded({"image": x}), tiny({"image": x}))


def test_the_dan_affectnet_file_loads_strictly_under_weights_only(narrow, tmp_path):
    torch.manual_seed(2)
    dan = DAN()
    randomise_bn(dan, seed=3)
    weights = dan.state_dict()
    state = {k: weights[k] for k in key_file("dan")}
    optimiser = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": list(range(10))}]}
    torch.save({"iter": 5, "model_state_dict": state, "optimizer_state_dict": optimiser}, tmp_path / "affecnet8.pth")
    model = build_model("emma", "emma", input_spec=SMALL, variant="narrow", dan_init=tmp_path / "affecnet8.pth")
    assert all(torch.equal(v, state[k]) for k, v in model.cnn.state_dict().items())
    del state["cat_head3.ca.attention.3.bias"]
    torch.save({"iter": 5, "model_state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="1 missing keys"):
        build_model("emma", "emma", input_spec=SMALL, variant="narrow", dan_init=tmp_path / "cut.pth")
    # the tiny size's DAN is not AffectNet's
    with pytest.raises(CheckpointError, match="narrow ResNet.*wrong-shape keys"):
        build_model("emma", "emma", input_spec=SMALL, variant="tiny", dan_init=tmp_path / "affecnet8.pth")
    with pytest.raises(ValueError, match="dan-init is for emma"):
        build_model("resnet18", "abaw2021", input_spec=SMALL, dan_init=tmp_path / "affecnet8.pth")


def mae_file(path: Path, grid: int, seed: int = 4) -> dict:
    """An MAE pre-training file of the narrow ViT: encoder (published names), decoder, mask token, args."""
    torch.manual_seed(seed)
    encoder = EMMA(input_spec=InputSpec.frame(size=16 * grid), variant="narrow").vit.state_dict()
    state = {k: encoder[k].clone() for k in key_file("mae_vit_b16")}
    state.update({"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32),
                  "decoder_pos_embed": torch.randn(1, grid * grid + 1, 16), "decoder_pred.bias": torch.randn(768)})
    args = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 399, "args": args}, path)
    return state


def grid_resample(pos: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """MAE's interpolation, written out: CLS row kept, the old×old grid (row-major) resized bicubically."""
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


@pytest.mark.parametrize("file_grid, model_px", [(14, 32), (2, 64), (4, 64)])
def test_an_mae_file_initialises_the_vit_with_pos_embed_interpolated(narrow, tmp_path, file_grid, model_px):
    state = mae_file(tmp_path / "mae.pth", file_grid)
    with pytest.raises(CheckpointError, match="Namespace"):  # weights_only refuses it unless allow-listed
        read_checkpoint(tmp_path / "mae.pth")
    torch.manual_seed(5)
    model = EMMA(input_spec=InputSpec.frame(size=model_px), variant="narrow")
    head = copy.deepcopy(model.vit.head.state_dict())
    emma.load_mae(model, tmp_path / "mae.pth")
    vit = model.vit.state_dict()
    new = model_px // 16
    expected = state["pos_embed"] if new == file_grid else grid_resample(state["pos_embed"], file_grid, new)
    assert vit["pos_embed"].shape == (1, new * new + 1, 32)
    torch.testing.assert_close(vit["pos_embed"], expected)
    assert all(torch.equal(vit[k], v) for k, v in state.items() if k in vit and k != "pos_embed")
    assert all(torch.equal(vit[f"head.{k}"], v) for k, v in head.items())  # the head stays fresh


def test_an_mae_file_missing_an_encoder_weight_is_refused(narrow, tmp_path):
    state = mae_file(tmp_path / "mae.pth", 2)
    del state["blocks.11.norm2.bias"]
    torch.save({"model": state}, tmp_path / "cut.pth")
    model = EMMA(input_spec=SMALL, variant="narrow")
    with pytest.raises(CheckpointError, match="1 missing keys .*blocks.11.norm2.bias"):
        emma.load_mae(model, tmp_path / "cut.pth")


# ---------------------------------------------------------------------------------------------------
# Network: output order, frozen DAN


def test_outputs_follow_the_layout_order(tiny):
    x = image()
    with torch.no_grad():
        vit, dan = tiny.vit(x), tiny.cnn(x)
        va = tiny.va_head(torch.cat([dan, vit], dim=1))
        out = tiny({"image": x})
        other = EMMA(layout="abaw2021", input_spec=SMALL, variant="tiny").eval()
        other.load_state_dict(tiny.state_dict())  # same sizes: 8 EXPR slots, 12 AU, 2 VA
        reordered = other({"image": x})
    torch.testing.assert_close(out, torch.cat([va, vit], dim=1))
    torch.testing.assert_close(reordered, torch.cat([vit[:, 8:], vit[:, :8], va], dim=1))  # AU | EXPR | VA


@pytest.mark.parametrize("dan_bn", ["frozen", "adapt"])
def test_dan_learns_nothing_and_keeps_its_statistics_unless_adapting(dan_bn):
    torch.manual_seed(6)
    model = EMMA(input_spec=SMALL, variant="tiny", dan_bn=dan_bn).train()
    assert not any(p.requires_grad for p in model.cnn.parameters())
    assert model.cnn.training == (dan_bn == "adapt") and model.vit.training
    before = copy.deepcopy(model.cnn.state_dict())
    out = model({"image": image(4)})
    out[:, :2].sum().backward()  # the VA loss alone also reaches the ViT (its logits are not detached)
    assert all(p.grad is None for p in model.cnn.parameters())
    assert model.vit.head[2].weight.grad.abs().sum() > 0 and model.vit.blocks[0].attn.qkv.weight.grad is not None
    changed = [k for k, v in model.cnn.state_dict().items() if not torch.equal(v, before[k])]
    assert (changed == []) == (dan_bn == "frozen")
    assert all("running" in k or "num_batches" in k for k in changed)
    assert not model.eval().cnn.training


# ---------------------------------------------------------------------------------------------------
# Optimiser groups


def test_layer_decay_groups_scale_by_depth_and_the_va_head_is_constant(tiny):
    model = copy.deepcopy(tiny)
    base_lr, depth = 2e-3, len(model.vit.blocks)
    groups = model.param_groups(base_lr)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(n.startswith("cnn.") for n in seen) and len(seen) == len(set(seen))
    for g in groups[:-1]:
        for p in g["params"]:
            name = names[id(p)].removeprefix("vit.")
            layer = (0 if name.startswith(("cls_token", "pos_embed", "patch_embed"))
                     else int(name.split(".")[1]) + 1 if name.startswith("blocks.") else depth + 1)
            assert g["lr_scale"] == pytest.approx(0.65 ** (depth + 1 - layer)), name
            assert (g.get("weight_decay") == 0.0) == (p.ndim == 1 or name in ("pos_embed", "cls_token")), name
    assert {g["name"] for g in groups} >= {"vit_layer0", "vit_layer0_no_decay", "vit_layer3", "vit_layer3_no_decay"}
    va = groups[-1]
    assert va["name"] == "va_head" and va["schedule"] is False and va["weight_decay"] == 0.0
    assert va["lr_scale"] * base_lr == pytest.approx(1e-4)
    optimizer = build_optimizer(model, "adamw", base_lr, 0.05)
    scheduler = build_scheduler(optimizer, Schedule("cosine", warmup=2, total=10, floor=0.0))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["va_head"] == pytest.approx(1e-4)
    assert lrs["vit_layer3"] == pytest.approx(base_lr * Schedule("cosine", 2, 10).factor(4))
    assert lrs["vit_layer0"] == pytest.approx(lrs["vit_layer3"] * 0.65 ** 3)


# ---------------------------------------------------------------------------------------------------
# Inputs


def raw_batch(b: int = 4, size: int = 32, jitter: tuple = (1.3, 0.8, 1.2, 0.05)) -> dict:
    g = torch.Generator().manual_seed(7)
    return {PIXELS: torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            JITTER: torch.tensor([jitter] * b, dtype=torch.float64),
            TEACHER_JITTER: torch.tensor([[0.9, 1.1]] * b, dtype=torch.float64)}


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(prepare.IMAGENET_MEAN)[:, None, None]) / torch.tensor(prepare.IMAGENET_STD)[:, None, None]


def test_evaluation_view_resizes_and_normalises(tiny):
    raw = raw_batch(size=32)
    raw[JITTER] = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 4, dtype=torch.float64)  # what evaluation batches carry
    got = tiny.prepare(raw, torch.device("cpu"))["image"]
    torch.testing.assert_close(got, normalised(raw[PIXELS].float() / 255))
    big = tiny.prepare(raw_batch(size=64), torch.device("cpu"))["image"]  # served larger: resized to 32
    assert big.shape == (4, 3, 32, 32)
    teacher = tiny.prepare(raw, torch.device("cpu"), view="teacher")["image"]
    assert not torch.equal(teacher, got)


def test_training_view_crops_a_resized_frame_with_seeded_draws():
    model = EMMA(input_spec=SMALL, variant="tiny", jitter_p=0.0).train()
    raw = raw_batch()
    model.seed_views(11)
    a = model.prepare(raw, torch.device("cpu"))["image"]
    model.seed_views(11)
    assert torch.equal(a, model.prepare(raw, torch.device("cpu"))["image"])
    g = torch.Generator().manual_seed(11)
    torch.rand(4, generator=g)
    offsets = torch.randint(0, 34 - 32, (4, 2), generator=g).tolist()  # resize 32 → round(32·232/224) = 33
    big = emma.resize(raw[PIXELS].float() / 255, 33)
    crops = torch.stack([im[:, y:y + 32, x:x + 32] for im, (y, x) in zip(big, offsets, strict=True)])
    torch.testing.assert_close(a, normalised(crops))
    model.jitter_p = 1.0  # every sample jittered by its drawn factors
    model.seed_views(11)
    assert not torch.allclose(model.prepare(raw, torch.device("cpu"))["image"], a)
    teacher = copy.deepcopy(model)  # the mean teacher's copy, generator included
    assert teacher.view_generator is not model.view_generator


def test_a_narrow_dan_is_torchvision_resnet_blocks_at_other_widths():
    small = DAN(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1))
    stages = [small.features[i] for i in range(4, 8)]  # conv1, bn1, relu, maxpool, layer1..4
    assert [len(s) for s in stages] == [1, 1, 1, 1]
    assert [s[0].conv2.out_channels for s in stages] == [16, 32, 64, 128]
    assert isinstance(stages[0][0], BasicBlock) and small.fc.in_features == 128
    assert small.cat_head0.sa.conv1x1[0].in_channels == 128
    with torch.no_grad():
        assert small.eval()(torch.randn(3, 3, 64, 64)).shape == (3, 8)
    full = DAN()  # the published trunk is torchvision's resnet18 itself
    assert [k for k in full.state_dict() if k.startswith("features.")] == [
        f"features.{k}" for k in nn.Sequential(*list(resnet18().children())[:-2]).state_dict()]


def test_view_generator_state_restores_the_next_draws():
    model = EMMA(input_spec=SMALL, variant="tiny", jitter_p=0.5).train()
    raw = raw_batch()
    assert model.view_rng_state() is None  # unseeded: the global RNG draws, nothing of its own to save
    model.seed_views(5)
    model.prepare(raw, torch.device("cpu"))
    saved = model.view_rng_state()
    after = model.prepare(raw, torch.device("cpu"))["image"]
    resumed = EMMA(input_spec=SMALL, variant="tiny", jitter_p=0.5).train()
    resumed.set_view_rng_state(saved)  # what train.py --resume does with the checkpoint's rng["views"]
    assert torch.equal(resumed.prepare(raw, torch.device("cpu"))["image"], after)


# ---------------------------------------------------------------------------------------------------
# Decisions


def test_emma_profiles_decide_va_raw_expr_argmax_and_au_by_sigmoid_or_its_logit_thresholds():
    au = [0.9, 0.75, 0.72, -0.1, 0.45, 0.55, 0.65, 0.81, 0.79, 2.0, 0.31, 0.1]
    expr = [0.1, 0.2, -1.0, 0.0, 0.3, 0.2, 0.1, 0.9]
    out = torch.tensor([[1.7, -0.3, *expr, *au]])
    edition = get_edition(LAYOUTS["emma"].edition)
    scores = {k: v.numpy() for k, v in output_scores(out, "emma", "emma").items()}
    np.testing.assert_allclose(scores["va"], [[1.0, -0.3]], atol=1e-6)  # clipped, no tanh
    plain = decide(scores, "emma", edition, "emma")
    assert plain["EXPR"].tolist() == [7]
    assert plain["AU"][0].tolist() == [int(a >= 0) for a in au]
    own = decide(scores, "emma", edition, "emma_thresholds", au_threshold=0.99)  # the profile's replace the flag
    assert own["AU"][0].tolist() == [1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0]
    assert decide_layout(scores, "emma", "emma_thresholds")["AU"][0].tolist() == own["AU"][0].tolist()
    assert PROFILES["emma"].description and PROFILES["emma_thresholds"].description
