"""models/mean_teacher.py: EMA arithmetic over a global step, BN buffers, resume, ramp-up, consistency;
MTMT's published variants (teacher BN in train mode, ramp by whole epochs, reference CCC, 8-logit EXPR)."""

import argparse
import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import ssl
from models.losses import DEFAULT_TASK_WEIGHTS
from models.mean_teacher import MeanTeacher, consistency_loss, ema_decay, sigmoid_rampup
from tasks import LAYOUTS


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


# ---------------------------------------------------------------------------------------------------
# MTMT's published variants


def numpy_reference_ccc(x, y, n_batch):
    cov_sum = ((x - x.mean()) * (y - y.mean())).sum()
    return 2 * cov_sum / ((x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2 + 1e-8) * n_batch)


def test_consistency_with_eight_expr_logits_and_the_reference_ccc():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 22, generator=g), torch.randn(8, 22, generator=g)
    teacher[[1, 3], 19] = 10.0  # the teacher's argmax is the unused slot 7 on rows 1 and 3
    has = {"expr": torch.tensor([1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool),
           "va": torch.tensor([0, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)}
    ours = consistency_loss(student, teacher, has, "mtmt")[1]
    mtmt = consistency_loss(student, teacher, has, "mtmt", ccc="reference", expr_classes=8)[1]

    # Missing EXPR: rows 1, 3, 4, 6, 7. MTMT: softmax over 8 slots, rows 1 and 3 ignored (target 7).
    used = [4, 6, 7]
    torch.testing.assert_close(mtmt["expr"], F.cross_entropy(student[used, 12:20], teacher[used, 12:20].argmax(1)))
    missing = [1, 3, 4, 6, 7]
    torch.testing.assert_close(ours["expr"], F.cross_entropy(student[missing, 12:19],
                                                             teacher[missing, 12:19].argmax(1)))
    # Missing VA: rows 0, 2, 4, 5. MTMT's CCC on that subset: unbiased variances, covariance / 4 rows.
    m = [0, 2, 4, 5]
    s_va, t_va = np.tanh(student.double().numpy()[m, 20:]), np.tanh(teacher.double().numpy()[m, 20:])
    expected = sum(1 - numpy_reference_ccc(s_va[:, d], t_va[:, d], 4) for d in range(2))
    assert float(mtmt["va"]) == pytest.approx(expected, abs=1e-5)
    assert abs(float(mtmt["va"]) - float(ours["va"])) > 0.01  # here only the (n − 1) variances differ
    torch.testing.assert_close(mtmt["au"], ours["au"])  # untouched by both options


def bn_student() -> nn.Module:
    torch.manual_seed(0)
    model = tiny_student()
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.5, -1.0]))
        model[1].running_var.copy_(torch.tensor([2.0, 0.5]))
        model[1].weight.copy_(torch.tensor([1.5, 0.7]))
        model[1].bias.copy_(torch.tensor([0.1, -0.2]))
    return model


def test_teacher_bn_train_uses_batch_statistics_and_keeps_its_own_running_stats():
    student = bn_student()
    eval_mt, train_mt = MeanTeacher(student, bn="eval"), MeanTeacher(student, bn="train")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = student[0](x)
    bn = student[1]
    w, b, eps = bn.weight.detach(), bn.bias.detach(), bn.eps
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    by_running = (h - mean0) / torch.sqrt(var0 + eps) * w + b
    by_batch = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + eps) * w + b

    torch.testing.assert_close(eval_mt(x), by_running)
    torch.testing.assert_close(train_mt(x), by_batch)
    assert not torch.allclose(by_running, by_batch, atol=0.1)
    # Published teacher: its forward passes move its running statistics (momentum 0.1, unbiased variance) ...
    t_bn = train_mt.teacher[1]
    torch.testing.assert_close(t_bn.running_mean, 0.9 * mean0 + 0.1 * h.mean(0))
    torch.testing.assert_close(t_bn.running_var, 0.9 * var0 + 0.1 * h.var(0, unbiased=True))
    assert int(t_bn.num_batches_tracked) == 1
    assert torch.equal(eval_mt.teacher[1].running_mean, mean0)  # ours: a call changes nothing
    assert not train_mt.teacher.training and not t_bn.training  # back in eval mode for validation
    # ... and the EMA covers the parameters only: the student's buffers never reach the teacher.
    mean1, var1 = t_bn.running_mean.clone(), t_bn.running_var.clone()
    set_student(student, 2.0, batches=50)
    assert train_mt.update(student) == eval_mt.update(student) == 0.0  # first update: the teacher = the student
    for p in train_mt.teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.0))
    assert torch.equal(t_bn.running_mean, mean1) and torch.equal(t_bn.running_var, var1)
    assert int(t_bn.num_batches_tracked) == 1
    torch.testing.assert_close(eval_mt.teacher[1].running_mean, torch.full((2,), 0.2))  # ours: averaged
    with pytest.raises(ValueError, match="teacher BatchNorm mode"):
        MeanTeacher(student, bn="frozen")


class Net22(nn.Module):
    """22 outputs (mtmt layout) from a dict input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 22)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.fc(inputs["x"])


def mt_args(**over) -> argparse.Namespace:
    base = {"ema_decay": 0.5, "consistency_weight": 0.4, "consistency": "missing", "rank_weight": 12.0,
            "au_reduction": "sum", "rampup_epochs": 4, "rampup_by": "step", "teacher_bn": "eval",
            "ccc_loss": "ours", "expr_loss_classes": 0}
    return argparse.Namespace(**{**base, **over})


def method_loss(method, epoch_progress: float):
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    valid = {"expr": torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool), "au": torch.zeros(6, 12, dtype=torch.bool),
             "va": torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)}
    out = Net22()({"x": x + 0.1})
    return method.extra_loss(out, {}, lambda view: {"x": x}, valid, LAYOUTS["mtmt"], DEFAULT_TASK_WEIGHTS,
                             epoch_progress, contextlib.nullcontext)


def test_ramp_by_whole_epochs_is_constant_within_an_epoch():
    torch.manual_seed(0)
    by_epoch = ssl.build_method("mean_teacher", Net22(), mt_args(rampup_by="epoch"))
    by_step = ssl.build_method("mean_teacher", Net22(), mt_args())
    weights = [method_loss(by_epoch, e)[1]["consistency_weight"] for e in (2.0, 2.25, 2.5, 2.999)]
    assert weights == [pytest.approx(sigmoid_rampup(2.0, 0.4, 4))] * 4
    assert method_loss(by_epoch, 3.0)[1]["consistency_weight"] == pytest.approx(sigmoid_rampup(3.0, 0.4, 4))
    assert method_loss(by_epoch, 0.9)[1]["consistency_weight"] == pytest.approx(0.4 * math.exp(-5))  # w(0)
    assert method_loss(by_step, 2.5)[1]["consistency_weight"] == pytest.approx(sigmoid_rampup(2.5, 0.4, 4))
    assert method_loss(by_step, 2.5)[1]["consistency_weight"] > weights[0]
    assert ssl.ramp_position(7.75, "epoch") == 7.0 and ssl.ramp_position(7.75, "step") == 7.75
    with pytest.raises(ValueError, match="rampup-by"):
        ssl.ramp_position(1.0, "batch")


def test_method_passes_the_mtmt_flags_on():
    torch.manual_seed(0)
    student = Net22()
    args = mt_args(teacher_bn="train", ccc_loss="reference", expr_loss_classes=8)
    method = ssl.build_method("mean_teacher", student, args)
    assert method.teacher.bn == "train"
    term, logs = method_loss(method, 20.0)
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    valid = {"expr": torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool), "au": torch.zeros(6, 12, dtype=torch.bool),
             "va": torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)}
    out = Net22()({"x": x + 0.1})
    expected, _ = consistency_loss(out, method.teacher.teacher({"x": x}), valid, "mtmt", ccc="reference",
                                   expr_classes=8)
    torch.testing.assert_close(logs["consistency"], expected.detach())
    default = ssl.build_method("mean_teacher", student, argparse.Namespace(
        **{k: v for k, v in vars(mt_args()).items() if k not in ("rampup_by", "teacher_bn", "ccc_loss",
                                                                  "expr_loss_classes")}))
    assert default.teacher.bn == "eval"  # a Namespace without the new flags keeps today's behaviour
    with pytest.raises(ValueError, match="consistency-weight > 0"):
        ssl.build_method("mean_teacher", student, mt_args(teacher_bn="train", consistency_weight=0))
