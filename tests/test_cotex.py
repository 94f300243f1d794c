"""Masked CoTEX (models/cotex.py): the agreement term and loss against direct formulas, timm's token dropping as
the peers' masks, the prediction rule, and strict loading of the published checkpoint format."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from helpers import REFERENCE, describe, read_key_list

import models
from models import cotex
from models.cotex import CoTEX, PeerSize, cotex_loss, detect_cotex, js_agreement, load_cotex
from utils.checkpoint import CheckpointError
from utils.inputs import InputSpec


def direct_js(logits: np.ndarray, kind: str) -> float:
    """Σ_i (1/N) KL(p_i ‖ M) written out with loops (probabilities clamped at 1e-4)."""
    n, b, c = logits.shape
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = np.maximum(p / p.sum(-1, keepdims=True), 1e-4)
    m = p.mean(0)
    total = 0.0
    for i in range(n):
        kl = 0.0
        for r in range(b):
            for k in range(c):
                kl += p[i, r, k] * (math.log(p[i, r, k]) - math.log(m[r, k]))
        total += kl / (b * c if kind == "published" else b) / n
    return total


@pytest.mark.parametrize("kind", cotex.JS_KINDS)
def test_agreement_term_is_the_formula_and_zero_for_identical_peers(kind):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 6, generator=g) * 3
    torch.testing.assert_close(js_agreement(logits, kind), torch.tensor(direct_js(logits.numpy(), kind)),
                               rtol=1e-5, atol=1e-7)
    same = torch.randn(1, 5, 6, generator=g).expand(2, 5, 6)
    assert js_agreement(same, kind).abs().item() < 1e-7
    # the published term is the per-sample divergence divided by the number of classes
    if kind == "published":
        torch.testing.assert_close(js_agreement(logits, "published") * 6, js_agreement(logits, "per_sample"))


def test_loss_is_mean_peer_cross_entropy_over_labelled_rows_plus_weighted_agreement():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, generator=g, requires_grad=True)
    target = torch.tensor([2, -1, 0, 5])  # one row without a label: agreement only
    total, parts = cotex_loss(logits, target, lambda_js=100.0)
    ce = sum(torch.nn.functional.cross_entropy(logits[i, [0, 2, 3]], target[[0, 2, 3]]) for i in range(2)) / 2
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(total, ce + 100.0 * js_agreement(logits))
    none, parts = cotex_loss(logits, torch.full((4,), -1), lambda_js=0.0)
    none.backward()  # no label at all: CE 0 and still a graph, no NaN
    assert parts["ce"].item() == 0.0 and torch.isfinite(logits.grad).all()


def tokens_after_dropping(model: CoTEX, x: torch.Tensor) -> list[torch.Tensor]:
    """What each peer's blocks receive (CLS + kept patch tokens), captured at timm's patch dropout."""
    seen = []
    hooks = [p.vit.patch_drop.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
             for p in model.peers]
    with torch.no_grad():
        model.peer_logits(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_each_peer_keeps_int_l_times_1_minus_r_tokens_drawn_independently(ratio):
    torch.manual_seed(2)
    model = CoTEX(peers=2, variant="tiny", input_spec=InputSpec.frame(size=64), mask_ratio=ratio, drop_path=0.0)
    model.peers[1].load_state_dict(model.peers[0].state_dict())  # same weights: only the masks can differ
    x = torch.randn(3, 3, 64, 64)
    length = (64 // 16) ** 2
    a, b = tokens_after_dropping(model.train(), x)
    assert a.shape == b.shape == (3, 1 + int(length * (1 - ratio)), 64)
    assert torch.equal(a[:, 0], b[:, 0])  # the CLS token is always kept, in front
    assert not torch.equal(a, b)  # each peer its own draw
    a, b = tokens_after_dropping(model.eval(), x)
    assert a.shape[1] == 1 + length and torch.equal(a, b)  # evaluation: every token, r = 0


def test_prediction_is_the_argmax_of_the_summed_peer_logits():
    torch.manual_seed(3)
    model = CoTEX(peers=3, variant="tiny", input_spec=InputSpec.frame(size=32)).eval()
    for peer in model.peers:  # heads away from their near-zero init, so the peers disagree
        torch.nn.init.normal_(peer.vit.head.weight, std=1.0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        each = model.peer_logits(x)
        torch.testing.assert_close(model({"image": x}), each.sum(0))
        assert torch.equal(model.predict({"image": x}), each.sum(0).argmax(1))
    head = CoTEX(peers=1, variant="tiny", input_spec=InputSpec.frame(size=32)).peers[0].vit.head
    assert head.bias.abs().sum() == 0 and head.weight.std() < 1e-4  # trunc-normal std 2e-5, bias 0


def published_file(path, monkeypatch, prefix: str = "") -> list[dict[str, torch.Tensor]]:
    """A CoTEX checkpoint in the published format with every published key name (width 32, depth 12)."""
    monkeypatch.setitem(cotex.SIZES, "narrow", PeerSize(32, 12, 2))
    torch.manual_seed(4)
    spec = InputSpec.frame(size=224)
    states = [CoTEX(peers=1, variant="narrow", input_spec=spec).peers[0].state_dict() for _ in range(2)]
    torch.save({"epoch": 5, "args": argparse.Namespace(mask_rate=0.0, vit_num=2),
                "state_dicts": [{prefix + k: v for k, v in s.items()} for s in states]}, path)
    return states


@pytest.mark.parametrize("prefix", ["", "module."])
def test_a_published_checkpoint_loads_strictly_as_the_n_peer_model(tmp_path, monkeypatch, prefix):
    states = published_file(tmp_path / "cotex.pth", monkeypatch, prefix)
    listed = REFERENCE / "checkpoint_keys_cotex_peer.txt"
    if listed.is_file():  # the key names are the published ones (shapes at width 32)
        assert list(describe(states[0])) == list(read_key_list(listed))
    assert detect_cotex(torch.load(tmp_path / "cotex.pth", weights_only=False))
    model = load_cotex(tmp_path / "cotex.pth")
    assert len(model.peers) == 2 and not model.training and model.variant == "narrow"
    for peer, state in zip(model.peers, states, strict=True):
        assert all(torch.equal(v, state[k]) for k, v in peer.state_dict().items())
    published = models.load_published(tmp_path / "cotex.pth")  # the entry point: the same N-peer model
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert isinstance(published, CoTEX) and not published.training
        torch.testing.assert_close(published({"image": x}), model.peer_logits(x).sum(0))
    del states[1]["vit.head.bias"]
    torch.save({"epoch": 5, "state_dicts": states}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="peer 2.*1 missing keys"):
        load_cotex(tmp_path / "cut.pth")
    torch.save({"model": states[0]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a CoTEX checkpoint"):
        load_cotex(tmp_path / "other.pth")
