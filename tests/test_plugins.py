"""The plug-in contract: models (models.base, models.registry), the inputs the dataset serves for them
(utils.inputs, data.clips), checkpoint reading (utils.checkpoint), output decisions (utils.outputs) and
semi-supervised methods (models.ssl). Random weights and tiny inputs throughout; the toy database of
tests/toy_db.py (the session's ``toy`` fixture)."""

import argparse
import contextlib
import copy
import os
import shlex
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_models import randomise_bn_buffers  # fresh BN buffers are 0/1: random ones test eval mode
from torch import nn
from torch.utils.data import default_collate

import opts
import train
from data.clips import Augment, ClipDataset
from models import ssl
from models.base import AffectModel, model_input, model_layout, prepare_inputs
from models.frame_cnn import FrameResNet
from models.losses import DEFAULT_TASK_WEIGHTS
from models.mean_teacher import MeanTeacher, sigmoid_rampup
from models.registry import MODELS, build_model, input_kind, load_model
from tasks import AU_NAMES_8, AU_NAMES_12, EDITIONS, EXPR_NAMES_7, LAYOUTS, MissingAUError, OutputLayout
from utils.checkpoint import CheckpointError, read_checkpoint, read_state_dict, state_dict_of, state_dicts_of
from utils.inputs import AUDIO_DB, JITTER, PIXELS, TEACHER_JITTER, InputSpec
from utils.outputs import PROFILES, decide, decide_layout, output_scores, split_outputs

CPU = torch.device("cpu")


def tiny_spec(name: str) -> InputSpec:
    """The family's input kind (and mask) at a tiny geometry."""
    spec = MODELS[name].default_input()
    if spec.kind == "frame":
        return InputSpec.frame(size=32, mask=spec.mask)
    if spec.kind == "frame_block":
        return InputSpec.frame_block(2, size=16, dilation=2, block=spec.block)
    return replace(spec, clip_len=2, dilation=2, size=16, audio_seconds=0.3)


# The layout each family is built with here: CoTEX has only the six LSD classes, CNU_ADL 7 classes and VA.
OWN_LAYOUT = {"cotex": "lsd", "cnu": "cnu"}


def smallest_size(name: str) -> str | None:
    """The smallest size of a family that has several (tiny, else small)."""
    variants = MODELS[name].variants
    return next((v for v in ("tiny", "small") if v in variants), None)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, OWN_LAYOUT.get(name, "abaw2021"), input_spec=tiny_spec(name),
                              variant=smallest_size(name)).eval() for name in MODELS}


class Wrapper(nn.Module):
    """Stands for DDP / DataParallel: the model under ``.module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


# ---------------------------------------------------------------------------------------------------
# Models


def test_opts_spells_the_registries():
    assert opts.MODELS == tuple(MODELS) and "resnet18" in MODELS
    assert opts.SSL_METHODS == tuple(ssl.METHODS)
    assert opts.DECISIONS == tuple(PROFILES)
    parser = opts.train_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.dest in ("model", "ssl")}
    assert choices == {"model": tuple(MODELS), "ssl": tuple(ssl.METHODS)}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_declares_its_input_layout_and_decision(tiny_models, name):
    model = tiny_models[name]
    spec = tiny_spec(name)
    assert isinstance(model, AffectModel) and model.arch == name
    assert model.input_spec == spec and model_input(Wrapper(model)) is model.input_spec
    assert input_kind(name) == spec.kind
    own = LAYOUTS[OWN_LAYOUT.get(name, "abaw2021")]
    assert model.layout == own and model_layout(Wrapper(model)) == own
    assert model.decision in PROFILES
    settings = model.settings()
    options = settings.pop("options", {})  # constructor options a model keeps beside its weights (cnu)
    assert settings == {"arch": name, "layout": own.name, "input": spec.to_dict(), "decision": model.decision}
    assert set(options) <= set(MODELS[name].options_of(model.state_dict())) | {"caffe_strides", "stage"}


@pytest.mark.parametrize("name", list(MODELS))
def test_prepare_output_of_dataset_samples_feeds_forward(tiny_models, toy, name):
    model = tiny_models[name]
    aug = Augment(flip=0.5, brightness=0.3, contrast=0.3, teacher=True)
    ds = ClipDataset(toy, "train", model.layout, model.input_spec, aug)
    raw = default_collate([ds[(i, 100 + i)] for i in (3, 25)])
    views = {}
    for view in ("student", "teacher"):
        inputs = model.prepare(raw, CPU, view=view)
        assert inputs and all(v.dtype == torch.float32 for v in inputs.values())
        with torch.no_grad():
            out = model(inputs)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (2, model.layout.num_outputs) and torch.isfinite(logits).all()
        blocks = {"va": "va", "expr": "expr_prob", "au": "au_prob"}
        assert set(output_scores(out, model.layout)) == {"logits"} | {blocks[b] for b in model.layout.order}
        views[view] = inputs
    student, teacher = views["student"], views["teacher"]
    assert any(not torch.equal(student[k], teacher[k]) for k in student)  # each view's own jitter
    unwrapped = prepare_inputs(Wrapper(model), raw, CPU)  # DDP-wrapped: the inner model's hook
    assert all(torch.equal(unwrapped[k], student[k]) for k in student)


@pytest.mark.parametrize("name, wrong", [
    ("tsav", InputSpec.frame(size=32)),
    ("mtmt", InputSpec(mask=None)),
    ("resnet18", InputSpec(clip_len=2, size=32, audio_seconds=0.3)),
    ("resnet18", InputSpec.frame(size=32, mask="tsav")),
])
def test_a_model_refuses_an_input_it_cannot_take(name, wrong):
    with torch.device("meta"), pytest.raises(ValueError, match=name):
        build_model(name, "abaw2021", input_spec=wrong)


def test_initialisation_flags_belong_to_their_family(tmp_path):
    with torch.device("meta"), pytest.raises(ValueError, match="backbone-init"):
        build_model("resnet18", "abaw2021", video_init=tmp_path / "r2plus1d.pth")
    with torch.device("meta"), pytest.raises(ValueError, match="video-init"):
        build_model("tsav", "abaw2021", backbone_init=tmp_path / "resnet18.pth")


# ---------------------------------------------------------------------------------------------------
# The dataset serves what the model declares


def sample_at(toy, spec: InputSpec, frame: int = 12) -> dict:
    ds = ClipDataset(toy, "train", "abaw2021", spec)
    return ds[ds.track_range("a")[frame]]


@pytest.mark.parametrize("spec, shape", [
    (InputSpec.frame(size=32), (3, 32, 32)),
    (InputSpec.frame(size=32, mask="tsav"), (4, 32, 32)),
    (InputSpec.frame_block(4, size=16), (4, 3, 16, 16)),
])
def test_frame_kinds_get_pixels_without_audio(toy, spec, shape):
    s = sample_at(toy, spec)
    assert s[PIXELS].dtype == torch.uint8 and tuple(s[PIXELS].shape) == shape
    assert AUDIO_DB not in s and JITTER in s and TEACHER_JITTER not in s


def test_clip_audio_gets_a_masked_clip_and_the_audio_window(toy):
    spec = InputSpec(clip_len=4, dilation=1, size=16, mask="tsav", audio_seconds=0.3)
    s = sample_at(toy, spec)
    assert s[PIXELS].dtype == torch.uint8 and tuple(s[PIXELS].shape) == (4, 4, 16, 16)
    assert s[AUDIO_DB].dtype == torch.float16 and tuple(s[AUDIO_DB].shape) == (1, 64, spec.audio_columns)
    assert spec.audio_columns == 31


@pytest.mark.parametrize("frame", [12, 7, 5, 0])  # 5 has no face, 7's clip reaches it, 0's starts before the track
def test_every_kind_reads_the_same_pixels(toy, frame):
    clip = sample_at(toy, InputSpec(clip_len=3, dilation=2, size=32, mask="tsav", audio_seconds=0.3), frame)
    block = sample_at(toy, InputSpec.frame_block(3, size=32, dilation=2), frame)
    single = sample_at(toy, InputSpec.frame(size=32), frame)
    assert torch.equal(single[PIXELS], clip[PIXELS][:3, -1])  # RGB of the clip's last (labelled) frame
    assert torch.equal(block[PIXELS], clip[PIXELS][:3].transpose(0, 1))  # T×C×S×S of the same frames
    assert (single[PIXELS].max() == 0) == (frame == 5)  # a frame without a face is black
    for k in ("expr", "expr_valid", "va", "va_valid", "au", "au_valid", "track", "frame"):
        assert torch.equal(single[k], clip[k]) and torch.equal(block[k], clip[k])


# ---------------------------------------------------------------------------------------------------
# Checkpoint files


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(3, 2, generator=g), "fc.bias": torch.randn(3, generator=g)}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key", [None, "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "module.module."])
def test_state_dict_formats(tmp_path, key, prefix):
    sd = small_state()
    stored = {prefix + k: v for k, v in sd.items()}
    path = tmp_path / "ckpt.pth"
    torch.save(stored if key is None else {key: stored, "epoch": 3, "layout": "abaw2021"}, path)
    assert same_state(read_state_dict(path), sd)
    (only,) = state_dicts_of(read_checkpoint(path), path)
    assert same_state(only, sd)


def test_several_state_dicts(tmp_path):
    sd1, sd2 = small_state(1), small_state(2)
    path = tmp_path / "peers.pth"
    torch.save({"state_dicts": [sd1, {f"module.{k}": v for k, v in sd2.items()}], "epoch": 1}, path)
    got = state_dicts_of(read_checkpoint(path), path)
    assert len(got) == 2 and same_state(got[0], sd1) and same_state(got[1], sd2)
    with pytest.raises(CheckpointError, match="several state dicts"):
        state_dict_of(read_checkpoint(path), path)
    with pytest.raises(CheckpointError, match="not a list of state dicts"):
        state_dicts_of({"state_dicts": [sd1, {"fc.weight": [1.0]}]}, path)


class RunsACommand:
    """Unpickling this calls os.system: what a hostile checkpoint can do when its pickle runs."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def hostile_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": small_state(), "payload": RunsACommand(marker)}, path)
    return path, marker


def test_a_pickle_that_runs_a_command_is_refused_without_running_it(tmp_path):
    path, marker = hostile_file(tmp_path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()
    read_checkpoint(path, trust_pickle=True)  # the payload is live: trusting the file runs it
    assert marker.exists()


def test_a_refused_pickle_is_reported_as_holding_other_objects_naming_the_global(tmp_path):
    path, _ = hostile_file(tmp_path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as e:
        read_checkpoint(path)
    assert "system" in str(e.value) and "not a readable" not in str(e.value)


def test_an_args_namespace_needs_an_allow_list(tmp_path):
    path = tmp_path / "mae.pth"
    torch.save({"model": small_state(), "args": argparse.Namespace(lr=0.5, arch="vit")}, path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        read_checkpoint(path)
    obj = read_checkpoint(path, safe_globals=[argparse.Namespace])
    assert obj["args"].lr == 0.5
    assert same_state(read_state_dict(path, safe_globals=[argparse.Namespace]), small_state())


def test_load_model_reads_a_train_checkpoint_of_a_frame_model(tiny_models, tmp_path):
    spec = InputSpec.frame(size=32)
    model = copy.deepcopy(tiny_models["resnet18"])
    randomise_bn_buffers(model)
    assert model.input_spec == spec and not model.training
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "arch": "resnet18", "layout": "abaw2021", "input": spec.to_dict(),
                "epoch": 0}, path)
    loaded = load_model(path)
    assert type(loaded) is FrameResNet and not loaded.training
    assert loaded.input_spec == spec and loaded.layout == LAYOUTS["abaw2021"]
    raw = {PIXELS: torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        assert torch.equal(loaded(loaded.prepare(raw, CPU)), model(model.prepare(raw, CPU)))
    bare = tmp_path / "bare.pth"  # no settings stored: the family's published input
    torch.save(model.state_dict(), bare)
    assert load_model(bare).input_spec == MODELS["resnet18"].default_input()


def test_an_older_checkpoint_with_clip_settings_gets_the_clip_audio_input(tiny_models, tmp_path):
    model = tiny_models["tsav"]
    old = {"clip_len": 3, "dilation": 4, "size": 48, "mask": "mtmt", "audio_seconds": 2.0}  # ClipConfig fields
    path = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "arch": "tsav", "layout": "abaw2021", "clip": old}, path)
    loaded = load_model(path)
    assert loaded.input_spec == InputSpec(kind="clip_audio", **old)
    assert same_state(loaded.state_dict(), model.state_dict())


# ---------------------------------------------------------------------------------------------------
# Outputs → scores → decisions

EV = OutputLayout("ev", ("va", "expr"), 8, EXPR_NAMES_7, va_activation="identity")
AU_ONLY = OutputLayout("au_only", ("au",), au_names=AU_NAMES_12)


def abaw3_outputs() -> torch.Tensor:
    """Two rows of abaw3 outputs (AU 0:12, EXPR 12:20 with 'Other' at 19, VA 20:22)."""
    out = torch.zeros(2, 22)
    out[0, 12:20] = torch.tensor([0, 0, 0, 0, 2.0, 0, 0, 3.0])  # 'Other' first, Happiness second
    out[1, 12:20] = torch.tensor([0, 0, 1.0, 0, 0, 0, 0, 0])
    out[0, :12] = torch.tensor([0.0, -1e-3, 1e-3, 5, -5, 0, 0, 0, 0, 0, 0, 0])  # logit 0: probability 0.5
    out[1, :12] = -4.0
    out[:, 20:22] = torch.tensor([[2.0, -0.5], [-3.0, 0.25]])
    return out


def numpy_scores(out, layout) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in output_scores(out, layout).items()}


def test_output_scores_of_a_full_layout():
    out = abaw3_outputs()
    scores = output_scores((out, torch.ones(2, 1)), "abaw3")  # a tuple (MTMT) reads its first element
    assert set(scores) == {"va", "expr_prob", "au_prob", "logits"}
    assert torch.equal(scores["logits"], out)
    torch.testing.assert_close(scores["va"], torch.tanh(out[:, 20:22]))
    torch.testing.assert_close(scores["expr_prob"], out[:, 12:20].softmax(1))
    torch.testing.assert_close(scores["au_prob"], torch.sigmoid(out[:, :12]))


def test_decide_argmax_over_the_editions_classes_and_inclusive_au_threshold():
    scores = numpy_scores(abaw3_outputs(), "abaw3")
    eight = decide(scores, "abaw3", EDITIONS["abaw3"])
    seven = decide(scores, "abaw3", EDITIONS["abaw2021"])  # no 'Other' in 2021: the best of the 7 classes
    assert eight["EXPR"].tolist() == [7, 2] and seven["EXPR"].tolist() == [4, 2]
    assert eight["AU"][0].tolist() == [1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1] and not eight["AU"][1].any()
    assert eight["AU"].dtype == np.int64
    assert decide(scores, "abaw3", EDITIONS["abaw3"], au_threshold=0.6)["AU"][0].tolist()[:6] == [0, 0, 0, 1, 0, 0]
    np.testing.assert_allclose(eight["VA"], np.tanh(abaw3_outputs()[:, 20:22].numpy()), rtol=1e-6)
    reordered = OutputLayout("reordered", ("au",), au_names=tuple(reversed(AU_NAMES_12)))
    flipped = numpy_scores(abaw3_outputs()[:, :12].flip(1), reordered)
    assert decide(flipped, reordered, EDITIONS["abaw2021"])["AU"].tolist() == eight["AU"].tolist()  # edition order
    assert decide_layout(flipped, reordered)["AU"].tolist() == eight["AU"][:, ::-1].tolist()  # the layout's order
    assert set(decide_layout(scores, "abaw3")) == {"VA", "EXPR", "AU"}
    assert decide_layout(scores, "abaw3")["EXPR"].tolist() == [7, 2]


def test_decide_matches_the_classes_by_name_when_the_edition_has_no_neutral():
    out = torch.zeros(3, 22)
    out[:, 12] = 9.0  # Neutral far ahead on every row, then (abaw3 columns 12..19) the class each row wants
    out[0, 18], out[1, 13], out[2, 19] = 5.0, 5.0, 8.0  # Surprise; Anger; Other (not an LSD class) and ...
    out[2, 16] = 4.0  # ... Happiness
    scores = numpy_scores(out, "abaw3")
    six = decide(scores, "abaw3", EDITIONS["lsd"])["EXPR"]  # indices in Anger, Disgust, Fear, Happiness, ...
    assert six.tolist() == [5, 0, 3]


def test_unused_expr_slot_is_never_a_class():
    out = torch.zeros(1, 22)
    out[0, 19] = 9.0  # abaw2021's 8th EXPR slot: not one of its 7 classes
    out[0, 13] = 1.0
    scores = numpy_scores(out, "abaw2021")
    assert scores["expr_prob"].shape == (1, 7)
    assert decide(scores, "abaw2021", EDITIONS["abaw3"])["EXPR"].tolist() == [1]


def test_va_activation_follows_the_layout():
    raw = torch.tensor([[1.5, -0.3, 0, 0, 0, 0, 0, 0, 0, 0], [-2.0, 0.7, 0, 0, 0, 0, 0, 0, 0, 0]])
    identity = numpy_scores(raw, EV)
    np.testing.assert_allclose(identity["va"], [[1.0, -0.3], [-1.0, 0.7]], rtol=1e-6)  # identity, clipped
    tanh = numpy_scores(torch.cat([torch.zeros(2, 20), raw[:, :2]], 1), "abaw2021")
    np.testing.assert_allclose(tanh["va"], np.tanh(raw[:, :2].numpy()), rtol=1e-6)
    np.testing.assert_allclose(decide_layout(identity, EV)["VA"], identity["va"])


def test_layouts_with_some_blocks_give_only_those_keys():
    ev = numpy_scores(torch.randn(3, 10), EV)
    assert set(ev) == {"va", "expr_prob", "logits"}
    assert set(decide(ev, EV, EDITIONS["abaw2021"])) == {"VA", "EXPR"} and set(decide_layout(ev, EV)) == {"VA", "EXPR"}
    assert set(split_outputs(torch.randn(3, 12), AU_ONLY)) == {"au"}
    au = numpy_scores(torch.randn(3, 12), AU_ONLY)
    assert set(au) == {"au_prob", "logits"}
    only = decide(au, AU_ONLY, EDITIONS["abaw2021"])
    assert set(only) == {"AU"} and only["AU"].shape == (3, 12)
    few = OutputLayout("few_aus", ("au",), au_names=AU_NAMES_8)
    with pytest.raises(MissingAUError, match="AU7"):
        decide(numpy_scores(torch.randn(3, 8), few), few, EDITIONS["abaw2021"])
    with pytest.raises(ValueError, match="unknown decision profile"):
        decide(au, AU_ONLY, EDITIONS["abaw2021"], profile="vote")


# ---------------------------------------------------------------------------------------------------
# Semi-supervised methods


class TinyNet(nn.Module):
    """22 outputs (abaw2021) from a dict input, with a BatchNorm so buffers are averaged too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 22)
        self.bn = nn.BatchNorm1d(22)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.bn(self.fc(inputs["x"]))


def ssl_args(**over) -> argparse.Namespace:
    base = {"ema_decay": 0.5, "consistency_weight": 0.4, "consistency": "missing", "rank_weight": 12.0,
            "au_reduction": "sum", "rampup_epochs": 4}
    return argparse.Namespace(**{**base, **over})


def test_build_method_and_its_flags():
    torch.manual_seed(0)
    student = TinyNet()
    none = ssl.build_method("none", student, ssl_args())
    mt = ssl.build_method("mean_teacher", Wrapper(student), ssl_args())
    assert type(none) is ssl.Supervised and type(mt) is ssl.MeanTeacherMethod
    def flags(method):
        return method.name, method.teacher_view, method.uses_unlabelled, method.default_select

    assert flags(none) == ("none", False, False, "student")
    assert flags(mt) == ("mean_teacher", True, True, "teacher")
    assert ssl.uses_teacher_view("mean_teacher") and not ssl.uses_teacher_view("none")
    assert ssl.default_select("mean_teacher") == "teacher" and ssl.default_select("none") == "student"
    assert isinstance(mt.teacher, MeanTeacher) and mt.teacher.teacher is not student
    assert not any(p.requires_grad for p in mt.teacher.teacher.parameters())
    assert none.models() == {} and none.checkpoint_entries() == {}
    assert mt.models() == {"teacher": mt.teacher.teacher}
    for select in ("student", "teacher"):
        assert none.evaluated(Wrapper(student), select) is student
    assert mt.evaluated(Wrapper(student), "teacher") is mt.teacher.teacher
    assert mt.evaluated(Wrapper(student), "student") is student
    with pytest.raises(ValueError, match="unknown semi-supervised method 'pseudo'"):
        ssl.build_method("pseudo", student, ssl_args())


def test_check_resume_names_the_mismatch():
    with_teacher = {"model": {}, "teacher": {"step": 3}}
    without = {"model": {}}
    assert ssl.METHODS["none"].check_resume(with_teacher) == "saved with a mean teacher"
    assert ssl.METHODS["none"].check_resume(without) is None
    assert ssl.METHODS["mean_teacher"].check_resume(without) == "saved without a mean teacher"
    assert ssl.METHODS["mean_teacher"].check_resume({**without, "teacher": None}) == "saved without a mean teacher"
    assert ssl.METHODS["mean_teacher"].check_resume(with_teacher) is None


def test_after_step_moves_the_ema_and_restore_brings_it_back():
    torch.manual_seed(0)
    student = TinyNet()
    w0, m0 = student.fc.weight.detach().clone(), student.bn.running_mean.clone()
    mt = ssl.build_method("mean_teacher", student, ssl_args(ema_decay=0.5))
    none = ssl.build_method("none", student, ssl_args())
    with torch.no_grad():
        student.fc.weight.add_(1.0)
        student.bn.running_mean.add_(2.0)
    none.after_step(student)  # nothing to move
    mt.after_step(student)  # first update: decay 0, the teacher becomes the student
    torch.testing.assert_close(mt.teacher.teacher.fc.weight, w0 + 1)
    with torch.no_grad():
        student.fc.weight.add_(1.0)
        student.bn.running_mean.add_(2.0)
    mt.after_step(student)  # then decay 0.5: halfway
    torch.testing.assert_close(mt.teacher.teacher.fc.weight, w0 + 1.5)
    torch.testing.assert_close(mt.teacher.teacher.bn.running_mean, m0 + 3.0)
    assert mt.teacher.step == 2
    saved = mt.checkpoint_entries()
    other = ssl.build_method("mean_teacher", TinyNet(), ssl_args(ema_decay=0.5))
    other.restore(saved)
    assert other.teacher.step == 2
    assert same_state(other.teacher.teacher.state_dict(), mt.teacher.teacher.state_dict())


def test_consistency_term_only_when_weighted():
    torch.manual_seed(0)
    student = TinyNet().eval()
    raw = {"x": torch.randn(4, 4)}
    valid = {"expr": torch.tensor([True, False, True, False]), "au": torch.ones(4, 12, dtype=torch.bool),
             "va": torch.zeros(4, dtype=torch.bool)}
    out = student({"x": raw["x"] + 0.1})
    common = (out, raw, lambda view: {"x": raw["x"]}, valid, LAYOUTS["abaw2021"], DEFAULT_TASK_WEIGHTS, 2.0,
              contextlib.nullcontext)
    assert ssl.build_method("none", student, ssl_args()).extra_loss(*common) == (None, {})
    assert ssl.build_method("mean_teacher", student, ssl_args(consistency_weight=0)).extra_loss(*common) == (None, {})
    term, logs = ssl.build_method("mean_teacher", student, ssl_args()).extra_loss(*common)
    assert logs["consistency_weight"] == pytest.approx(sigmoid_rampup(2.0, 0.4, 4))
    torch.testing.assert_close(term, logs["consistency_weight"] * logs["consistency"])
    assert term.item() > 0 and term.requires_grad


# ---------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # one epoch of ResNet-18 on 32 px frames: ~12 s on 2 busy cores
def test_train_a_frame_model_and_load_its_best_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    argv = ["--db", str(toy), "--output-dir", str(out), "--model", "resnet18", "--epochs", "1",
            "--size", "32", "--batch-size", "2", "--samples-per-epoch", "4", "--val-samples", "8",
            "--eval-batch-size", "8", "--workers", "0", "--no-tensorboard", "--no-progress", "--device", "cpu",
            "--seed", "1"]
    assert train.main(argv) == 0
    model = load_model(out / "best.pth")
    assert type(model) is FrameResNet and model.input_spec.kind == "frame"
    assert model.input_spec == InputSpec.frame(size=32) and model.layout == LAYOUTS["abaw2021"]
    stored = read_checkpoint(out / "best.pth")
    assert stored["arch"] == "resnet18" and stored["input"] == InputSpec.frame(size=32).to_dict()
