"""models/losses.py: masking (invalid labels change neither loss nor gradients), CCC, weights, filters."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.losses import (
    MultiTaskLoss,
    ccc_loss,
    concordance_cc,
    masked_au_bce,
    masked_cross_entropy,
    rank_regularization,
    reference_ccc_loss,
    tsav_expr_keep_mask,
    va_ccc_loss,
)
from tasks import EXPR_NAMES_7, OutputLayout


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (x.var() + y.var() + (mx - my) ** 2)


def loss_and_grad(fn, x: torch.Tensor, *args):
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


def test_cross_entropy_ignores_every_kind_of_invalid_label():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g)
    target = torch.tensor([0, -1, 3, 7, 6, 100])  # -1, 7 (unused slot) and 100 are invalid
    valid = torch.tensor([True, False, True, False, True, False])
    loss, grad = loss_and_grad(masked_cross_entropy, logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits[valid], target[valid]))

    perturbed_logits = logits.clone()
    perturbed_logits[~valid] = torch.randn(3, 7, generator=g) * 50
    loss2, grad2 = loss_and_grad(masked_cross_entropy, perturbed_logits, torch.tensor([0, -7, 3, 9, 6, -1]))
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    assert (grad[~valid] == 0).all()


def test_au_bce_per_au_mean_over_valid_entries():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g)
    target = torch.tensor([[1, 0, -1], [0, -1, -1], [-1, 1, -1], [1, 1, -1], [0, 0, -1]], dtype=torch.float32)
    valid = target >= 0
    expected = []
    for j in range(2):  # AU 2 has no valid entry: left out
        rows = valid[:, j]
        expected.append(F.binary_cross_entropy_with_logits(logits[rows, j], target[rows, j]))
    torch.testing.assert_close(masked_au_bce(logits, target), sum(expected))
    torch.testing.assert_close(masked_au_bce(logits, target, reduction="mean"), sum(expected) / 2)

    loss, grad = loss_and_grad(masked_au_bce, logits, target)
    perturbed = logits.clone()
    perturbed[~valid] = torch.tensor(float("inf"))
    odd_target = target.clone()
    odd_target[~valid] = torch.tensor(float("nan"))
    loss2, grad2 = loss_and_grad(masked_au_bce, perturbed, odd_target)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    assert (grad[~valid] == 0).all()


def test_ccc_matches_numpy():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50) * 0.5 + 0.1
    got = concordance_cc(torch.tensor(x), torch.tensor(y))
    assert float(got) == pytest.approx(numpy_ccc(x, y), abs=1e-6)


def test_va_loss_is_one_minus_numpy_ccc_per_dimension_on_tanh_outputs():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(40, 2)).astype(np.float32)
    target = rng.uniform(-1, 1, size=(40, 2)).astype(np.float32)
    target[::7] = -5.0  # invalid frames
    target[3, 1] = -5.0  # arousal-only invalid
    expected = 0.0
    for d in range(2):
        keep = target[:, d] != -5.0
        expected += 1 - numpy_ccc(np.tanh(raw[keep, d]).astype(np.float64), target[keep, d].astype(np.float64))
    got = va_ccc_loss(torch.tensor(raw), torch.tensor(target))
    assert float(got) == pytest.approx(expected, abs=1e-5)

    valid = torch.tensor(target) != -5.0
    loss, grad = loss_and_grad(va_ccc_loss, torch.tensor(raw), torch.tensor(target))
    perturbed = torch.tensor(raw)
    perturbed[~valid] = 1e6
    loss2, grad2 = loss_and_grad(va_ccc_loss, perturbed, torch.tensor(np.where(target == -5.0, 3.0, target)))
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)


def test_ccc_loss_with_fewer_than_two_valid_is_zero_and_backward_works():
    raw = torch.randn(4, 2, requires_grad=True)
    target = torch.full((4, 2), -5.0)
    target[0] = torch.tensor([0.3, -0.2])  # a single valid frame
    loss = va_ccc_loss(raw, target)
    loss.backward()
    assert loss.item() == 0.0 and (raw.grad == 0).all()
    assert float(ccc_loss(torch.zeros(0, 2), torch.zeros(0, 2))) == 0.0


def make_targets():
    expr = torch.tensor([0, 4, -1, 5, 7, 2])  # 7 is the unused slot for a 7-class edition: invalid
    au = torch.randint(0, 2, (6, 12)).float()
    au[1] = -1
    au[4, 3:] = -1
    va = torch.rand(6, 2) * 2 - 1
    va[2] = -5
    return {"expr": expr, "au": au, "va": va}


def test_multitask_loss_weights_and_invalid_labels_contribute_nothing():
    torch.manual_seed(4)
    crit = MultiTaskLoss("abaw2021")
    targets = make_targets()
    out = torch.randn(6, 22)
    total, parts = crit(out, targets)
    torch.testing.assert_close(total, 3 * parts["expr"] + parts["au"] + parts["va"])
    total1, _ = MultiTaskLoss("abaw2021", {"expr": 1.0, "va": 2.0})(out, targets)
    torch.testing.assert_close(total1, parts["expr"] + parts["au"] + 2 * parts["va"])

    def full(x, t):
        return crit(x, t)[0]

    loss, grad = loss_and_grad(full, out, targets)
    perturbed, odd = out.clone(), {k: v.clone() for k, v in targets.items()}
    rows_expr_invalid = torch.tensor([2, 4])
    perturbed[rows_expr_invalid, 12:20] = 30.0  # EXPR logits of rows without an EXPR label (+ slot 7)
    perturbed[:, 19] = -30.0  # the unused 8th EXPR slot never counts
    perturbed[1, 0:12] = 9.0
    perturbed[4, 3:12] = -9.0
    perturbed[2, 20:22] = 4.0
    odd["expr"][rows_expr_invalid] = torch.tensor([-3, 12])
    odd["au"][odd["au"] < 0] = 5.0
    odd["va"][2] = torch.tensor([-7.0, 9.0])
    loss2, grad2 = loss_and_grad(full, perturbed, odd)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad2, grad, rtol=0, atol=1e-7)
    assert (grad[:, 19] == 0).all() and (grad[2, 20:] == 0).all() and (grad[1, :12] == 0).all()


def test_multitask_loss_accepts_masks_tuples_and_subsets():
    crit = MultiTaskLoss("mtmt")
    targets = make_targets()
    out = torch.randn(6, 22, requires_grad=True)
    total, parts = crit((out, torch.rand(6, 1)), {"au": targets["au"]})
    assert set(parts) == {"au"}
    no_expr = torch.zeros(6, dtype=torch.bool)
    _, parts = crit(out, targets, valid={"expr": no_expr})
    assert parts["expr"].item() == 0.0
    with pytest.raises(ValueError, match="unknown task weights"):
        MultiTaskLoss("mtmt", {"exp": 1.0})
    with pytest.raises(ValueError, match="no targets"):
        crit(out, {})


def test_all_invalid_batch_gives_zero_loss_and_zero_gradients():
    crit = MultiTaskLoss("abaw2020")
    out = torch.randn(3, 17, requires_grad=True)
    targets = {"expr": torch.full((3,), -1), "au": torch.full((3, 8), -1.0), "va": torch.full((3, 2), -5.0)}
    total, _ = crit(out, targets)
    total.backward()
    assert total.item() == 0.0 and (out.grad == 0).all()


def test_tsav_filter_drops_contradicting_expression_labels():
    expr = torch.tensor([4, 4, 5, 5, 0, 0, 4, 1])
    va = torch.tensor([[-0.2, 0.1], [0.3, 0.0], [0.4, 0.0], [-0.4, 0.0], [0.4, 0.4], [0.1, 0.1],
                       [-5.0, -5.0], [-0.9, 0.9]])
    keep = tsav_expr_keep_mask(expr, va)
    assert keep.tolist() == [False, True, False, True, False, True, True, True]

    out = torch.randn(8, 17)
    plain = MultiTaskLoss("abaw2020")(out, {"expr": expr, "va": va})[1]["expr"]
    filtered = MultiTaskLoss("abaw2020", tsav_filter=True)(out, {"expr": expr, "va": va})[1]["expr"]
    logits = out[:, :7]
    torch.testing.assert_close(plain, F.cross_entropy(logits, expr))
    torch.testing.assert_close(filtered, F.cross_entropy(logits[keep], expr[keep]))


def test_rank_regularization():
    alpha = torch.tensor([0.6, 0.58, 0.49, 0.57, 0.56, 0.55, 0.48, 0.54, 0.53, 0.5])  # top 7 vs bottom 3
    ranked = alpha.sort(descending=True).values
    expected = max(0.0, 0.15 - (ranked[:7].mean() - ranked[7:].mean()).item())
    assert float(rank_regularization(alpha)) == pytest.approx(expected)
    assert expected > 0
    assert float(rank_regularization(torch.tensor([0.9] * 7 + [0.1] * 3))) == 0.0
    assert float(rank_regularization(torch.tensor([[0.4]]))) == 0.0


def test_multitask_loss_of_an_expr_va_layout_trains_identity_va_unclipped():
    layout = OutputLayout("ev", ("expr", "va"), 7, EXPR_NAMES_7, va_activation="identity")
    out = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0, 1.5, -0.5], [0, 2.0, 0, 0, 0, 0, 0, 0.2, 0.4],
                        [0, 0, 2.0, 0, 0, 0, 0, -0.3, 0.1]], requires_grad=True)
    target = {"expr": torch.tensor([0, 1, 2]), "va": torch.tensor([[0.9, -0.4], [0.1, 0.3], [-0.2, 0.2]])}
    total, parts = MultiTaskLoss(layout)(out, target)
    assert set(parts) == {"expr", "va"}
    assert parts["va"].item() == pytest.approx(ccc_loss(out[:, 7:].detach(), target["va"]).item())
    total.backward()
    assert out.grad[0, 7] != 0  # 1.5 lies outside [-1, 1]: a clip there would give no gradient


# ---------------------------------------------------------------------------------------------------
# MTMT's published variants (--ccc-loss reference, --expr-loss-classes 8)


def test_reference_ccc_loss_by_hand_with_invalid_rows():
    # 3 of 6 rows valid (−5 = no label). Valid x = (1, 2, 3)/4, y = (1, 3, 2)/4: deviations (−1, 0, 1)/4 and
    # (−1, 1, 0)/4, Σ(x − x̄)(y − ȳ) = 1/16, unbiased variances (2/16)/2 = 1/16 each, equal means.
    # MTMT: CCC = 2·(1/16) / (6·(1/16 + 1/16)) = 1/6 → loss 5/6 (it divides by the 6 rows of the batch).
    # Ours: population cov 1/48, variances 2/48: CCC = (2/48) / (4/48) = 1/2 → loss 1/2.
    pred = torch.tensor([0.25, 0.9, 0.5, -0.7, 0.75, 0.1])
    target = torch.tensor([0.25, -5.0, 0.75, -5.0, 0.5, -5.0])
    assert float(reference_ccc_loss(pred, target)) == pytest.approx(5 / 6, abs=1e-6)
    assert float(ccc_loss(pred, target)) == pytest.approx(1 / 2, abs=1e-6)
    # As a consistency term the batch is the rows it selects: N = 3, CCC = 2·(1/16) / (3·(2/16)) = 1/3.
    rows = target != -5.0
    assert float(reference_ccc_loss(pred, target, rows, batch_rows=rows)) == pytest.approx(2 / 3, abs=1e-6)
    # One valid row (or none) adds 0, as in both codes.
    assert float(reference_ccc_loss(pred, torch.tensor([0.1, -5.0, -5.0, -5.0, -5.0, -5.0]))) == 0.0


def test_reference_ccc_loss_matches_numpy_on_two_dimensions_and_masks_gradients():
    rng = np.random.default_rng(3)
    pred = rng.uniform(-1, 1, (10, 2))
    target = np.clip(pred + rng.normal(0, 0.3, (10, 2)), -1, 1)
    target[[1, 4, 5, 8], 0] = -5.0  # valence: 6 of 10 valid; arousal: all valid
    expected = 0.0
    for d in range(2):
        ok = target[:, d] != -5.0
        x, y = pred[ok, d], target[ok, d]
        cov_sum = ((x - x.mean()) * (y - y.mean())).sum()
        expected += 1 - 2 * cov_sum / ((x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2 + 1e-8) * 10)
    loss, grad = loss_and_grad(reference_ccc_loss, torch.tensor(pred, dtype=torch.float32),
                               torch.tensor(target, dtype=torch.float32))
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(loss) > float(ccc_loss(torch.tensor(pred), torch.tensor(target))) + 0.2  # far from ours
    assert torch.all(grad[[1, 4, 5, 8], 0] == 0) and torch.all(grad[:, 1] != 0)


def test_multitask_loss_reference_ccc_and_eight_logit_expr():
    g = torch.Generator().manual_seed(5)
    out = torch.randn(5, 22, generator=g)  # mtmt: AU [0:12], EXPR [12:20] (slot 19 unused), VA [20:22]
    targets = {"expr": torch.tensor([0, -1, 6, 3, -1]),
               "va": torch.tensor([[0.2, 0.1], [-5.0, -5.0], [0.5, -0.3], [-0.4, 0.6], [-5.0, -5.0]])}
    ours = MultiTaskLoss("mtmt")(out, targets)[1]
    mtmt = MultiTaskLoss("mtmt", ccc="reference", expr_classes=8)(out, targets)[1]
    # EXPR: −log softmax over all 8 logits at the label, mean over the 3 labelled rows (MTMT's ignore index 7).
    logits = out[:, 12:20].double().numpy()
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    rows, labels = [0, 2, 3], [0, 6, 3]
    assert float(mtmt["expr"]) == pytest.approx(-log_p[rows, labels].mean(), abs=1e-5)
    assert float(ours["expr"]) == pytest.approx(float(F.cross_entropy(out[rows, 12:19], torch.tensor(labels))))
    assert abs(float(mtmt["expr"]) - float(ours["expr"])) > 0.05
    # With the unused slot at −∞ the softmax over 8 equals the one over 7: the only difference is that slot.
    silent = out.clone()
    silent[:, 19] = -torch.inf
    torch.testing.assert_close(MultiTaskLoss("mtmt", expr_classes=8)(silent, targets)[1]["expr"], ours["expr"])
    torch.testing.assert_close(mtmt["va"], reference_ccc_loss(torch.tanh(out[:, 20:]), targets["va"]))
    assert abs(float(mtmt["va"]) - float(ours["va"])) > 0.5  # 3 of 5 rows valid: the CCCs shrink towards 0
    # Defaults are today's loss; 8 logits need an 8-slot EXPR block.
    for k, v in MultiTaskLoss("mtmt", ccc="ours", expr_classes=0)(out, targets)[1].items():
        assert torch.equal(v, ours[k])
    with pytest.raises(ValueError, match="8 EXPR logits"):
        MultiTaskLoss("abaw2020", expr_classes=8)
    with pytest.raises(ValueError, match="unknown CCC loss"):
        MultiTaskLoss("mtmt", ccc="mtmt")
