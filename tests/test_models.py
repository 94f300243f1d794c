"""models/tsav.py + tsav_weights.py + registry.py, utils/outputs.py: published state-dict layouts, output layouts,
checkpoint loading (models.registry.load_model) and initialisation."""

import copy
from pathlib import Path

import pytest
import torch
from helpers import REFERENCE, describe, read_key_list
from torch import nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18

from models.base import model_layout
from models.registry import build_model, load_model
from models.tsav import AudioModel, TwoStreamAuralVisualModel, TwoStreamAuralVisualSelfCure, VideoModel
from models.tsav_weights import init_audio_from, init_backbones_from, init_video_from
from tasks import EXPR_NAMES_6, EXPR_NAMES_7, LAYOUTS, OutputLayout
from utils.checkpoint import CheckpointError
from utils.outputs import split_outputs, va_output

# The published key lists (name shape dtype per line) live outside the repo; CI without them skips that
# test and still checks the entry and parameter counts below.
KEY_FILES = {"tsav": "checkpoint_keys_tsav.txt", "mtmt": "checkpoint_keys_mtmt.txt"}


def tiny_batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"clip": torch.randn(b, 4, 2, 16, 16, generator=g), "audio_features": torch.randn(b, 1, 64, 32, generator=g)}


def randomise_bn_buffers(model: nn.Module) -> None:
    # Fresh BN buffers are 0/1 everywhere; random ones make an eval-mode comparison meaningful.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    built = {"tsav": TwoStreamAuralVisualModel(17), "mtmt": TwoStreamAuralVisualSelfCure("mtmt")}
    for m in built.values():
        randomise_bn_buffers(m)
        m.eval()
    return built


def read_key_file(name: str) -> dict[str, tuple[str, str]]:
    return read_key_list(REFERENCE / KEY_FILES[name])


@pytest.mark.parametrize("name", ["tsav", "mtmt"])
def test_state_dict_matches_published_checkpoint_keys(models, name):
    if not (REFERENCE / KEY_FILES[name]).is_file():
        pytest.skip(f"{KEY_FILES[name]} not found (set ABAW_REFERENCE_DIR)")
    expected = read_key_file(name)
    got = describe(models[name].state_dict())
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_parameter_and_entry_counts(models):
    assert {k: len(m.state_dict()) for k, m in models.items()} == {"tsav": 344, "mtmt": 370}
    count = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert count == {"tsav": 42_489_995, "mtmt": 42_585_235}
    assert sum(p.numel() for p in models["tsav"].video_model.parameters()) == 31_302_330
    assert sum(p.numel() for p in models["mtmt"].video_model.parameters()) == 31_389_370


def test_forward_shapes_on_tiny_inputs(models):
    batch = tiny_batch(3)
    with torch.no_grad():
        out = models["tsav"](batch)
        mt_out, alpha = models["mtmt"](batch)
    assert out.shape == (3, 17)
    assert mt_out.shape == (3, 22) and alpha.shape == (3, 1)
    assert ((alpha > 0) & (alpha < 1)).all()


def test_mtmt_heads_fill_the_layout_and_alpha_scales_expr(models):
    m = models["mtmt"]
    batch = tiny_batch(2)
    with torch.no_grad():
        out, alpha = m(batch)
        f = m.features(batch)
        torch.testing.assert_close(out[:, 0:12], m.fc_au(f))
        torch.testing.assert_close(out[:, 12:20], m.fc_ex(f) * m.alpha_ex(f))
        torch.testing.assert_close(out[:, 20:22], m.fc_va(f))
        torch.testing.assert_close(alpha, m.alpha_ex(f))


def test_full_size_forward(models):
    batch = {"clip": torch.randn(1, 4, 8, 112, 112), "audio_features": torch.randn(1, 1, 64, 1001)}
    with torch.no_grad():
        assert models["tsav"](batch).shape == (1, 17)


def test_channels_last_gives_the_same_outputs(models):
    batch = tiny_batch(2)
    for name in ("tsav", "mtmt"):
        m = copy.deepcopy(models[name])
        with torch.no_grad():
            ref = m(batch)
            m.to_channels_last()
            fast = m({"clip": batch["clip"].to(memory_format=torch.channels_last_3d),
                      "audio_features": batch["audio_features"].to(memory_format=torch.channels_last)})
        ref, fast = (ref[0], fast[0]) if isinstance(ref, tuple) else (ref, fast)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, expr, va, au, n_expr", [
    ("abaw2020", range(0, 7), [7, 8], range(9, 17), 7),
    ("abaw2021", range(12, 19), [20, 21], range(0, 12), 7),
    ("mtmt", range(12, 19), [20, 21], range(0, 12), 7),
    ("abaw3", range(12, 20), [20, 21], range(0, 12), 8),
])
def test_split_outputs_columns(name, expr, va, au, n_expr):
    layout = LAYOUTS[name]
    out = torch.arange(layout.num_outputs, dtype=torch.float32).repeat(2, 1)
    parts = split_outputs(out, name)
    assert parts["expr"][0].tolist() == list(map(float, expr))
    assert parts["va"][0].tolist() == list(map(float, va))
    assert parts["au"][0].tolist() == list(map(float, au))
    assert layout.num_expr_classes == n_expr == len(layout.expr_names)
    assert layout.num_au == len(layout.au_names)


def test_split_outputs_rejects_wrong_width_and_unknown_layout():
    with pytest.raises(ValueError, match="17 outputs"):
        split_outputs(torch.zeros(2, 22), "abaw2020")
    with pytest.raises(ValueError, match="unknown output layout"):
        split_outputs(torch.zeros(2, 22), "abaw1999")


def test_split_outputs_of_a_layout_with_some_tasks():
    expr_va = OutputLayout("ev", ("va", "expr"), 8, EXPR_NAMES_7, va_activation="identity")
    parts = split_outputs(torch.arange(10, dtype=torch.float32)[None], expr_va)
    assert set(parts) == {"va", "expr"}
    assert parts["va"][0].tolist() == [0.0, 1.0] and parts["expr"][0].tolist() == list(map(float, range(2, 9)))
    lsd = OutputLayout("lsd", ("expr",), 6, EXPR_NAMES_6)
    only = split_outputs(torch.zeros(3, 6), lsd)
    assert set(only) == {"expr"} and only["expr"].shape == (3, 6)
    with torch.device("meta"):  # shapes only
        assert build_model("tsav", lsd).fc[1].out_features == 6


def test_va_output_follows_the_layout_activation():
    raw = torch.tensor([[-3.0, 0.5], [2.0, -0.25]])
    assert torch.equal(va_output(raw, "abaw2021"), torch.tanh(raw))
    identity = OutputLayout("ev", ("expr", "va"), 7, EXPR_NAMES_7, va_activation="identity")
    assert va_output(raw, identity).tolist() == [[-1.0, 0.5], [1.0, -0.25]]  # identity, then clipped
    assert torch.equal(va_output(raw, identity, clip=False), raw)  # losses: no clip, the gradient flows


def test_build_model_follows_the_layout():
    with torch.device("meta"):  # shapes only, no init cost
        tsav = build_model("tsav", "abaw3")
        mtmt = build_model("mtmt", "abaw2020")
    assert tsav.fc[1].out_features == 22 and model_layout(tsav).name == "abaw3"
    assert (mtmt.fc_ex[1].out_features, mtmt.fc_au[1].out_features) == (7, 8)
    assert model_layout(mtmt).order == ("expr", "va", "au")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", "abaw3")


def test_model_layout_sees_through_wrappers(models):
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert model_layout(Wrapper(models["tsav"])).name == "abaw2020"


def save_wrapped(model: nn.Module, path: Path, **extra) -> Path:
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, **extra}, path)
    return path


@pytest.mark.parametrize("name, layout", [("tsav", "abaw2020"), ("mtmt", "mtmt")])
def test_load_model_round_trip(models, tmp_path, name, layout):
    path = save_wrapped(models[name], tmp_path / "ckpt.pth.tar")
    loaded = load_model(path)
    assert type(loaded) is type(models[name]) and not loaded.training
    assert model_layout(loaded).name == layout
    # Trainable as built (loading on the meta device must not freeze anything); only MTMT's unused
    # alpha_au/alpha_va are frozen, from construction.
    frozen = {k for k, p in loaded.named_parameters() if not p.requires_grad}
    assert frozen == {k for k, p in models[name].named_parameters() if not p.requires_grad}
    assert frozen == ({"alpha_au.0.weight", "alpha_au.0.bias", "alpha_va.0.weight", "alpha_va.0.bias"}
                      if name == "mtmt" else set())
    batch = tiny_batch(2, seed=3)
    with torch.no_grad():
        ref, got = models[name](batch), loaded(batch)
    for r, g in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(r, g)


def test_load_model_raw_state_dict_and_stored_layout(models, tmp_path):
    raw = tmp_path / "raw.pth"
    torch.save(models["mtmt"].state_dict(), raw)
    assert model_layout(load_model(raw)).name == "mtmt"
    assert model_layout(load_model(raw, layout="abaw3")).name == "abaw3"
    tagged = save_wrapped(models["tsav"], tmp_path / "tagged.pth")
    torch.save({"state_dict": models["mtmt"].state_dict(), "layout": "abaw3", "epoch": 4}, tagged)
    assert model_layout(load_model(tagged)).name == "abaw3"


def single_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_load_model_errors(models, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable") as e:
        load_model(corrupt)
    assert str(corrupt) in single_line(e)

    truncated = tmp_path / "truncated.pth"
    torch.save({"fc.1.weight": torch.zeros(17, 1024)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(truncated)

    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "absent.pth")

    state = dict(models["tsav"].state_dict())
    del state["audio_model.resnet.bn1.weight"]
    state["video_model.r2plus1d.extra.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, wrong)
    with pytest.raises(CheckpointError) as e:
        load_model(wrong)
    msg = single_line(e)
    assert str(wrong) in msg and "1 missing" in msg and "1 unexpected" in msg and "bn1.weight" in msg

    no_head = tmp_path / "no_head.pth"
    torch.save({"audio_model.resnet.conv1.weight": torch.zeros(64, 1, 7, 7)}, no_head)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load_model(no_head)

    odd_head = tmp_path / "odd_head.pth"
    torch.save({"fc.1.weight": torch.zeros(5, 1024), "fc.1.bias": torch.zeros(5)}, odd_head)
    with pytest.raises(CheckpointError, match="unknown output layout"):
        load_model(odd_head)
    with pytest.raises(CheckpointError, match="unknown output layout"):
        load_model(odd_head, layout="abaw1999")

    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": models["tsav"].fc.state_dict(), "opts": Holder}, pickled)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_model(pickled)

    not_tensors = tmp_path / "not_tensors.pth"
    torch.save({"state_dict": {"fc.1.weight": [1, 2]}}, not_tensors)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_model(not_tensors)


class Holder(nn.Module):
    """Just the stream an init function touches (building the whole model would cost more)."""

    def __init__(self, video: bool = False, se: bool = False, audio: bool = False):
        super().__init__()
        if video:
            self.video_model = VideoModel(squeeze_excitation=se)
        if audio:
            self.audio_model = AudioModel()


@pytest.fixture(scope="module")
def kinetics_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "r2plus1d_18.pth"
    torch.save(r2plus1d_18(weights=None).state_dict(), path)  # torchvision format, fc included
    return path


@pytest.mark.parametrize("se", [False, True])
def test_init_video_from_copies_rgb_and_keeps_mask_channel(kinetics_file, se):
    source = torch.load(kinetics_file)
    holder = Holder(video=True, se=se)
    net = holder.video_model.r2plus1d
    mask_before = net.stem[0].weight[:, 3].clone()
    se_before = {k: v.clone() for k, v in net.state_dict().items() if "SELayerC" in k}
    init_video_from(holder, kinetics_file)
    state = net.state_dict()
    assert torch.equal(state["stem.0.weight"][:, :3], source["stem.0.weight"])
    assert torch.equal(state["stem.0.weight"][:, 3], mask_before)
    for k, v in source.items():
        if k != "stem.0.weight" and not k.startswith("fc."):
            assert torch.equal(state[k], v), k
    assert all(torch.equal(state[k], v) for k, v in se_before.items())
    assert len(se_before) == (16 if se else 0)

    init_video_from(holder, kinetics_file, mask_init="mean")
    torch.testing.assert_close(net.stem[0].weight[:, 3], source["stem.0.weight"].mean(dim=1))


def test_init_audio_from_sums_rgb_filters(tmp_path, kinetics_file):
    source = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    holder = Holder(audio=True)
    init_audio_from(holder, path)
    state = holder.audio_model.resnet.state_dict()
    torch.testing.assert_close(state["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["layer4.1.bn2.running_var"], source["layer4.1.bn2.running_var"])
    init_audio_from(holder, path, reduce="mean")
    torch.testing.assert_close(holder.audio_model.resnet.conv1.weight,
                               source["conv1.weight"].mean(dim=1, keepdim=True))
    with pytest.raises(CheckpointError, match="conv1.weight"):
        init_audio_from(holder, kinetics_file)


def test_init_backbones_from_tsav_into_mtmt(models, tmp_path):
    path = save_wrapped(models["tsav"], tmp_path / "tsav.pth.tar")
    student = copy.deepcopy(models["mtmt"])
    head_before = student.fc_ex[1].weight.clone()
    left = init_backbones_from(student, path)
    assert len(left) == 16 and all(".SELayerC." in k for k in left)
    tsav_state, new_state = models["tsav"].state_dict(), student.state_dict()
    assert all(torch.equal(new_state[k], v) for k, v in tsav_state.items() if not k.startswith("fc."))
    assert torch.equal(student.fc_ex[1].weight, head_before)
