"""utils/optim.py and its use by app.training: parameter groups, the no-decay split, schedule, accumulation, resume."""

import argparse
import csv
import math

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from app import checkpoints, training
from models.ssl import MeanTeacherMethod
from opts import train_parser
from utils.checkpoint import read_checkpoint
from utils.optim import (
    GradientStep,
    Schedule,
    build_optimizer,
    build_scheduler,
    group_lrs,
    optimizer_steps_per_epoch,
    restore_optimizer,
    schedule_from_args,
)


class Net(nn.Module):
    """A trunk (linear + norm) and a head; exempts ``pos`` (2-D) from weight decay, as timm models name theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.ones(2, 3))
        self.trunk = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.trunk(x + self.pos.sum(0))))

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


class GroupedNet(Net):
    """Trunk scheduled at a tenth of the lr; head constant at twice the lr with its own weight decay."""

    def param_groups(self, base_lr: float) -> list[dict]:
        trunk = [self.pos, *self.trunk.parameters(), *self.norm.parameters()]
        return [{"name": "trunk", "params": trunk, "lr_scale": 0.1},
                {"name": "head", "params": list(self.head.parameters()), "lr_scale": 2.0, "weight_decay": 0.5,
                 "schedule": False}]


def walk(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[dict[str, float]]:
    """The group lrs each of ``steps`` optimiser steps uses (zero gradients: only the schedule matters)."""
    seen = []
    for _ in range(steps):
        seen.append(group_lrs(optimizer))
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        scheduler.step()
    return seen


def test_schedule_factor_at_chosen_steps_follows_the_formula():
    s = Schedule(kind="cosine", warmup=4, total=20, floor=0.1)
    assert s.factor(0) == pytest.approx(1 / 4)  # warm-up start: the first step already learns
    assert s.factor(2) == pytest.approx(3 / 4)
    assert s.factor(3) == pytest.approx(1.0)  # end of warm-up
    assert s.factor(4) == pytest.approx(1.0)  # cosine starts at the group's lr
    assert s.factor(12) == pytest.approx(0.1 + 0.9 * 0.5)  # middle of the cosine
    assert s.factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 16)))
    assert s.factor(20) == pytest.approx(0.1) and s.factor(30) == pytest.approx(0.1)  # end: the floor
    assert Schedule(kind="step", gamma=0.5, decay_every=3).factor(7) == pytest.approx(0.25)
    assert Schedule().factor(100) == 1.0
    args = argparse.Namespace(sched="cosine", warmup_epochs=0.5, epochs=3, lr=1e-3, min_lr=1e-5, gamma=0.1,
                              step_epochs=1)
    assert schedule_from_args(args, 10) == Schedule("cosine", warmup=5, total=30, floor=0.01, gamma=0.1,
                                                    decay_every=10)


def test_groups_follow_the_schedule_scaled_and_a_constant_group_stays_constant():
    torch.manual_seed(0)
    opt = build_optimizer(GroupedNet(), "adam", 1e-2, 0.0)
    sched = build_scheduler(opt, Schedule(kind="cosine", warmup=2, total=10, floor=0.01))
    seen = walk(opt, sched, 11)
    assert [s["head"] for s in seen] == [pytest.approx(2e-2)] * 11
    trunk = [s["trunk"] for s in seen]
    assert trunk[0] == pytest.approx(1e-3 / 2) and trunk[1] == pytest.approx(1e-3)
    assert trunk[6] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert trunk[10] == pytest.approx(1e-5)  # the floor, scaled like the group (min_lr × lr_scale)


def test_param_groups_hook_sets_lr_scales_weight_decay_and_names():
    net = GroupedNet()
    opt = build_optimizer(net, "adam", 1e-2, 0.05)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("trunk", pytest.approx(1e-3), 0.05), ("head", pytest.approx(2e-2), 0.5)]
    assert type(opt) is torch.optim.Adam
    w = build_optimizer(net, "adamw", 1e-2, 0.05)  # each group split, its lr scale and schedule kept
    assert [(g["name"], g["lr"], g["schedule"]) for g in w.param_groups] == [
        ("trunk", pytest.approx(1e-3), True), ("trunk_no_decay", pytest.approx(1e-3), True),
        ("head", pytest.approx(2e-2), False), ("head_no_decay", pytest.approx(2e-2), False)]


@pytest.mark.parametrize("hook, message", [
    (lambda m: [{"name": "trunk", "params": list(m.trunk.parameters())}],
     "5 trainable parameter(s) in no group (first: pos)"),
    (lambda m: [{"params": list(m.parameters())}, {"params": [m.pos]}], "parameter pos is in groups"),
    (lambda m: [{"params": list(m.parameters()), "lr": 1.0}], "group 0 needs 'params' and only"),
])
def test_a_bad_param_groups_hook_is_one_line_naming_the_model(hook, message):
    net = Net()
    net.param_groups = lambda base_lr: hook(net)
    with pytest.raises(ValueError, match="^Net.param_groups\\(\\): ") as e:
        build_optimizer(net, "adamw", 1e-3, 0.1)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_adamw_decays_no_1d_or_exempt_parameter_and_adam_stays_one_l2_group():
    torch.manual_seed(0)
    net = Net()
    opt = build_optimizer(net, "adamw", 0.1, 0.5)
    assert type(opt) is torch.optim.AdamW
    decays = {n for n, p in net.named_parameters() if any(p is q for q in opt.param_groups[0]["params"])}
    assert decays == {"trunk.weight", "head.weight"} and opt.param_groups[1]["weight_decay"] == 0
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only the decoupled decay moves a parameter
    for n, p in net.named_parameters():
        factor = 1 - 0.1 * 0.5 if n in decays else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)
    adam = build_optimizer(Net(), "adam", 1e-3, 5e-5)  # today's optimiser: one group, L2 on everything
    assert len(adam.param_groups) == 1 and len(adam.param_groups[0]["params"]) == 7
    assert adam.param_groups[0]["weight_decay"] == 5e-5 and type(adam) is torch.optim.Adam


def test_frozen_parameters_stay_out_of_every_group():
    net = Net()
    net.trunk.requires_grad_(False)
    opt = build_optimizer(net, "adamw", 1e-3, 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def one_step(batches: list[tuple[torch.Tensor, torch.Tensor]], accum: int) -> torch.Tensor:
    """Weights of a fresh linear model after one SGD step over ``batches`` accumulated ``accum`` at a time."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = GradientStep(model, opt, torch.amp.GradScaler("cpu", enabled=False), accum, len(batches))
    for i, (x, y) in enumerate(batches):
        with grads.batch(i):
            grads.backward(nn.functional.mse_loss(model(x), y), i)
        if grads.ends_group(i):
            grads.step()
    return torch.cat([model.weight.detach().flatten(), model.bias.detach()])


def test_accumulating_n_batches_equals_one_batch_n_times_larger():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, generator=g), torch.randn(12, 2, generator=g)
    whole = one_step([(x, y)], 1)
    torch.testing.assert_close(one_step([(x[i:i + 3], y[i:i + 3]) for i in range(0, 12, 3)], 4), whole)
    assert not torch.allclose(one_step([(x[i:i + 3], y[i:i + 3]) for i in range(0, 12, 3)], 1), whole)


def test_the_last_accumulation_group_of_an_epoch_may_be_shorter():
    grads = GradientStep(nn.Linear(1, 1), None, None, accum_steps=2, batches=5)
    assert [grads.ends_group(i) for i in range(5)] == [False, True, False, True, True]
    assert [grads.group_size(i) for i in range(5)] == [2, 2, 2, 2, 1]
    assert optimizer_steps_per_epoch(5, 2) == 3 and optimizer_steps_per_epoch(4, 2) == 2
    assert optimizer_steps_per_epoch(3, 1) == 3


def test_ddp_skips_the_gradient_all_reduce_until_an_accumulation_group_ends(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(nn.Linear(2, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        grads = GradientStep(model, opt, torch.amp.GradScaler("cpu", enabled=False), 2, 3)
        syncs = []
        for i in range(3):
            with grads.batch(i):
                syncs.append(model.require_backward_grad_sync)  # read by DDP's forward and backward
                grads.backward(model(torch.ones(1, 2)).sum(), i)
            if grads.ends_group(i):
                grads.step()
        assert syncs == [False, True, True]
    finally:
        torch.distributed.destroy_process_group()


def test_clipping_happens_after_the_scaler_unscaled_the_gradient():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    grads = GradientStep(model, opt, scaler, 1, 1, clip_grad=1.0)
    x = torch.tensor([[3.0, 4.0]])  # d(output)/d(weight) = x: gradient norm 5
    with grads.batch(0):
        grads.backward(model(x).sum(), 0)
    assert model.weight.grad.norm() == pytest.approx(5 * 2**10)  # scaled until the step
    norm = grads.step()
    assert float(norm) == pytest.approx(5.0)  # the true norm, measured after unscaling
    torch.testing.assert_close(model.weight.detach(), -torch.tensor([[0.6, 0.8]]))  # the unit-norm direction


def test_resume_restores_the_schedule_position_and_refuses_other_groups(tmp_path):
    def fresh(kind: str = "adamw"):
        torch.manual_seed(0)
        opt = build_optimizer(GroupedNet(), kind, 1e-2, 0.1)
        return opt, build_scheduler(opt, Schedule(kind="cosine", warmup=3, total=12, floor=0.0))

    straight = walk(*fresh(), 12)
    opt, sched = fresh()
    walk(opt, sched, 5)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "last.pth")
    saved = read_checkpoint(tmp_path / "last.pth")  # weights_only, as --resume reads it
    opt, sched = fresh()
    restore_optimizer(opt, saved["optimizer"], str(tmp_path / "last.pth"))
    sched.load_state_dict(saved["scheduler"])
    assert walk(opt, sched, 7) == straight[5:]
    other, _ = fresh("adam")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'last.pth'}: the saved optimiser has groups"):
        restore_optimizer(other, saved["optimizer"], str(tmp_path / "last.pth"))


# ---------------------------------------------------------------------------------------------------
# train.py with accumulation, AdamW and clipping

TINY = ["--size", "16", "--clip-len", "2", "--dilation", "2", "--audio-seconds", "0.3", "--batch-size", "2",
        "--val-samples", "8", "--eval-batch-size", "8", "--workers", "0", "--no-tensorboard", "--no-progress",
        "--device", "cpu", "--seed", "1"]
# 3 batches per epoch in groups of 2 and 1: 2 optimiser steps per epoch; the head's weights are 2-D, its bias 1-D.
ACCUM = ["--samples-per-epoch", "6", "--accum-steps", "2", "--optimizer", "adamw", "--weight-decay", "0.05",
         "--clip-grad", "1", "--sched", "cosine", "--warmup-epochs", "0.5", "--ssl", "mean_teacher"]


def train_args(db, out, *extra: str) -> argparse.Namespace:
    return train_parser().parse_args(["--db", str(db), "--output-dir", str(out), *TINY, *ACCUM, *extra])


def test_train_one_epoch_steps_schedule_and_teacher_once_per_accumulation_group(monkeypatch):
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(2, 3, generator=g), torch.randn(2, 1, generator=g)) for _ in range(5)]
    monkeypatch.setattr(training, "batch_loss", lambda model, method, criterion, batch, *rest:
                        (nn.functional.mse_loss(model(batch[0]), batch[1]), {}))

    def fresh():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = build_optimizer(model, "adam", 0.1, 0.0)
        return model, opt, build_scheduler(opt, Schedule("cosine", warmup=1, total=3))

    model, opt, sched = fresh()
    args = argparse.Namespace(accum_steps=2, clip_grad=0.0, amp="none", log_every=1, ema_decay=0.9)
    method, state = MeanTeacherMethod(model, args), checkpoints.TrainState()
    logs = training.train_one_epoch(model, method, None, data, opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                                    state, args, torch.device("cpu"), None, None, False)
    assert state.step == method.teacher.step == sched.last_epoch == 3 and set(logs) == {"loss"}
    ref, ref_opt, ref_sched = fresh()  # by hand: groups of batches (0, 1), (2, 3), (4)
    for group in ((0, 1), (2, 3), (4,)):
        ref_opt.zero_grad()
        for i in group:
            (nn.functional.mse_loss(ref(data[i][0]), data[i][1]) / len(group)).backward()
        ref_opt.step()
        ref_sched.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.slow  # five epochs of the full-width model: 80-140 s on 2 busy cores
def test_accumulated_adamw_run_resumes_bit_identical_and_logs_each_group_lr(toy, tmp_path):
    training.run(train_args(toy, tmp_path / "straight", "--epochs", "2"))
    training.run(train_args(toy, tmp_path / "split", "--epochs", "2", "--stop-after", "1"))
    training.run(train_args(toy, tmp_path / "split", "--epochs", "2", "--resume", str(tmp_path / "split" / "last.pth")))
    a = read_checkpoint(tmp_path / "straight" / "last.pth")
    b = read_checkpoint(tmp_path / "split" / "last.pth")
    assert a["step"] == b["step"] == 4 and a["teacher"]["step"] == 4  # the EMA counts optimiser steps
    for name, tensor in a["student"].items():
        assert torch.equal(tensor, b["student"][name]), name
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == 4
    assert [g["name"] for g in a["optimizer"]["param_groups"]] == ["all", "all_no_decay"]
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    with open(tmp_path / "split" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["lr_all"] == rows[0]["lr_all_no_decay"] == rows[0]["lr"]
    assert float(rows[1]["lr_all"]) == pytest.approx(0.0, abs=1e-12)  # cosine to --min-lr 0 at the last step


@pytest.mark.parametrize("flag, saved, now", [("--accum-steps", 2, "3"), ("--optimizer", "adamw", "adam")])
def test_resume_with_another_optimiser_or_accumulation_is_refused_before_training(toy, tmp_path, flag, saved, now):
    last = tmp_path / "run" / "last.pth"
    last.parent.mkdir()
    key = flag.removeprefix("--").replace("-", "_")
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "student": {}, "teacher": {}, "arch": "tsav",
                "layout": "abaw2021", "args": {"optimizer": "adamw", "accum_steps": 2, key: saved}}, last)
    with pytest.raises(training.SetupError, match=f"^{last}: saved with {flag} {saved}; this run has {flag} {now} "):
        training.run(train_args(toy, tmp_path / "run", "--resume", str(last), flag, now))
