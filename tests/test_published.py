"""Published checkpoints run as their authors ran them: decision profiles, self-selection, overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import test_val_aff2
from models import registry
from models.registry import build_model, load_model
from tasks import get_edition
from utils.inputs import InputSpec
from utils.outputs import PROFILES, decide, decide_layout, output_scores

TINY = InputSpec(clip_len=2, dilation=2, size=16, mask="tsav", audio_seconds=0.3)
# The hand-written raw outputs of TSAV's abaw2020 layout: EXPR [0:7], VA [7:9], AU [9:17].
RAW_VA = [[0.6, 0.9], [1.3, -1.7]]
RAW_AU = [0.2, 0.4, 0.5, 0.6, -0.1, 0.05, 0.49, 0.8]


def raw_abaw2020() -> torch.Tensor:
    out = torch.zeros(2, 17)
    out[:, 2] = 1.0  # EXPR: class 2 everywhere
    out[:, 7:9] = torch.tensor(RAW_VA)
    out[:, 9:17] = torch.tensor([RAW_AU, RAW_AU])
    return out


def decided(profile: str, out: torch.Tensor, layout: str = "abaw2020", edition: str = "abaw2020") -> dict:
    scores = {k: v.numpy() for k, v in output_scores(out, layout, profile).items()}
    return decide(scores, layout, get_edition(edition), profile)


def test_tsav2020_profile_clips_raw_va_and_sets_an_au_only_above_a_raw_half():
    ref, ours = decided("tsav2020", raw_abaw2020()), decided("default", raw_abaw2020())
    np.testing.assert_allclose(ref["VA"][0], [0.6, 0.9], atol=1e-6)  # no tanh
    np.testing.assert_allclose(ref["VA"][1], [1.0, -1.0])  # clipped
    np.testing.assert_allclose(ours["VA"][0], np.tanh([0.6, 0.9]), atol=1e-6)  # 0.537, 0.716
    np.testing.assert_allclose(ours["VA"][1, 0], np.tanh(1.3), atol=1e-6)  # 0.862
    assert ref["AU"][0].tolist() == [0, 0, 0, 1, 0, 0, 0, 1]  # round(clip(raw, 0, 1)): 0.5 rounds down
    assert ours["AU"][0].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]  # sigmoid(raw) >= 0.5
    assert ref["EXPR"].tolist() == ours["EXPR"].tolist() == [2, 2]
    # the per-frame report of --video decides the same way
    scores = {k: v.numpy() for k, v in output_scores(raw_abaw2020(), "abaw2020", "tsav2020").items()}
    assert decide_layout(scores, "abaw2020", "tsav2020")["AU"][0].tolist() == [0, 0, 0, 1, 0, 0, 0, 1]


def test_mtmt2021_profile_rounds_the_sigmoid_and_keeps_seven_classes():
    out = torch.zeros(1, 22)  # mtmt layout: AU 12 [0:12], EXPR 8 [12:20], VA [20:22]
    out[0, :12] = torch.tensor([0.0, 0.3, -0.3, 2.0] + [0.0] * 8)
    out[0, 12 + 7] = 9.0  # the unused slot 7 has the largest logit
    out[0, 12 + 4] = 1.0
    out[0, 20:22] = torch.tensor([0.6, 3.0])
    ref = decided("mtmt2021", out, "mtmt", "abaw2021")
    ours = decided("default", out, "mtmt", "abaw2021")
    assert ref["AU"][0, :4].tolist() == [0, 1, 0, 1]  # sigmoid(0) = 0.5 rounds to 0
    assert ours["AU"][0, :4].tolist() == [1, 1, 0, 1]
    assert ref["EXPR"].tolist() == ours["EXPR"].tolist() == [4]  # slot 7 is never written
    np.testing.assert_allclose(ref["VA"], np.tanh([[0.6, 3.0]]), atol=1e-6)


def test_every_profile_is_described():
    assert {"default", "tsav2020", "mtmt2021", "emma", "emma_thresholds"} <= set(PROFILES)
    assert all(p.description for p in PROFILES.values())


def published_file(path: Path, arch: str, layout: str, seed: int = 0, scale: float = 1.0) -> Path:
    """A checkpoint as its authors shipped it: {'state_dict': weights}, nothing else (TSAV416k.pth.tar's form)."""
    torch.manual_seed(seed)
    m = build_model(arch, layout, input_spec=TINY)
    state = m.state_dict()
    if scale != 1.0:  # a larger head spreads the raw outputs over both sides of each profile's thresholds
        for k in state:
            if k.startswith(("fc.", "fc_")) and k.endswith("weight"):
                state[k] = state[k] * scale
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture
def tiny_published_inputs(monkeypatch):
    """Published files carry no input settings: load them with the TINY geometry (the published 8×112×112 and
    10 s would make these tests minutes long on a CPU); everything else is the real loading path."""
    for name in ("tsav", "mtmt"):
        family = registry.MODELS[name]
        monkeypatch.setitem(registry.MODELS, name, dataclasses.replace(family, default_input=lambda: TINY))


def test_a_published_checkpoint_selects_its_authors_profile_and_audio_window(tiny_published_inputs, tmp_path):
    tsav = load_model(published_file(tmp_path / "TSAV416k.pth.tar", "tsav", "abaw2020"))
    assert tsav.decision == "tsav2020" and tsav.input_spec.audio_window == "reference"
    mtmt = load_model(published_file(tmp_path / "mtmt.pth", "mtmt", "mtmt"))
    assert mtmt.decision == "mtmt2021" and mtmt.input_spec.audio_window == "reference"
    torch.manual_seed(0)
    ours = build_model("tsav", "abaw2020", input_spec=TINY)
    torch.save({"model": ours.state_dict(), **ours.settings()}, tmp_path / "ours.pth")
    mine = load_model(tmp_path / "ours.pth")  # trained here: our defaults
    assert mine.decision == "default" and mine.input_spec.audio_window == "centred"


def test_split_mode_writes_the_profile_decisions_of_the_raw_outputs(tiny_published_inputs, mini_quick, mini_db,
                                                                     tmp_path, capsys):
    ckpt = published_file(tmp_path / "TSAV416k.pth.tar", "tsav", "abaw2020", seed=3, scale=40.0)
    ann = mini_quick / "annotations" / "abaw2020"
    common = ["--checkpoint", str(ckpt), "--db", str(mini_db), "--split", "val", "--annotations", str(ann),
              "--workers", "0", "--edition", "abaw2020"]
    assert test_val_aff2.main([*common, "--out", str(tmp_path / "ref")]) == 0
    said = capsys.readouterr().out
    assert "decisions tsav2020, audio window reference" in said
    assert test_val_aff2.main([*common, "--out", str(tmp_path / "ours"), "--decision", "default"]) == 0
    checked = 0
    for npz in sorted((tmp_path / "ref" / "raw").glob("*.npz")):
        logits = np.load(npz)["logits"]  # the model's raw outputs in its own column order
        track = npz.stem
        va = read_rows(tmp_path / "ref" / "submission" / "VA_Set" / f"{track}.txt", float)
        au = read_rows(tmp_path / "ref" / "submission" / "AU_Set" / f"{track}.txt", int)
        expr = read_rows(tmp_path / "ref" / "submission" / "EXPR_Set" / f"{track}.txt", int)
        np.testing.assert_allclose(va, np.round(np.clip(logits[:, 7:9], -1, 1), 3), atol=1.1e-3)
        assert (au == (logits[:, 9:17] > 0.5)).all()
        assert (expr[:, 0] == logits[:, :7].argmax(1)).all()
        ours_va = read_rows(tmp_path / "ours" / "submission" / "VA_Set" / f"{track}.txt", float)
        np.testing.assert_allclose(ours_va, np.round(np.tanh(logits[:, 7:9]), 3), atol=1.1e-3)
        checked += len(logits)
    assert checked > 0
    assert json.loads((tmp_path / "ref" / "scores.json").read_text())["edition"] == "abaw2020"


def read_rows(path: Path, kind: type) -> np.ndarray:
    lines = path.read_text().splitlines()[1:]
    return np.array([[kind(x) for x in line.split(",")] for line in lines])


@pytest.mark.slow
def test_video_mode_decides_by_the_profile_with_the_reference_window(tiny_published_inputs, mini_quick, tmp_path,
                                                                     capsys):
    meta = json.loads((mini_quick / "meta.json").read_text())
    v = next(v for v in meta["videos"] if v["has_audio"] and len(v["tracks"]) == 1)
    src = mini_quick / v["path"]
    ckpt = published_file(tmp_path / "TSAV416k.pth.tar", "tsav", "abaw2020", seed=3, scale=40.0)
    assert test_val_aff2.main(["--checkpoint", str(ckpt), "--video", str(src), "--out", str(tmp_path / "one")]) == 0
    assert "decisions tsav2020, audio window reference" in capsys.readouterr().out
    raw = np.load(tmp_path / "one" / f"{src.stem}.npz")
    logits, face = raw["logits"], raw["face"].astype(bool)
    lines = (tmp_path / "one" / f"{src.stem}.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    au_cols = [header.index(name) for name in ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")]
    checked = 0
    for i, row in enumerate(rows):
        if not face[i] or not row[header.index("valence")]:
            continue
        np.testing.assert_allclose([float(row[header.index("valence")]), float(row[header.index("arousal")])],
                                   np.clip(logits[i, 7:9], -1, 1), atol=1e-3)
        assert [int(row[c]) for c in au_cols] == (logits[i, 9:17] > 0.5).astype(int).tolist()
        checked += 1
    assert checked > 10
