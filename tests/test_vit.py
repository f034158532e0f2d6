"""Vision transformers: space discovery, importance, export (exactness, random solutions, ONNX, load)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mdp_cli.errors import MdpError
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.export.vit import export_vit, export_vit_onnx
from mdp_cli.modules.vit import attention_kernel
from mdp_cli.importance.vit import vit_importance
from mdp_cli.models import canonical_name, create_model
from mdp_cli.space.vit import build_vit_space, size_options, vit_problem

SUPPORTED = {
    # alias: (E, depth, heads, mlp, distilled)
    "deit_tiny": (192, 12, 3, 768, False),
    "deit_small": (384, 12, 6, 1536, False),
    "deit_base": (768, 12, 12, 3072, False),
    "deit_tiny_distilled": (192, 12, 3, 768, True),
    "deit_small_distilled": (384, 12, 6, 1536, True),
    "deit_base_distilled": (768, 12, 12, 3072, True),
    "vit_small": (384, 12, 6, 1536, False),
    "vit_base": (768, 12, 12, 3072, False),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny(name="deit_tiny", img=64, **kw):
    return create_model(name, img_size=img, **kw)


@pytest.mark.parametrize("alias", sorted(SUPPORTED))
def test_space_discovery(alias):
    E, depth, H, M, distilled = SUPPORTED[alias]
    assert canonical_name(alias).endswith("_patch16_224")
    model = create_model(alias, img_size=32)  # small token count: construction only
    space = build_vit_space(model, alias)
    assert space.family == "vit" and space.input_shape == (3, 32, 32)
    assert len(space.dims) == 1 + 4 * depth and len(space.blocks) == 2 * depth
    assert len(space.terms) == 2 + 4 * depth  # per block qk, vproj, sdpa, mlp
    assert space.dim("embed").options == tuple(range(16, E + 1, 16))
    assert space.dim("blocks.0.attn.heads").options == tuple(range(1, H + 1))
    assert space.dim("blocks.11.attn.qk").options == tuple(range(8, 65, 8))
    assert space.dim("blocks.3.attn.v").block == "blocks.3.attn"
    assert space.dim("blocks.3.mlp.hidden").options[-1] == M and space.dim("blocks.3.mlp.hidden").block == "blocks.3.mlp"
    # every block shares one table set: stem, head, qk, vproj, mlp
    assert len({t.signature() for t in space.terms}) == 6
    assert ("distilled" in alias) == distilled
    assert any(s.module == "dist_token" for s in space.dim("embed").slices) == distilled


def test_size_options():
    assert size_options(64, 8) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert size_options(100, 30) == (30, 60, 90, 100)
    assert size_options(192, 16, min_embed := 64)[0] == min_embed


def test_unsupported_model_is_one_line_error():
    with pytest.raises(MdpError, match="not a timm VisionTransformer"):
        build_vit_space(torch.nn.Linear(2, 2), "x")


@pytest.mark.parametrize("name", ["deit_tiny", "deit_tiny_distilled"])
def test_export_unpruned_reproduces_timm(name):
    model = tiny(name)
    pruned, arch = export_vit(model, {})
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5, rtol=0)


def test_export_removes_exactly_what_was_zeroed():
    """Zero the units that will be cut (heads, q/k and v columns, MLP neurons, a whole branch): the
    timm model then computes exactly what the cut model computes, which checks every slice."""
    model = tiny()
    H, D, E = 3, 64, 192
    blk = model.blocks[2]
    qk_cols, v_cols = torch.arange(40, 64), torch.arange(24, 64)
    with torch.no_grad():
        w = blk.attn.qkv.weight.view(3, H, D, E)
        b = blk.attn.qkv.bias.view(3, H, D)
        for t in (0, 1):
            w[t][:, qk_cols] = 0
            b[t][:, qk_cols] = 0
        w[2][:, v_cols] = 0
        b[2][:, v_cols] = 0
        w[2][1] = 0  # head 1: zero values -> contributes nothing
        b[2][1] = 0
        blk.mlp.fc1.weight[100:] = 0
        blk.mlp.fc1.bias[100:] = 0  # GELU(0) = 0
        model.blocks[4].attn.proj.weight.zero_()
        model.blocks[4].attn.proj.bias.zero_()
        model.blocks[7].mlp.fc2.weight.zero_()
        model.blocks[7].mlp.fc2.bias.zero_()
    importance = {
        "blocks.2.attn.heads": [1.0, 0.0, 1.0],
        "blocks.2.attn.qk": [1.0] * 40 + [0.0] * 24,
        "blocks.2.attn.v": [1.0] * 24 + [0.0] * 40,
        "blocks.2.mlp.hidden": [1.0] * 100 + [0.0] * 668,
    }
    choice = {"blocks.2.attn.heads": 2, "blocks.2.attn.qk": 40, "blocks.2.attn.v": 24, "blocks.2.mlp.hidden": 100}
    pruned, arch = export_vit(model, choice, {"blocks.4.attn": False, "blocks.7.mlp": False}, importance)
    assert arch["blocks"][2]["attn"] == {"heads": 2, "qk_dim": 40, "v_dim": 24, "scale": 64 ** -0.5}
    assert arch["blocks"][4]["attn"] is None and arch["blocks"][7]["mlp"] is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("qk_dim,v_dim", [(8, 24), (24, 8), (16, 16)])
def test_attention_kernel_padding_is_exact(qk_dim, v_dim):
    """Q ≠ V is zero-padded to equal widths for the fused kernel; the result is plain attention at (Q, V)."""
    heads, n, scale = 3, 11, 0.125
    qkv = torch.randn(2, n, heads * (2 * qk_dim + v_dim), dtype=torch.float64)
    q, k, v = qkv.split([heads * qk_dim, heads * qk_dim, heads * v_dim], dim=-1)
    q, k, v = (t.reshape(2, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    expected = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v
    out = attention_kernel(qkv, heads, qk_dim, v_dim, scale)
    assert out.shape == (2, n, heads * v_dim)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(2, n, heads * v_dim), rtol=1e-12, atol=1e-12)


def random_solution(space, rng, p_remove=0.2):
    choice = {d.name: rng.choice(d.options) for d in space.dims}
    kept = {b.name: rng.random() > p_remove for b in space.blocks}
    return choice, kept


def test_random_solutions_export_run_and_reload(tmp_path):
    model = tiny("deit_tiny_distilled", num_classes=7)
    space = build_vit_space(model, "deit_tiny_distilled")
    rng = random.Random(1)
    x = torch.randn(2, 3, 64, 64)
    for trial in range(4):
        choice, kept = random_solution(space, rng)
        pruned, arch = export_vit(model, choice, kept)
        E = choice["embed"]
        assert pruned.stem.proj.out_channels == E and pruned.head.head.in_features == E
        for i, spec in enumerate(arch["blocks"]):
            layers = list(pruned.blocks[i])
            a_kept, m_kept = kept[f"blocks.{i}.attn"], kept[f"blocks.{i}.mlp"]
            assert len(layers) == a_kept + m_kept
            if a_kept:
                att = layers[0].attn
                h, q, v = (choice[f"blocks.{i}.attn.{k}"] for k in ("heads", "qk", "v"))
                assert (att.heads, att.qk_dim, att.v_dim) == (h, q, v)
                assert att.qkv.weight.shape == (h * (2 * q + v), E) and att.proj.weight.shape == (E, h * v)
            else:
                assert spec["attn"] is None
            if m_kept:
                assert layers[-1].mlp.fc1.out_features == choice[f"blocks.{i}.mlp.hidden"]
        with torch.no_grad():
            y = pruned(x)
        assert y.shape == (2, 7) and torch.isfinite(y).all()
        save_exported(tmp_path / f"m{trial}", pruned, arch, source_model="deit_tiny_distilled")
        loaded = load_exported(tmp_path / f"m{trial}")
        with torch.no_grad():
            assert torch.equal(loaded(x), y)


def test_onnx_export_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny("deit_tiny_distilled")
    space = build_vit_space(model, "deit_tiny_distilled")
    choice, kept = random_solution(space, random.Random(3))
    pruned, arch = export_vit(model, choice, kept)
    export_vit_onnx(pruned, str(tmp_path / "m.onnx"), arch)
    x = torch.randn(2, 3, 64, 64)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, pruned(x).numpy(), atol=1e-4, rtol=1e-4)


def test_importance_and_problem():
    model = tiny("deit_tiny_distilled", num_classes=5)
    space = build_vit_space(model, "deit_tiny_distilled")
    data = [(torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,))) for _ in range(2)]
    imp = vit_importance(model, data, space)
    assert imp["schema"] == "mdp.importance" and set(imp["dims"]) == {d.name for d in space.dims}
    for d in space.dims:
        rec = imp["dims"][d.name]
        assert rec["options"] == list(d.options) and len(rec["scores"]) == d.size
        c = np.asarray(rec["cumulative"])
        assert (np.diff(c) >= -1e-12).all() and c[-1] == pytest.approx(sum(rec["scores"]))
        assert c[0] > 0
    emb = imp["dims"]["embed"]
    parts = emb["gated"]
    assert len(parts) == 2 * 12 and emb["block"] is None
    assert np.allclose(np.sum([np.asarray(v) for v in parts.values()], axis=0) + emb["base"], emb["cumulative"])
    assert sorted(emb["order"]) == list(range(192))
    assert all(p.grad is None for p in model.parameters())
    # problem: synthetic tables of the right shapes
    tables = {t.name: np.ones([len(space.dim(d).options) for d in t.dims]) for t in space.terms}
    problem = vit_problem(space, tables, imp)
    assert problem.dense_latency == pytest.approx(2 + 4 * 12)  # stem, head; qk, vproj, sdpa, mlp per block
    kept = {b.name: True for b in space.blocks}
    dense = problem.objective(problem.dense_choice(), kept)
    assert dense == pytest.approx(100.0)  # rescaled: the dense total is 100
    scale = 100.0 / sum(v["cumulative"][-1] for v in imp["dims"].values())
    # removing a branch drops its terms and its share of the embedding importance
    kept["blocks.0.mlp"] = False
    drop = (imp["dims"]["blocks.0.mlp.hidden"]["cumulative"][-1] + parts["blocks.0.mlp"][-1]) * scale
    assert problem.objective(problem.dense_choice(), kept) == pytest.approx(dense - drop)
    assert problem.latency(problem.dense_choice(), kept) == pytest.approx(49)
