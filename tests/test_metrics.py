"""Official metrics (SPEC §6) against scikit-learn and a direct numpy CCC."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from data.annotations import labels_from_array
from tasks import AU_NAMES_12, EDITIONS, EXPR_NAMES_7
from utils import metrics as M


def direct_ccc(x, y):
    cov = np.cov(x, y, bias=True)
    return 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2)


@pytest.mark.parametrize("seed", range(5))
def test_ccc_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, 500)
    x = 0.5 * y + rng.normal(0, 0.3, 500) + 0.1
    assert M.ccc(x, y) == pytest.approx(direct_ccc(x, y), abs=1e-9)
    assert M.ccc(y, y) == pytest.approx(1.0, abs=1e-12)


def test_ccc_edge_cases():
    y = np.linspace(-1, 1, 50)
    assert M.ccc(np.full(50, 0.3), y) == pytest.approx(0.0, abs=1e-12)  # constant: no covariance
    assert M.ccc(np.full(5, 0.2), np.full(5, 0.2)) == 0.0  # 0/0 defined as 0
    assert math.isnan(M.ccc(np.array([]), np.array([])))


@pytest.mark.parametrize("seed", range(5))
def test_f1_and_accuracy_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, 7, 800), rng.integers(0, 8, 800)  # a predicted 8th class joins the average
    assert M.macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-9)
    assert M.accuracy(t, p) == pytest.approx(accuracy_score(t, p), abs=1e-12)
    bt, bp = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert M.binary_f1(bt, bp) == pytest.approx(f1_score(bt, bp, zero_division=0), abs=1e-9)


def test_macro_f1_with_absent_class():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 7, 400), rng.integers(0, 7, 400)
    t[t == 3], p[p == 3] = 0, 0  # class 3 absent from both: averaged over the 6 present labels
    assert M.macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro"), abs=1e-9)
    all7 = f1_score(t, p, average="macro", labels=list(range(7)), zero_division=0)
    assert M.macro_f1(t, p) == pytest.approx(all7 * 7 / 6, abs=1e-9)
    t2 = np.arange(400) % 7  # every class present: both conventions agree
    assert M.macro_f1(t2, p) == pytest.approx(
        f1_score(t2, p, average="macro", labels=list(range(7))), abs=1e-9)


def test_binary_f1_zero_division():
    assert M.binary_f1(np.zeros(10), np.zeros(10)) == 0.0
    assert M.binary_f1(np.zeros(10), np.ones(10)) == 0.0


def test_va_scores_ignore_invalid_frames():
    rng = np.random.default_rng(2)
    true = rng.uniform(-1, 1, (200, 2))
    pred = true + rng.normal(0, 0.2, (200, 2))
    valid = rng.random(200) > 0.3
    true[~valid] = -5
    out = M.va_scores(pred, true, valid)
    pred2 = pred.copy()
    pred2[~valid] = 99  # whatever is predicted on invalid frames does not matter
    assert M.va_scores(pred2, true, valid) == out
    v = direct_ccc(pred[valid, 0], true[valid, 0])
    a = direct_ccc(pred[valid, 1], true[valid, 1])
    assert out["ccc_valence"] == pytest.approx(v, abs=1e-9)
    assert out["score"] == pytest.approx((v + a) / 2, abs=1e-9)


@pytest.mark.parametrize("edition,w", [("abaw2020", (0.67, 0.33)), ("abaw2021", (0.67, 0.33)),
                                       ("abaw3", (1, 0))])
def test_expr_formula_per_edition(edition, w):
    rng = np.random.default_rng(3)
    k = len(EDITIONS[edition].expr_names)
    t, p = rng.integers(-1, k, 600), rng.integers(0, k, 600)
    valid = t >= 0
    out = M.expr_scores(p, t, valid, edition)
    f1 = f1_score(t[valid], p[valid], average="macro")
    acc = accuracy_score(t[valid], p[valid])
    assert out["f1"] == pytest.approx(f1, abs=1e-9) and out["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert out["score"] == pytest.approx(w[0] * f1 + w[1] * acc, abs=1e-9)


def test_expr_other_targets_dropped_under_seven_classes():
    t = np.array([0, 7, 1, 7, 2])
    p = np.array([0, 7, 1, 0, 2])
    assert M.expr_scores(p, t, t >= 0, "abaw2021")["f1"] == 1.0
    assert M.expr_scores(p, t, t >= 0, "abaw3")["accuracy"] == pytest.approx(0.8)


@pytest.mark.parametrize("edition", ["abaw2020", "abaw2021", "abaw3"])
def test_au_formula_per_edition(edition):
    ed = EDITIONS[edition]
    rng = np.random.default_rng(4)
    k = len(ed.au_names)
    t = rng.integers(0, 2, (300, k))
    p = rng.integers(0, 2, (300, k))
    valid = rng.random((300, k)) > 0.2
    t[~valid] = -1
    out = M.au_scores(p, t, valid, edition)
    per = [f1_score(t[valid[:, j], j], p[valid[:, j], j]) for j in range(k)]
    assert list(out["per_au"]) == list(ed.au_names)
    assert list(out["per_au"].values()) == pytest.approx(per, abs=1e-9)
    acc = accuracy_score(t[valid], p[valid])
    assert out["accuracy"] == pytest.approx(acc, abs=1e-12)
    expected = 0.5 * np.mean(per) + 0.5 * acc if edition != "abaw3" else np.mean(per)
    assert out["score"] == pytest.approx(expected, abs=1e-9)
    p2 = p.copy()
    p2[~valid] = 1 - p2[~valid]  # invalid entries are ignored per entry
    assert M.au_scores(p2, t, valid, edition) == out


def test_au_wrong_width_is_an_error():
    with pytest.raises(ValueError, match="8 AUs"):
        M.au_scores(np.zeros((3, 12)), np.zeros((3, 12)), np.ones((3, 12), bool), "abaw2020")


def test_all_invalid_gives_nan_and_null_json(tmp_path):
    va = M.va_scores(np.zeros((4, 2)), np.full((4, 2), -5.0), np.zeros(4, bool))
    assert all(math.isnan(v) for v in va.values())
    expr = M.expr_scores(np.zeros(4), np.full(4, -1), np.zeros(4, bool), "abaw3")
    assert math.isnan(expr["score"]) and math.isnan(expr["f1"])
    au = M.au_scores(np.zeros((4, 12)), np.full((4, 12), -1), np.zeros((4, 12), bool), "abaw3")
    assert math.isnan(au["score"]) and all(math.isnan(v) for v in au["per_au"].values())


def track(name, task, names, raw):
    return labels_from_array(name, task, "Validation_Set", names, np.asarray(raw, float))


def test_score_concatenates_tracks_and_totals_defined_scores(tmp_path):
    rng = np.random.default_rng(5)
    va_t = {n: rng.uniform(-1, 1, (m, 2)) for n, m in (("a", 50), ("b", 80))}
    va_p = {n: v * 0.5 + 0.1 for n, v in va_t.items()}
    truths = {"VA": {n: track(n, "VA", ("valence", "arousal"), v) for n, v in va_t.items()},
              "EXPR": {"a": track("a", "EXPR", EXPR_NAMES_7, np.full(5, -1))}}
    preds = {"VA": va_p, "EXPR": {"a": np.zeros(5, int)}}
    out = M.score(preds, truths, "abaw2021")
    allp, allt = np.concatenate([va_p["a"], va_p["b"]]), np.concatenate([va_t["a"], va_t["b"]])
    assert out["va"]["ccc_valence"] == pytest.approx(direct_ccc(allp[:, 0], allt[:, 0]), abs=1e-6)
    assert "au" not in out and math.isnan(out["expr"]["score"])
    assert out["total"] == out["va"]["score"]
    M.write_json(out, tmp_path / "s.json")
    loaded = json.loads((tmp_path / "s.json").read_text())
    assert loaded["expr"]["f1"] is None and list(loaded) == ["edition", "va", "expr", "total"]
    assert "VA" in M.format_scores(out) and "n/a" in M.format_scores(out)


def test_score_selects_au_columns_by_name():
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 2, (40, 12))
    truths = {"AU": {"a": track("a", "AU", AU_NAMES_12, raw)}}
    out = M.score({"AU": {"a": raw}}, truths, "abaw2021")
    assert out["au"]["f1"] == 1.0 and out["total"] == 1.0
    with pytest.raises(ValueError, match="AU20"):
        M.score({"AU": {"a": raw[:, :8]}}, truths, "abaw2020")
    with pytest.raises(ValueError, match="no AU prediction"):
        M.score({"AU": {}}, truths, "abaw2021")
