"""models/mean_teacher.py: EMA arithmetic over a global step, BN buffers, resume, ramp-up, consistency."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.mean_teacher import MeanTeacher, consistency_loss, ema_decay, sigmoid_rampup


def tiny_student() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def set_student(model: nn.Module, value: float, batches: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        bn = model[1]
        bn.running_mean.fill_(value / 10)
        bn.running_var.fill_(1 + value)
        bn.num_batches_tracked.fill_(batches)


def test_ema_decay_warm_up():
    assert [ema_decay(k) for k in (0, 1, 3)] == [0.0, 0.5, 0.75]
    assert ema_decay(99) == pytest.approx(0.99)
    assert ema_decay(10_000) == 0.99
    assert ema_decay(5, max_decay=0.6) == 0.6


def test_ema_matches_hand_computation_including_bn_buffers():
    student = tiny_student()
    mt = MeanTeacher(student, decay=0.6)
    values = [1.0, 3.0, -2.0, 5.0]
    expected = None
    for k, v in enumerate(values):
        set_student(student, v, batches=10 * (k + 1))
        alpha = mt.update(student)
        assert alpha == min(1 - 1 / (k + 1), 0.6)
        expected = v if expected is None else alpha * expected + (1 - alpha) * v
    # Hand-computed: α = 0, 0.5, 0.6, 0.6 → 1; 2; 0.6·2 + 0.4·(−2) = 0.4; 0.6·0.4 + 0.4·5 = 2.24.
    assert expected == pytest.approx(2.24)
    for p in mt.teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected))
    bn = mt.teacher[1]
    torch.testing.assert_close(bn.running_mean, torch.full((2,), expected / 10))
    torch.testing.assert_close(bn.running_var, torch.full((2,), 1 + expected))
    assert int(bn.num_batches_tracked) == 40  # copied, not averaged
    assert mt.step == 4


def test_teacher_is_eval_without_grad_on_the_student_device():
    student = tiny_student()
    mt = MeanTeacher(student)
    assert not mt.teacher.training and not any(p.requires_grad for p in mt.teacher.parameters())
    mt.teacher.train()
    out = mt(torch.randn(4, 3))
    assert not mt.teacher.training and not out.requires_grad
    assert next(mt.teacher.parameters()).device == next(student.parameters()).device
    assert mt.teacher is not student and mt.teacher[0].weight is not student[0].weight


def test_resume_continues_the_global_step():
    student = tiny_student()
    mt = MeanTeacher(student)
    for v in (1.0, 2.0, 3.0):
        set_student(student, v, 1)
        mt.update(student)
    saved = mt.state_dict()
    resumed = MeanTeacher(tiny_student())
    resumed.load_state_dict(saved)
    assert resumed.step == 3
    set_student(student, 10.0, 1)
    assert mt.update(student) == resumed.update(student) == 0.75  # no reset to α = 0 at an epoch start
    for a, b in zip(mt.teacher.state_dict().values(), resumed.teacher.state_dict().values()):
        assert torch.equal(a, b)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0) == pytest.approx(0.4 * math.exp(-5))
    assert sigmoid_rampup(5) == pytest.approx(0.4 * math.exp(-5 * (2 / 3) ** 2))
    assert sigmoid_rampup(10) == pytest.approx(0.2295, abs=1e-4)
    assert sigmoid_rampup(15) == sigmoid_rampup(40) == 0.4
    assert sigmoid_rampup(3, max_weight=1.0, length=6) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(3, length=0) == 0.4


def numpy_ccc(x, y):
    mx, my = x.mean(), y.mean()
    return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)


def test_consistency_only_on_samples_missing_each_label():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 22, generator=g), torch.randn(8, 22, generator=g)
    has = {
        "expr": torch.tensor([1, 0, 1, 0, 0, 1, 0, 1], dtype=torch.bool),
        "au": torch.tensor([1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool),
        "va": torch.tensor([0, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool),
    }
    total, terms = consistency_loss(student, teacher, has, "mtmt")

    m = ~has["expr"]
    expr = F.cross_entropy(student[m, 12:19], teacher[m, 12:19].argmax(1))
    m = ~has["au"]
    au = sum(F.binary_cross_entropy_with_logits(student[m, j], torch.sigmoid(teacher[m, j])) for j in range(12))
    m = (~has["va"]).numpy()
    s_va, t_va = np.tanh(student.numpy()[m, 20:]), np.tanh(teacher.numpy()[m, 20:])
    va = sum(1 - numpy_ccc(s_va[:, d].astype(np.float64), t_va[:, d].astype(np.float64)) for d in range(2))
    torch.testing.assert_close(terms["expr"], expr)
    torch.testing.assert_close(terms["au"], au)
    assert float(terms["va"]) == pytest.approx(va, abs=1e-5)
    torch.testing.assert_close(total, 3 * expr + au + terms["va"])
    assert "rank" not in terms

    # Labelled samples' outputs do not matter with only_missing.
    moved = student.clone()
    moved[has["expr"], 12:20] += 5.0
    moved[has["au"], :12] -= 3.0
    moved[has["va"], 20:] *= 4.0
    torch.testing.assert_close(consistency_loss(moved, teacher, has, "mtmt")[0], total)
    assert not torch.allclose(consistency_loss(moved, teacher, has, "mtmt", only_missing=False)[0], total)


def test_consistency_all_samples_rank_term_and_gradients():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(10, 22, generator=g, requires_grad=True)
    teacher = torch.randn(10, 22, generator=g, requires_grad=True)
    alpha = torch.linspace(0.45, 0.55, 10)[:, None]
    everything = {k: torch.ones(10, dtype=torch.bool) for k in ("expr", "au", "va")}
    total_all, terms_all = consistency_loss((student, alpha), teacher, everything, "mtmt", only_missing=False)
    total_none, terms_none = consistency_loss(student, teacher, {}, "mtmt")  # no labels at all
    for k in ("expr", "au", "va"):
        torch.testing.assert_close(terms_all[k], terms_none[k])
    assert terms_all["rank"].item() > 0
    torch.testing.assert_close(total_all, total_none + 12 * terms_all["rank"])
    total_all.backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is a fixed target

    labelled = consistency_loss(student, teacher, everything, "mtmt")[0]
    assert labelled.item() == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        consistency_loss(student, teacher, {"EXPR": everything["expr"]}, "mtmt")
