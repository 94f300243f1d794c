"""CNU_ADL's model (models.cnu): output layout order, frozen layers, the history frames without gradient, cached
block evaluation equal to the forward pass, the EmotiW → Aff-Wild2 mapping before the statistics, VGGFace2's
input normalisation, strict face-network loading (torchvision, VGGFace2 Caffe naming, a whole face network) and
the loss. Tiny inputs: blocks of 4 frames at 32 px."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from models import cnu
from models.cnu import CNU, CNULoss, caffe_key, load_face_net
from models.cnu_stats import aux_targets
from models.losses import MultiTaskLoss
from tasks import EXPR_NAMES_7, OutputLayout
from utils.checkpoint import CheckpointError
from utils.inputs import JITTER, PIXELS, InputSpec
from utils.optim import declared_groups
from utils.outputs import output_scores

LAYOUT = OutputLayout("cnu", ("expr", "va"), 7, EXPR_NAMES_7, edition="abaw2020")
SPEC = InputSpec.frame_block(4, size=32)
CPU = torch.device("cpu")


def build(**kw) -> CNU:
    torch.manual_seed(0)
    return CNU(kw.pop("layout", LAYOUT), input_spec=SPEC, **kw)


@pytest.fixture(scope="module")
def base() -> CNU:
    return build()


def frames(b: int = 2, t: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 50


def set_last(seq: nn.Sequential, bias: list[float]) -> None:
    """The head's last Linear → a constant output ``bias`` (zero weights)."""
    with torch.no_grad():
        seq[-1].weight.zero_()
        seq[-1].bias.copy_(torch.tensor(bias))


def test_output_shapes_and_layout_order():
    outs = {}
    for order in (("expr", "va"), ("va", "expr")):
        model = build(variant="small", layout=OutputLayout("x", order, 7, EXPR_NAMES_7)).eval()
        set_last(model.expr_head, [float(i) for i in range(7)])
        set_last(model.valence_head, [0.3])
        set_last(model.arousal_head, [-0.2])
        set_last(model.aux_head, [0.1, 0.2, 0.3, 0.4, 0.5])
        with torch.no_grad():
            outs[order] = model({"frames": frames()})
    out, aux = outs[("expr", "va")]
    assert out.shape == (2, 9) and aux.shape == (2, 5)
    assert torch.allclose(out, torch.tensor([0, 1, 2, 3, 4, 5, 6, 0.3, -0.2]).expand(2, 9))
    assert torch.allclose(aux, torch.tanh(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])).expand(2, 5))
    assert torch.allclose(outs[("va", "expr")][0], torch.tensor([0.3, -0.2, 0, 1, 2, 3, 4, 5, 6]).expand(2, 9))
    # the VA columns are pre-tanh: the layout's tanh gives the heads' published tanh output
    scores = output_scores(outs[("expr", "va")], LAYOUT)
    assert torch.allclose(scores["va"], torch.tanh(torch.tensor([0.3, -0.2])).expand(2, 2))
    # an 'identity' VA layout gets the tanh from the model itself; an EXPR-only layout has no aux head
    ident = build(variant="small", layout=OutputLayout("i", ("expr", "va"), 7, EXPR_NAMES_7,
                                                        va_activation="identity")).eval()
    set_last(ident.valence_head, [0.3])
    with torch.no_grad():
        assert torch.isclose(ident({"frames": frames()})[0][0, 7], torch.tanh(torch.tensor(0.3)))
        expr_only = build(variant="small", layout=OutputLayout("e", ("expr",), 7, EXPR_NAMES_7)).eval()
        out, aux = expr_only({"frames": frames()})
    assert out.shape == (2, 7) and aux is None and not hasattr(expr_only, "aux_head")


def test_bad_layouts_and_inputs():
    with pytest.raises(ValueError, match="EXPR and/or VA only"):
        build(layout=OutputLayout("a", ("expr", "au"), 7, EXPR_NAMES_7, au_names=("AU1",)))
    with pytest.raises(ValueError, match="7 Aff-Wild2 classes"):
        build(layout=OutputLayout("e8", ("expr",), 8, EXPR_NAMES_7))
    with pytest.raises(ValueError, match="frame_block"):
        CNU(LAYOUT, input_spec=InputSpec.frame(size=32))


def test_frozen_layers_get_no_gradient(base):
    base.train()
    before = {n: b.clone() for n, b in base.face.trunk.named_buffers() if "running_mean" in n}
    out, aux = base({"frames": frames()})
    (out.sum() + aux.sum()).backward()
    trunk = base.face.trunk
    for name in cnu.FROZEN_PARTS:
        assert all(p.grad is None for p in getattr(trunk, name).parameters()), name
    assert all(p.grad is not None for p in trunk.layer3.parameters())
    assert base.face.predictions.weight.grad is not None
    # frozen BatchNorms keep their statistics in train mode, the fine-tuned ones update
    after = dict(base.face.trunk.named_buffers())
    assert all(torch.equal(after[n], v) for n, v in before.items() if n.startswith(("bn1", "layer1", "layer2")))
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    base.zero_grad(set_to_none=True)
    base.eval()
    # the optimiser groups: every trainable parameter once, the frozen ones in none, the face's lr scale
    groups = declared_groups(base, 1e-3, 0.0)
    assert [g["name"] for g in groups] == ["face", "heads"]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in trunk.layer1.parameters())
    assert len(in_groups) == sum(p.requires_grad for p in base.parameters())
    unfrozen = build(variant="small", freeze_below_layer3=False, face_lr_scale=0.1)
    assert all(p.requires_grad for p in unfrozen.parameters())
    assert declared_groups(unfrozen, 1e-3, 0.0)[0]["lr_scale"] == 0.1


def test_history_without_gradient():
    base = build(variant="small").eval()
    x = frames()
    results = {}
    for history_grad in (True, False):
        base.history_grad = history_grad
        inputs = x.clone().requires_grad_(True)
        out, aux = base({"frames": inputs})
        (out.sum() + aux.sum()).backward()
        results[history_grad] = out.detach(), inputs.grad
        base.zero_grad(set_to_none=True)
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)  # eval mode: the same outputs
    assert results[True][1][:, :-1].abs().sum() > 0  # the statistics carry gradient to the history frames...
    assert torch.count_nonzero(results[False][1][:, :-1]) == 0  # ...unless they run without it
    assert results[False][1][:, -1].abs().sum() > 0


@pytest.mark.parametrize("lstm", [False, True])
def test_block_head_from_cached_frames_equals_forward(lstm, base):
    model = build(variant="small", lstm=True).eval() if lstm else base
    clip = frames(1, 7, seed=3)[0]  # 7 prepared frames of one track
    blocks = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 2], [1, 2, 4, 5], [3, 4, 5, 6]])  # start padding, a gap
    with torch.no_grad():
        out, aux = model({"frames": clip[blocks]})
        cached = model.block_head(*model.frame_outputs(clip), blocks)
    assert torch.allclose(cached[0], out, atol=1e-5) and torch.allclose(cached[1], aux, atol=1e-5)


def test_emotiw_happy_lands_in_the_affwild2_happiness_column(base):
    model = build(variant="small").eval()
    with torch.no_grad():
        model.face.predictions.weight.zero_()
        model.face.predictions.bias.copy_(torch.tensor([0, 0, 0, 30.0, 0, 0, 0]))  # EmotiW 'Happy' (index 3)
    seen = {}
    model.expr_head.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        _, probs = model.frame_outputs(frames(1, 4)[0])
        model({"frames": frames()})
    happy = EXPR_NAMES_7.index("Happiness")
    assert happy == 4 and (probs.argmax(1) == happy).all()
    x = seen["x"]
    onehot = torch.nn.functional.one_hot(torch.tensor(happy), 7).float()
    for stat in range(3):  # max, min, mean of the block: all at Happiness
        assert torch.allclose(x[:, 7 * stat:7 * stat + 7], onehot.expand(2, 7), atol=1e-6)
    assert torch.allclose(x[:, -7:], onehot.expand(2, 7), atol=1e-6)  # the current frame's softmax
    assert x.shape[1] == model.head_width == 21 + 512 + 7


def test_prepare_vggface2_normalisation(base):
    pixels = torch.randint(0, 256, (2, 4, 3, 8, 8), dtype=torch.uint8)
    got = base.prepare({PIXELS: pixels}, CPU)["frames"]
    p = pixels.float()
    expected = torch.stack([p[:, :, 2] - 91.4953, p[:, :, 1] - 103.8827, p[:, :, 0] - 131.0912], dim=2)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # jitter per frame (B×T×4): only frame (0, 1) darkened by half
    factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(2, 4, 1)
    factors[0, 1, 0] = 0.5
    jittered = base.prepare({PIXELS: pixels, JITTER: factors}, CPU)["frames"]
    half = torch.stack([p[0, 1, 2] * 0.5 - 91.4953, p[0, 1, 1] * 0.5 - 103.8827, p[0, 1, 0] * 0.5 - 131.0912])
    assert torch.allclose(jittered[0, 1], half, atol=1e-3)
    untouched = torch.ones(2, 4, dtype=torch.bool)
    untouched[0, 1] = False
    assert torch.allclose(jittered[untouched], expected[untouched], atol=1e-3)
    # one set per sample (B×4) applies to every frame of the block
    per_sample = base.prepare({PIXELS: pixels, JITTER: torch.tensor([[0.5, 1, 1, 0], [1, 1, 1, 0.0]])}, CPU)["frames"]
    assert torch.allclose(per_sample[0, 3], torch.stack([p[0, 3, 2 - c] * 0.5 for c in range(3)])
                          - torch.tensor(cnu.VGGFACE2_MEAN_BGR)[:, None, None], atol=1e-3)


def to_caffe(state: dict) -> dict:
    """A torchvision ResNet-50 state dict renamed to the VGGFace2 Caffe naming (the inverse of caffe_key)."""
    names = {"conv1": "1x1_reduce", "conv2": "3x3", "conv3": "1x1_increase", "downsample": "1x1_proj"}
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked") or k.startswith("fc."):
            continue
        parts = k.split(".")
        if parts[0] in ("conv1", "bn1"):
            out[f"conv1_7x7_s2{'_bn' if parts[0] == 'bn1' else ''}.{parts[1]}"] = v
            continue
        stage, block, layer = int(parts[0][5:]) + 1, int(parts[1]) + 1, parts[2]
        if layer == "downsample":
            name, bn, rest = names[layer], parts[3] == "1", parts[4]
        else:
            name, bn, rest = names[layer.replace("bn", "conv")], layer.startswith("bn"), parts[3]
        out[f"conv{stage}_{block}_{name}{'_bn' if bn else ''}.{rest}"] = v
    return out


def test_load_face_net_formats_and_strictness(tmp_path, base):
    tv = resnet50(weights=None).state_dict()
    for v in tv.values():
        if v.is_floating_point():
            v.normal_()
    torch.save(tv, tmp_path / "tv.pth")
    assert load_face_net(base, tmp_path / "tv.pth") == "torchvision"
    assert torch.equal(base.face.trunk.layer3[1].conv2.weight, tv["layer3.1.conv2.weight"])
    assert caffe_key("conv3_1_1x1_proj_bn.running_mean") == "layer2.0.downsample.1.running_mean"
    assert caffe_key("conv5_3_3x3.weight") == "layer4.2.conv2.weight" and caffe_key("classifier.weight") is None
    caffe = to_caffe(tv) | {"classifier.weight": torch.zeros(3, 2048, 1, 1), "classifier.bias": torch.zeros(3)}
    torch.save({k: v + 1 for k, v in caffe.items()}, tmp_path / "caffe.pth")
    assert load_face_net(base, tmp_path / "caffe.pth") == "caffe"
    assert torch.equal(base.face.trunk.layer2[0].downsample[1].running_var, tv["layer2.0.downsample.1.running_var"] + 1)
    # a whole face network (a CNU checkpoint's face.*) fills features and predictions too
    other = build(variant="small")
    small = build(variant="small")
    torch.save(other.state_dict(), tmp_path / "cnu.pth")
    assert load_face_net(small, tmp_path / "cnu.pth") == "face"
    assert torch.equal(small.face.predictions.weight, other.face.predictions.weight)
    bad = {"missing": {k: v for k, v in tv.items() if k != "layer4.2.bn3.weight"},
           "unexpected": tv | {"layer5.weight": torch.zeros(1)},
           "wrong-shape": tv | {"conv1.weight": torch.zeros(64, 3, 3, 3)},
           "missing ": resnet18(weights=None).state_dict()}  # a ResNet-18 file into the ResNet-50 face network
    for problem, state in bad.items():
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match=problem.strip()):
            load_face_net(base, tmp_path / "bad.pth")


def test_caffe_strides_and_checkpoint_options():
    model = build(caffe_strides=True, variant="base")
    trunk = model.face.trunk
    assert trunk.layer3[0].conv1.stride == (2, 2) and trunk.layer3[0].conv2.stride == (1, 1)
    assert trunk.maxpool.ceil_mode and trunk.maxpool.padding == 0
    assert model.settings()["options"] == {"variant": "base", "lstm": False, "caffe_strides": True, "stage": "joint"}
    with pytest.raises(ValueError, match="bottleneck"):
        build(variant="small", caffe_strides=True)
    state = build(variant="small", lstm=True).state_dict()
    assert cnu.detect_state(state) and cnu.options_of(state) == {"variant": "small", "lstm": True}
    face = build(variant="small", layout="expr7", stage="face").state_dict()
    assert cnu.options_of(face) == {"variant": "small", "lstm": False, "stage": "face"}
    assert cnu.layout_name(face) == "expr7" and cnu.layout_name(state) == "cnu"


def test_cnu_loss_parts_and_masks():
    torch.manual_seed(0)
    out = torch.randn(6, 9, requires_grad=True)
    aux = torch.tanh(torch.randn(6, 5)).requires_grad_(True)
    va = torch.rand(6, 2) * 2 - 1
    va[5] = -5.0  # no VA label
    targets = {"expr": torch.tensor([0, 1, 4, 6, -1, 2]), "va": va}
    loss = CNULoss(LAYOUT, {"aux": 2.0})
    total, parts = loss((out, aux), targets)
    a, v = va[:5, 1], va[:5, 0]
    assert torch.isclose(parts["aux"], ((aux[:5] - aux_targets(a, v)) ** 2).mean())
    assert torch.allclose(aux_targets(a, v)[:, 0], a)  # arousal first in the aux target
    reference, ref_parts = MultiTaskLoss(LAYOUT, {"expr": 1.0})((out, aux), targets)  # the tuple is accepted
    assert torch.isclose(parts["expr"], ref_parts["expr"]) and torch.isclose(parts["va"], ref_parts["va"])
    assert torch.isclose(total, reference + 2 * parts["aux"])
    total.backward()
    assert aux.grad[5].abs().sum() == 0 and aux.grad[:5].abs().sum() > 0
    # with no valid VA row the aux term is a zero still on the graph
    _, none = loss((out, aux), {"va": torch.full((6, 2), -5.0)})
    assert none["aux"].item() == 0 and none["aux"].requires_grad
    with pytest.raises(ValueError, match="unknown cnu loss weights"):
        CNULoss(LAYOUT, {"au": 1.0})
