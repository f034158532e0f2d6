"""Importance without labels and the Fisher criterion (importance/objectives.py, score.objective and
score.criterion), for the ViT and the CNN family."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cnn_helpers import UserResNet, randomize_bn
from mdp_cli.errors import MdpError
from mdp_cli.importance.objectives import OBJECTIVES, make_loss
from mdp_cli.importance.taylor import bn_taylor_scores, scoring_batches
from mdp_cli.importance.vit import vit_importance
from mdp_cli.models import create_model
from mdp_cli.space.cnn import analyze_cnn
from mdp_cli.space.vit import build_vit_space

METHODS = list(itertools.product(OBJECTIVES, ("taylor", "fisher")))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def batches(n=2, size=32, classes=5, batch=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def dim_totals(record):
    return {name: sum(rec["scores"]) for name, rec in record["dims"].items()}


@pytest.mark.parametrize("objective, criterion", METHODS)
def test_vit_scores_are_finite_and_non_zero_for_every_method(objective, criterion):
    model = create_model("deit_tiny", img_size=32, depth=2, num_classes=5)
    space = build_vit_space(model, "deit_tiny")
    record = vit_importance(model, batches(), space, loss_fn=make_loss(objective), criterion=criterion)
    for name, rec in record["dims"].items():
        scores = np.asarray(rec["scores"])
        assert np.isfinite(scores).all() and scores.sum() > 0, name
    assert record["provenance"]["method"] == {"taylor": "taylor_first_order", "fisher": "fisher_squared_grad"}[criterion]


def test_headless_backbone_scores_on_features_and_refuses_labels():
    model = create_model("vit_small_patch14_dinov2", img_size=28, depth=2)  # num_classes=0: features out
    space = build_vit_space(model, "dinov2")
    data = batches(size=28)
    with pytest.raises(MdpError, match="no classifier .* --objective features"):
        make_loss("labels", has_classifier=False)
    record = vit_importance(model, data, space, loss_fn=make_loss("features", has_classifier=False))
    assert all(total > 0 for total in dim_totals(record).values())
    # why not MSE to the model's own features: at the dense point its gradient, and every score, is zero
    mse = vit_importance(model, data, space, loss_fn=lambda out, _: (out - out.detach()).pow(2).mean())
    assert all(total == 0 for total in dim_totals(mse).values())


def test_fisher_is_the_square_of_the_taylor_group_term_per_batch():
    """With one batch, a unit scored by one group term (an MLP neuron, a head) has Fisher = Taylor²."""
    model = create_model("deit_tiny", img_size=32, depth=2, num_classes=5)
    space = build_vit_space(model, "deit_tiny")
    data = batches(n=1)
    taylor = vit_importance(model, data, space, criterion="taylor")["dims"]
    fisher = vit_importance(model, data, space, criterion="fisher")["dims"]
    for dim in ("blocks.1.mlp.hidden", "blocks.0.attn.heads"):
        np.testing.assert_allclose(fisher[dim]["scores"], np.square(taylor[dim]["scores"]), rtol=1e-9)


NOISE = 2.0  # class patterns + this much noise: a trained tiny ViT gets most, not all, images right


def _spearman(a, b):
    ra, rb = (np.argsort(np.argsort(np.asarray(v))) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_pseudo_label_ranking_agrees_with_label_ranking_on_a_trained_model():
    """A tiny ViT trained here (4 classes of noisy class patterns; not every prediction is right, so
    pseudo-labels differ from the labels): within each dim, ranking the units by pseudo-label scores agrees
    with the label ranking far better than ranking them by scores on random labels does."""
    from timm.models.vision_transformer import VisionTransformer

    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(4, 3, 16, 16, generator=g)

    def sample(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return patterns[y] + NOISE * torch.randn(n, 3, 16, 16, generator=g), y

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(60):
        x, y = sample(32)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    data = [sample(64) for _ in range(4)]
    with torch.no_grad():
        accuracy = np.mean([(model(x).argmax(1) == y).float().mean().item() for x, y in data])
    assert 0.6 < accuracy < 1.0, accuracy
    space = build_vit_space(model, "tiny", steps={"embed": 8, "mlp": 16})
    random_labels = [(x, torch.randint(0, 4, y.shape, generator=g)) for x, y in data]
    scores = {name: vit_importance(model, d, space, loss_fn=make_loss(obj))["dims"]
              for name, obj, d in (("labels", "labels", data), ("pseudo", "pseudo_labels", data),
                                   ("random", "labels", random_labels))}
    def mean_rank_correlation(other):
        return np.mean([_spearman(scores["labels"][d.name]["scores"], scores[other][d.name]["scores"])
                        for d in space.dims])

    agree, chance = mean_rank_correlation("pseudo"), mean_rank_correlation("random")
    print(f"accuracy {accuracy:.2f}, rank correlation with the label ranking: pseudo-labels {agree:.2f}, "
          f"random labels {chance:.2f}")
    assert agree > 0.6 and agree > chance + 0.2, (agree, chance)


@pytest.mark.parametrize("objective, criterion", METHODS)
def test_cnn_scores_for_every_method(objective, criterion):
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16), max_options=4)
    data = list(scoring_batches("synthetic", 16, 4, 2, num_classes=10))
    scores, count = bn_taylor_scores(model, analysis, data, loss_fn=make_loss(objective), criterion=criterion)
    assert count == 2
    for node, s in scores.items():
        assert np.isfinite(s).all() and s.sum() > 0, node
    if (objective, criterion) == ("labels", "fisher"):
        taylor, _ = bn_taylor_scores(model, analysis, data[:1])
        fisher, _ = bn_taylor_scores(model, analysis, data[:1], criterion="fisher")
        np.testing.assert_allclose(fisher["stage1_0_bn1"], np.square(taylor["stage1_0_bn1"]), rtol=1e-6)  # float32 grads


def test_distill_fisher_estimates_the_kl_of_removing_each_channel():
    """``distill`` + ``fisher`` scores a BN channel by (Σ γ∂L/∂γ + β∂L/∂β)² at labels sampled from the dense
    model's softmax: with one image per batch its expectation is δᵀF(x)δ for δ = the channel's (γ, β)
    removed, twice the second-order KL(dense ‖ channel removed). Brute force: remove each channel of two
    inner widths and measure the KL. The scores must rank the channels as the KL does and sit at its scale."""
    import torch.nn.functional as F

    model = randomize_bn(UserResNet(classes=6), seed=1).eval()
    analysis = analyze_cnn(model, "user", (3, 16, 16), max_options=4)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(24, 3, 16, 16, generator=g)
    draws = 40  # sampled labels per image: the estimate's noise falls as 1/sqrt(draws)
    data = [(images[i:i + 1], torch.zeros(1, dtype=torch.long)) for _ in range(draws) for i in range(len(images))]
    scores, _ = bn_taylor_scores(model, analysis, data, loss_fn=make_loss("distill", seed=0), criterion="fisher")
    with torch.no_grad():
        dense = F.log_softmax(model(images), 1)
    for node, module in (("stage1_0_bn1", model.stage1[0].bn1), ("stage2_1_bn1", model.stage2[1].bn1)):
        kl = []
        for c in range(module.num_features):
            saved = module.weight.data[c].item(), module.bias.data[c].item()
            module.weight.data[c], module.bias.data[c] = 0.0, 0.0
            with torch.no_grad():
                pruned = F.log_softmax(model(images), 1)
            module.weight.data[c], module.bias.data[c] = saved
            kl.append(F.kl_div(pruned, dense, log_target=True, reduction="sum").item())
        estimate = np.asarray(scores[node]) / draws / 2  # per draw, halved: the second-order KL
        rho = _spearman(estimate, kl)
        ratio = float(estimate.sum() / np.sum(kl))  # a sum: a channel the ReLU never passes has 0 and 0
        print(f"{node}: Spearman {rho:.2f} with the brute-force KL, estimate/KL over the channels {ratio:.2f}")
        assert rho > 0.8, (node, rho)
        assert 0.5 < ratio < 2.0, (node, ratio)
