"""Every CNN family at a small resolution with random weights: discovery, exact nothing-pruned export, a
random pruned export that reloads and trains one step, importance on every dim, and latency terms that build
exactly the convs/linears the export runs (their weights add up to the model's, dense and pruned)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from cnn_helpers import randomize_bn
from mdp_cli.errors import MdpError
from mdp_cli.export.cnn_prune import prune_cnn
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.importance.taylor import bn_taylor_scores, importance_record
from mdp_cli.latency.cnn_ops import width  # noqa: F401  (registers the CNN op builders)
from mdp_cli.latency.ops import get_op
from mdp_cli.space.cnn import discover_space

RES = 32
# (model, exact term sizes at any pruning): False where a term over more than three dims is timed at full width
FAST = [("regnet_y_400mf", True), ("mobilenet_v3_small", True), ("mnasnet0_5", True), ("timm:ghostnet_100", True),
        ("squeezenet1_0", True), ("timm:tf_efficientnet_lite0", True), ("timm:regnetx_002", True)]
SLOW = [("efficientnet_b0", True), ("timm:efficientnet_b0", True), ("mobilenet_v3_large", True),
        ("convnext_tiny", True), ("timm:convnext_tiny", True), ("densenet121", False), ("vgg11_bn", True),
        ("regnet_x_400mf", True), ("timm:mobilenetv3_small_050", True)]


def _randomize_norms(model: nn.Module) -> None:
    randomize_bn(model)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith(("gamma", "layer_scale")):
            p.data.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def _term_weights(analysis, sizes_of_dim: dict[str, int]) -> int:
    total = 0
    for term in analysis.space.terms:
        if term.op not in ("conv_bn_act", "linear"):
            continue
        sizes = {role: sizes_of_dim[dim] for role, dim in zip(term.roles, term.dims)}
        module, _ = get_op(term.op)(term.context, sizes, 1)
        total += _weights(module)
    return total


def _run_terms(analysis, sizes_of_dim: dict[str, int]) -> None:
    seen = set()
    for term in analysis.space.terms:
        sizes = {role: sizes_of_dim[dim] for role, dim in zip(term.roles, term.dims)}
        key = (term.signature(), tuple(sorted(sizes.items())))
        if key in seen:
            continue
        seen.add(key)
        module, x = get_op(term.op)(term.context, sizes, 1)
        with torch.no_grad():
            module(*x) if isinstance(x, tuple) else module(x)


def check_family(name: str, exact_terms: bool, tmp_path) -> None:
    torch.manual_seed(0)
    model, analysis = discover_space(name, RES)
    _randomize_norms(model)
    space = analysis.space
    assert space.dims, "no prunable dim found"
    x = torch.randn(2, 3, RES, RES)

    # nothing pruned: the same function, to float rounding
    dense, _ = prune_cnn(model, analysis, {}, {})
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=1e-5)
    full = {d.name: d.size for d in space.dims}
    assert _term_weights(analysis, full) == _weights(model)

    # a random pruned export: exact widths in the latency terms, reload, one training step
    rng = random.Random(3)
    choice = {d.name: rng.choice(d.options[:-1] or d.options) for d in space.dims}
    kept = {b.name: rng.random() < 0.6 for b in analysis.blocks if b.removable}
    pruned, arch = prune_cnn(model, analysis, choice, kept)
    assert arch["widths"] == choice
    if exact_terms and not any(not k for k in kept.values()):
        assert _term_weights(analysis, choice) == _weights(pruned)
    elif exact_terms:
        all_kept, _ = prune_cnn(model, analysis, choice, {})
        assert _term_weights(analysis, choice) == _weights(all_kept)
    _run_terms(analysis, choice)
    save_exported(tmp_path, pruned, arch)
    again = load_exported(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), atol=0, rtol=0)
    again.train()
    opt = torch.optim.SGD(again.parameters(), lr=0.1)
    before = [p.detach().clone() for p in again.parameters()]
    nn.functional.cross_entropy(again(x), torch.tensor([1, 2])).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, again.parameters()))

    # importance: every dim scored, from the data
    batches = [(torch.randn(2, 3, RES, RES), torch.tensor([0, 1]))]
    scores, count = bn_taylor_scores(model, analysis, batches)
    record = importance_record(analysis, scores)
    assert count == 1 and set(record) == set(full)
    for dim in space.dims:
        rec = record[dim.name]
        assert len(rec["scores"]) == dim.size and len(rec["cumulative"]) == len(dim.options)
        assert np.all(np.isfinite(rec["scores"]))
    assert sum(record[d]["cumulative"][-1] > 0 for d in record) >= 0.9 * len(record)


@pytest.mark.parametrize("name,exact", FAST)
def test_family(name, exact, tmp_path):
    check_family(name, exact, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name,exact", SLOW)
def test_family_slow(name, exact, tmp_path):
    check_family(name, exact, tmp_path)


def test_shufflenet_is_refused_in_one_line_naming_the_shuffle():
    with pytest.raises(MdpError) as err:
        discover_space("shufflenet_v2_x0_5", RES)
    message = str(err.value)
    assert "\n" not in message and "channel shuffle" in message


def test_a_fixed_size_model_at_another_resolution_names_its_native_size():
    """LeViT's attention biases are sized for 224 px: at 64 px the traced graph cannot run; the refusal says why
    in one line (not the module-stack dump torch.fx wraps it in) and which resolution works."""
    with pytest.raises(MdpError) as err:
        discover_space("levit_128s", 64)
    message = str(err.value)
    assert "\n" not in message and "nn_module_stack" not in message
    assert "fixed input size 224" in message and "--resolution 224" in message
