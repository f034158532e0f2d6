"""Per-term parameter and FLOP counts carried in the problem: the problem's count of a configuration equals
the exported model's, for CNNs and ViTs, so --max-params / --max-flops caps are exact."""

from __future__ import annotations

import random

import numpy as np
import pytest

import mdp_cli.latency.cnn_ops  # noqa: F401  (registers the CNN latency ops)
import mdp_cli.latency.vit_ops  # noqa: F401  (registers the ViT latency ops)
from cnn_helpers import random_solution
from mdp_cli.export.cnn_prune import model_stats, prune_cnn
from mdp_cli.export.vit import export_vit
from mdp_cli.latency.counts import TermCounter, space_counts
from mdp_cli.models import create_model
from mdp_cli.space.cnn import discover_space
from mdp_cli.space.vit import build_vit_space
from mdp_cli.space.core import SpaceTerm


def total(space, counts, choice, kept, name):
    out = 0.0
    for term in space.terms:
        if term.block is not None and not kept.get(term.block, True):
            continue
        index = tuple(space.dim(d).options.index(choice[d]) for d in term.dims)
        out += float(np.asarray(counts[term.name][name])[index])
    return out


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cnn_counts_equal_the_exported_models(name):
    model, analysis = discover_space(name, 32, max_options=3, multiple=8)
    space = analysis.space
    counts = space_counts(space)
    rng = random.Random(0)
    dense_choice = {d.name: d.size for d in space.dims}
    stats = model_stats(model, (3, 32, 32))
    assert total(space, counts, dense_choice, {}, "params") == stats["params"]
    assert total(space, counts, dense_choice, {}, "flops") == stats["flops"]
    for _ in range(3):
        choice, kept = random_solution(analysis, rng)
        net, _ = prune_cnn(model, analysis, choice, kept)
        stats = model_stats(net, (3, 32, 32))
        assert total(space, counts, choice, kept, "params") == stats["params"]
        assert total(space, counts, choice, kept, "flops") == stats["flops"]


def test_vit_counts_equal_the_exported_models():
    import torch

    from mdp_cli.latency.counts import module_counts
    from mdp_cli.latency.vit_tables import split_attention_counts

    model = create_model("deit_tiny", img_size=32, num_classes=10)
    space = build_vit_space(model, "deit_tiny")
    counts = split_attention_counts(space, space_counts(space))
    rng = random.Random(1)
    for trial in range(4):
        choice = {d.name: (d.size if trial == 0 else rng.choice(d.options)) for d in space.dims}
        kept = {b.name: trial == 0 or rng.random() > 0.2 for b in space.blocks}
        net, _ = export_vit(model, choice, kept)
        assert total(space, counts, choice, kept, "params") == sum(p.numel() for p in net.parameters())
        assert total(space, counts, choice, kept, "flops") == module_counts(net, torch.zeros(1, 3, 32, 32))[1]


def test_a_count_that_is_not_multilinear_is_counted_everywhere():
    # a "depthwise then pointwise" op whose parameters grow with the square of one width
    from torch import nn

    from mdp_cli.latency.ops import register_op
    from mdp_cli.space.core import PruningSpace, SpaceDim

    @register_op("test_square_width")
    def square(context, sizes, batch):
        import torch

        c = sizes["c"]
        return nn.Sequential(nn.Linear(c, c), nn.Linear(c, c * c)), torch.randn(batch, c)

    dim = SpaceDim("c", 8, 2, (2, 4, 6, 8))
    term = SpaceTerm("t", "test_square_width", ("c",), ("c",), {})
    space = PruningSpace("toy", "toy", (1, 1, 1), [dim], [term], [])
    table = TermCounter().tables(space, term)["params"]
    assert table.tolist() == [c * c + c + c * c * c + c * c for c in (2, 4, 6, 8)]
