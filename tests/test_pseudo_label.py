"""models/pseudo_label.py: each threshold policy on hand-made confidence streams against its formula computed
by hand, the update order (FlexMatch masks before its update, FreeMatch after), the state round trip of a
resume, the masked cross-entropy (zero and gradient-free where rejected) and the per-class counts."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from models.pseudo_label import (
    POLICIES,
    AdaCM,
    Fixed,
    FlexMatch,
    FreeMatch,
    acceptance,
    build_policy,
    masked_ce,
    precision,
    pseudo_label_loss,
    rate,
)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def probs(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, t64(expected), rtol=0, atol=1e-12)


def flex_t(b: float, tau: float = 0.9) -> float:
    return tau * b / (2 - b)


def test_fixed_threshold_and_mask():
    p = Fixed(3, tau=0.7)
    close(p.thresholds(), [0.7, 0.7, 0.7])
    mask, pseudo = p.mask(probs([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.05, 0.9, 0.05]]))
    assert mask.tolist() == [True, False, True]  # 0.7 ≥ 0.7: the boundary passes
    assert pseudo.tolist() == [0, 2, 1]
    close(p.thresholds(), [0.7, 0.7, 0.7])


# One stream, C = 3, a pool of 5, τ = 0.9; comments give the state after each batch.
B1 = (torch.tensor([0, 1, 2]), probs([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.92, 0.03]]))
B2 = (torch.tensor([3, 4, 0]), probs([[0.85, 0.1, 0.05], [0.1, 0.3, 0.6], [0.02, 0.02, 0.96]]))
B3 = (torch.tensor([1, 1]), probs([[0.91, 0.05, 0.04], [0.03, 0.04, 0.93]]))


def test_flexmatch_warmup_stream():
    p = FlexMatch(3, 5, tau=0.9, warmup=True)
    # All "none": σ = 0, β = 0 / max(0, 5) = 0, so T = 0 and every row passes.
    close(p.thresholds(), [0, 0, 0])
    mask, pseudo = p.mask(B1[1], B1[0])
    assert mask.tolist() == [True, True, True] and pseudo.tolist() == [0, 0, 1]
    # uid 0 → 0, uid 2 → 1 (0.5 < τ leaves uid 1 "none"): σ = [1, 1, 0], none = 3, β = σ / 3.
    assert p.selected.tolist() == [0, -1, 1, -1, -1]
    close(p.thresholds(), [flex_t(1 / 3), flex_t(1 / 3), 0])
    assert flex_t(1 / 3) == pytest.approx(0.18)
    mask, _ = p.mask(B2[1], B2[0])
    assert mask.tolist() == [True, True, True]  # 0.85 ≥ 0.18; class 2 still at 0
    # uid 0 becomes 2 (0.96 ≥ τ); 0.85 and 0.6 do not store: σ = [0, 1, 1], none = 3.
    assert p.selected.tolist() == [2, -1, 1, -1, -1]
    close(p.thresholds(), [0, flex_t(1 / 3), flex_t(1 / 3)])
    mask, _ = p.mask(B3[1], B3[0])  # masked with [0, .18, .18]
    assert mask.tolist() == [True, True]
    # uid 1 twice: the later row (class 2) wins. σ = [0, 1, 2], none = 2: β = [0, 1/2, 1].
    assert p.selected.tolist() == [2, 2, 1, -1, -1]
    close(p.thresholds(), [0, flex_t(0.5), 0.9])
    assert p.counts()[0].tolist() == [0, 1, 2] and p.counts()[1] == 2


def test_flexmatch_without_warmup_masks_before_update():
    p = FlexMatch(3, 5, tau=0.9, warmup=False)
    close(p.thresholds(), [0, 0, 0])  # 0/0 := 0
    p.mask(B1[1], B1[0])
    close(p.thresholds(), [flex_t(1.0), flex_t(1.0), 0])  # β = σ / max σ = [1, 1, 0] → [.9, .9, 0]
    mask, _ = p.mask(B2[1], B2[0])
    # Thresholds before the batch: 0.85 < 0.9 rejected; class 2 at 0 passes, including the 0.96 row whose own
    # update (uid 0: 0 → 2) only counts for the next batch.
    assert mask.tolist() == [False, True, True]
    close(p.thresholds(), [0, 0.9, 0.9])


def test_flexmatch_nothing_sure_keeps_zero_and_checks_uids():
    for warmup in (True, False):
        p = FlexMatch(2, 4, tau=0.95, warmup=warmup)
        mask, _ = p.mask(probs([[0.6, 0.4], [0.3, 0.7]]), torch.tensor([0, 3]))
        assert mask.all()
        close(p.thresholds(), [0, 0])
    p = FlexMatch(2, 4, tau=0.7)
    p.mask(probs([[0.7, 0.3]]), torch.tensor([2]))  # float32 0.7 reaches τ = 0.7: stored
    assert p.selected.tolist() == [-1, -1, 0, -1]
    with pytest.raises(ValueError, match="uids"):
        p.mask(probs([[0.6, 0.4]]), None)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        p.mask(probs([[0.6, 0.4]]), torch.tensor([4]))


def freematch_by_hand(stream, m, start):
    tau, pm = start, [start, start]
    out = []
    for rows in stream:
        conf = [max(r) for r in rows]
        tau = m * tau + (1 - m) * sum(conf) / len(rows)
        pm = [m * pm[c] + (1 - m) * sum(r[c] for r in rows) / len(rows) for c in range(2)]
        out.append([tau * pm[c] / max(pm) for c in range(2)])
    return out


def test_freematch_ema_after_two_steps_updates_before_masking():
    s1 = [[0.8, 0.2], [0.4, 0.6], [0.51, 0.49]]
    s2 = [[0.55, 0.45], [0.3, 0.7]]
    p = FreeMatch(2, m=0.9)
    close(p.thresholds(), [0.5, 0.5])  # τ_0 = p̃_0 = 1/C
    mask, pseudo = p.mask(probs(s1))
    # τ_1 = .9·.5 + .1·(.8+.6+.51)/3; p̃_1 = .9·.5 + .1·[.57, .43] = [.507, .493]
    tau1 = 0.45 + 0.1 * 1.91 / 3
    assert p.time_p == pytest.approx(tau1, abs=1e-7)
    torch.testing.assert_close(p.p_model, t64([0.507, 0.493]), rtol=0, atol=1e-7)
    # The 0.51 row passes the start threshold 0.5 but not T_1(0) = τ_1 ≈ 0.5137: masked after the update.
    assert mask.tolist() == [True, True, False] and pseudo.tolist() == [0, 1, 0]
    mask, _ = p.mask(probs(s2))
    assert mask.tolist() == [True, True]
    tau2 = 0.9 * tau1 + 0.1 * 0.625
    pm2 = [0.9 * 0.507 + 0.1 * 0.425, 0.9 * 0.493 + 0.1 * 0.575]
    assert pm2 == pytest.approx([0.4988, 0.5012])  # class 1 now leads: its threshold is τ_2
    torch.testing.assert_close(p.thresholds(), t64([tau2 * pm2[0] / pm2[1], tau2]), rtol=0, atol=1e-7)
    hand = freematch_by_hand([s1, s2], 0.9, 0.5)
    torch.testing.assert_close(p.thresholds(), t64(hand[-1]), rtol=0, atol=1e-7)
    assert p.steps == 2
    assert p.mask(torch.zeros(0, 2))[0].numel() == 0 and p.steps == 2  # an empty batch changes nothing


def test_freematch_init_one():
    s1 = [[0.8, 0.2], [0.4, 0.6], [0.51, 0.49]]
    p = FreeMatch(2, m=0.9, init="one")
    close(p.thresholds(), [1, 1])
    mask, _ = p.mask(probs(s1))
    assert not mask.any()  # T ≈ 0.96 for class 0, 0.95 for class 1
    torch.testing.assert_close(p.thresholds(), t64(freematch_by_hand([s1], 0.9, 1.0)[0]), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="init"):
        FreeMatch(2, init="zero")


ADACM_PROBS = probs([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.5, 0.4, 0.1],
                     [0.99, 0.0, 0.01]])
ADACM_LABELS = torch.tensor([0, 0, 1, 1, 2, -1])  # rows 0, 1, 3 right; row 5 unknown, ignored


@pytest.mark.parametrize("empty", ["floor", "keep"])
def test_adacm_epoch_update_floor_and_empty_class(empty):
    p = AdaCM(3, empty=empty)
    close(p.thresholds(), [0.8, 0.8, 0.8])
    p.end_epoch(1, ADACM_PROBS, ADACM_LABELS)
    # Epoch 1: 0.97 · 0.85 / (1 + e^−1) ≈ 0.60 < 0.8 → every class at the floor.
    close(p.thresholds(), [0.8, 0.8, 0.8])
    p.end_epoch(5, ADACM_PROBS, ADACM_LABELS)
    c1 = 0.97 * 0.85 / (1 + math.exp(-5))  # ≈ 0.819; class 0: 0.97 · 0.75 / 1.0067 ≈ 0.72 → floor
    torch.testing.assert_close(p.thresholds(), t64([0.8, c1, 0.8]), rtol=0, atol=1e-7)
    mask, _ = p.mask(probs([[0.05, 0.81, 0.14], [0.05, 0.83, 0.12], [0.8, 0.1, 0.1]]))
    assert mask.tolist() == [False, True, True]
    assert mask.tolist() == p.mask(probs([[0.05, 0.81, 0.14], [0.05, 0.83, 0.12], [0.8, 0.1, 0.1]]))[0].tolist()
    # Epoch 6 with no correct class-1 sample: the reference falls back to the floor; "keep" keeps 0.819.
    p.end_epoch(6, ADACM_PROBS[:2], ADACM_LABELS[:2])
    torch.testing.assert_close(p.thresholds(), t64([0.8, 0.8 if empty == "floor" else c1, 0.8]), rtol=0, atol=1e-7)
    assert p.epoch == 6


def test_end_epoch_is_a_no_op_for_per_batch_policies():
    for p in (Fixed(3), FlexMatch(3, 4), FreeMatch(3)):
        before = p.thresholds()
        p.end_epoch(9, ADACM_PROBS, ADACM_LABELS)
        close(p.thresholds(), before.tolist())


def stream(seed: int, batches: int, c: int = 4, b: int = 6, pool: int = 10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, pool, (b,), generator=g), torch.softmax(4 * torch.randn(b, c, generator=g), 1))
            for _ in range(batches)]


def run(p, batches, epoch0: int = 0):
    out = []
    for k, (uids, pr) in enumerate(batches):
        mask, pseudo = p.mask(pr, uids)
        if k % 2 == 1:  # an "epoch end" every two batches (only adacm reacts)
            p.end_epoch(epoch0 + k, pr, pseudo.roll(1))
        out.append((mask.tolist(), pseudo.tolist(), p.thresholds().tolist()))
    return out


@pytest.mark.parametrize("name", POLICIES)
def test_state_round_trip_continues_exactly(name):
    batches = stream(7, 8)
    make = lambda: build_policy(name, 4, 10, tau=0.6, momentum=0.7, scale=3.0)  # noqa: E731 (scale: leave floor)
    whole = run(make(), batches)
    first = make()
    head = run(first, batches[:4])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    run(first, batches[4:])  # the saved state must not follow later changes
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert head + run(resumed, batches[4:], epoch0=4) == whole
    assert len({tuple(t) for _, _, t in whole}) > 1 or name == "fixed"  # the stream did move the thresholds


def test_state_restores_hyper_parameters_and_refuses_other_policies():
    saved = FlexMatch(3, 5, tau=0.8, warmup=False)
    saved.mask(B1[1], B1[0])
    fresh = FlexMatch(3, 5)
    fresh.load_state_dict(saved.state_dict())
    assert (fresh.tau, fresh.warmup) == (0.8, False)
    close(fresh.thresholds(), saved.thresholds().tolist())
    with pytest.raises(ValueError, match="pool of 5"):
        FlexMatch(3, 6).load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="'flexmatch'"):
        FreeMatch(3).load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="4 classes"):
        Fixed(3).load_state_dict(Fixed(4).state_dict())


def test_build_policy():
    assert POLICIES == ("fixed", "flexmatch", "freematch", "adacm")
    kinds = [type(build_policy(n, 8, 100)) for n in POLICIES]
    assert kinds == [Fixed, FlexMatch, FreeMatch, AdaCM]
    assert build_policy("fixed", 8, tau=0.7).tau == 0.7
    assert build_policy("flexmatch", 8, 100, warmup=False).describe().startswith("flexmatch(τ=0.95, no warm-up")
    with pytest.raises(ValueError, match="one of"):
        build_policy("softmatch", 8, 100)


def test_masked_ce_divides_by_batch_and_rejected_rows_have_no_gradient():
    logits = torch.tensor([[2.0, 0.0, 1.0], [math.inf, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]],
                          requires_grad=True)
    pseudo = torch.tensor([0, 1, 1, 2])
    mask = torch.tensor([True, False, True, False])  # row 1 would be inf/NaN if it counted
    loss = masked_ce(logits, pseudo, mask)
    ce = F.cross_entropy(logits.detach()[[0, 2]], pseudo[[0, 2]], reduction="sum")
    assert loss.item() == pytest.approx(ce.item() / 4)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[[1, 3]].eq(0).all() and logits.grad[[0, 2]].abs().sum() > 0


def test_masked_ce_nothing_accepted_is_zero_with_a_graph():
    logits = torch.randn(5, 3, requires_grad=True)
    loss = masked_ce(logits, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.eq(0).all()
    empty = torch.zeros(0, 3, requires_grad=True)
    assert masked_ce(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)).item() == 0.0


def test_pseudo_label_loss_uses_the_policy_and_no_teacher_gradient():
    teacher_logits = torch.tensor([[3.0, 0.0], [0.2, 0.0], [0.0, 4.0]], requires_grad=True)
    student = torch.randn(3, 2, requires_grad=True)
    loss, mask, pseudo = pseudo_label_loss(student, torch.softmax(teacher_logits, 1), None, Fixed(2, 0.9), 2.0)
    assert mask.tolist() == [True, False, True] and pseudo.tolist() == [0, 0, 1]
    assert loss.item() == pytest.approx(2.0 * masked_ce(student, pseudo, mask).item())
    loss.backward()
    assert teacher_logits.grad is None and student.grad is not None


def test_acceptance_and_precision_counts():
    pseudo = torch.tensor([0, 0, 1, 2, 2, 2])
    mask = torch.tensor([True, False, True, True, True, False])
    truth = torch.tensor([0, 1, 2, 2, -1, 2])
    acc, pred = acceptance(mask, pseudo, 4)
    assert acc.tolist() == [1, 1, 2, 0] and pred.tolist() == [2, 1, 3, 0]
    right, known = precision(mask, pseudo, truth, 4)
    # Accepted with a known truth: row 0 (0 → right), row 2 (1 vs 2 → wrong), row 3 (2 → right); row 4 unknown.
    assert right.tolist() == [1, 0, 1, 0] and known.tolist() == [1, 1, 1, 0]
    r = rate(acc, pred)
    assert r[:3].tolist() == pytest.approx([0.5, 1.0, 2 / 3]) and math.isnan(r[3])
