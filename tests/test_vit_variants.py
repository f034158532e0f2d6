"""timm ViT variants beyond DeiT: layer scale (DINOv2, DeiT-III), register tokens, class-token-free global
pooling with fc_norm, patch-embed norm, norm_pre (CLIP), headless backbones, dynamic image size.

Each at a tiny size (depth 2, 2x2 patches, random weights perturbed so that layer scale, tokens and norms
are far from their init): an export with nothing pruned equals timm's output; a pruned export runs,
saves and reloads; the latency ops build the exported modules; one-line refusals for what is not
supported."""

from __future__ import annotations

import random

import pytest
import torch

import mdp_cli.latency.vit_ops  # noqa: F401  (registers the ViT latency ops)
from mdp_cli.errors import MdpError
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.export.vit import export_vit
from mdp_cli.latency.ops import get_op
from mdp_cli.models import create_model
from mdp_cli.space.vit import build_vit_space, vit_facts

# name -> (timm kwargs, image size, expected layout facts)
VARIANTS = {
    "dinov2": ("vit_small_patch14_dinov2", {"img_size": 28},
               {"layer_scale": True, "num_classes": 0, "prefix_tokens": 1, "tokens": 5}),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {"img_size": 28},
                    {"layer_scale": True, "num_classes": 0, "prefix_tokens": 5, "pos_embed": "patches", "tokens": 9}),
    "deit3": ("deit3_small_patch16_224", {"img_size": 32, "num_classes": 7},
              {"layer_scale": True, "pos_embed": "patches", "num_classes": 7}),
    "gap_fc_norm": ("vit_small_patch16_224", {"img_size": 32, "class_token": False, "global_pool": "avg", "num_classes": 7},
                    {"prefix_tokens": 0, "global_pool": "avg", "fc_norm": True, "final_norm": False, "tokens": 4}),
    "patch_norm_headless": ("vit_small_patch16_224", {"img_size": 32, "embed_norm_layer": "layernorm", "num_classes": 0},
                            {"patch_norm_eps": 1e-6, "num_classes": 0}),
    # CLIP's layout (vit_base_patch16_clip_224): norm_pre, no patch bias; at ViT-S width to stay fast
    "clip_norm_pre": ("vit_small_patch16_224", {"img_size": 32, "pre_norm": True, "num_classes": 7},
                      {"norm_pre_eps": 1e-6, "patch_bias": False}),
    "dynamic_img_size": ("vit_small_patch16_224", {"img_size": 32, "dynamic_img_size": True, "num_classes": 7},
                         {"dynamic_img_size": True}),
    "distilled_headless": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "num_classes": 0},
                           {"distilled": True, "num_classes": 0, "prefix_tokens": 2}),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def variant(key: str):
    name, kwargs, _ = VARIANTS[key]
    model = create_model(name, depth=2, **kwargs)
    with torch.no_grad():  # move layer scale (init 1e-5), tokens (1e-6) and norms away from their init
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return name, model.eval(), kwargs["img_size"]


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_unpruned_export_equals_timm_and_pruned_export_reloads(key, tmp_path):
    name, model, img = variant(key)
    facts = vit_facts(model)
    for k, v in VARIANTS[key][2].items():
        assert facts[k] == v, k
    x = torch.randn(3, 3, img, img)
    pruned, arch = export_vit(model, {})
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(pruned(x), expected)
    width = facts["num_classes"] or facts["embed_dim"]  # headless: the pooled features are the output
    assert expected.shape == (3, width)
    assert ("inputs only" in arch.get("note", "")) == facts["dynamic_img_size"]

    space = build_vit_space(model, name)
    rng = random.Random(2)
    choice = {d.name: rng.choice(d.options[:-1] or d.options) for d in space.dims}
    kept = {"blocks.0.mlp": False}
    small, arch = export_vit(model, choice, kept)
    with torch.no_grad():
        y = small(x)
    assert y.shape == (3, facts["num_classes"] or choice["embed"]) and torch.isfinite(y).all()
    assert arch["blocks"][0]["mlp"] is None and arch["embed_dim"] == choice["embed"]
    if facts["num_classes"] == 0:
        assert not any("head.head" in k for k in small.state_dict())  # no classifier in the export
    save_exported(tmp_path / "m", small, arch, source_model=name)
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / "m")(x), y)


def test_layer_scale_and_registers_are_sliced_by_the_kept_embedding():
    name, model, img = variant("dinov2_reg4")
    E = 384
    scores = torch.rand(E, generator=torch.Generator().manual_seed(3)).tolist()
    small, arch = export_vit(model, {"embed": 96}, {}, {"embed": scores})
    kept = torch.argsort(-torch.tensor(scores), stable=True)[:96].sort().values
    sd = small.state_dict()
    torch.testing.assert_close(sd["blocks.1.0.gamma"], model.blocks[1].ls1.gamma.detach()[kept], rtol=0, atol=0)
    torch.testing.assert_close(sd["blocks.1.1.gamma"], model.blocks[1].ls2.gamma.detach()[kept], rtol=0, atol=0)
    prefix = torch.cat([model.cls_token, model.reg_token], dim=1).detach()[..., kept]
    torch.testing.assert_close(sd["stem.prefix"], prefix, rtol=0, atol=0)
    assert sd["stem.pos_embed"].shape == (1, 4, 96)  # no_embed_class: positions for the patches only


def test_zeroed_units_of_a_layer_scale_model_are_cut_exactly():
    """DeiT-III (layer scale, no_embed_class): zero heads, q/k and v columns, MLP neurons and one whole
    branch's gain; the timm model then computes exactly what the cut model computes."""
    _, model, img = variant("deit3")
    H, D, E = 6, 64, 384
    blk = model.blocks[0]
    with torch.no_grad():
        w = blk.attn.qkv.weight.view(3, H, D, E)
        b = blk.attn.qkv.bias.view(3, H, D)
        for t in (0, 1):
            w[t][:, 40:], b[t][:, 40:] = 0, 0
        w[2][:, 24:], b[2][:, 24:] = 0, 0
        w[2][4], b[2][4] = 0, 0
        blk.mlp.fc1.weight[100:], blk.mlp.fc1.bias[100:] = 0, 0
        model.blocks[1].ls1.gamma.zero_()  # layer scale 0: the branch adds nothing
    importance = {"blocks.0.attn.heads": [1, 1, 1, 1, 0, 1], "blocks.0.attn.qk": [1.0] * 40 + [0.0] * 24,
                  "blocks.0.attn.v": [1.0] * 24 + [0.0] * 40, "blocks.0.mlp.hidden": [1.0] * 100 + [0.0] * 1436}
    choice = {"blocks.0.attn.heads": 5, "blocks.0.attn.qk": 40, "blocks.0.attn.v": 24, "blocks.0.mlp.hidden": 100}
    small, arch = export_vit(model, choice, {"blocks.1.attn": False}, importance)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


@pytest.mark.parametrize("key", ["dinov2_reg4", "gap_fc_norm", "clip_norm_pre", "distilled_headless"])
def test_latency_ops_build_the_exported_modules(key):
    """Each latency term builds, from its context alone, modules with the exported model's parameters
    (shapes included) and runs on the model's token count."""
    name, model, img = variant(key)
    space = build_vit_space(model, name)
    small, arch = export_vit(model, {})
    E = arch["embed_dim"]
    parts = {"vit_stem": small.stem, "vit_head": small.head, "vit_qk": small.blocks[0][0], "vit_mlp": small.blocks[0][1]}
    for term in space.terms:
        if term.op not in parts:
            continue
        sizes = {role: space.dim(d).size for d, role in zip(term.dims, term.roles)}
        module, x = get_op(term.op)(term.context, sizes, 1)
        if term.op == "vit_qk":  # the qk slice is timed at v = v_ref: compare the full branch instead
            module, x = get_op("vit_attn")(term.context, {**sizes, "v": 64}, 1)
        assert {k: v.shape for k, v in module.state_dict().items()} == \
            {k: v.shape for k, v in parts[term.op].state_dict().items()}, term.op
        with torch.no_grad():
            module(x)
        if term.op != "vit_stem":
            assert x.shape[1] == vit_facts(model)["tokens"]
    assert E == vit_facts(model)["embed_dim"]


def test_layout_changes_the_latency_signature_only_where_the_op_changes():
    deit = build_vit_space(create_model("deit_small", img_size=32, depth=2), "deit_small")
    deit3 = build_vit_space(create_model("deit3_small_patch16_224", img_size=32, depth=2), "deit3")
    gap = build_vit_space(create_model("vit_small_patch16_224", img_size=32, depth=2, class_token=False,
                                       global_pool="avg"), "gap")
    sig = {name: {t.op: t.signature() for t in s.terms} for name, s in (("deit", deit), ("deit3", deit3), ("gap", gap))}
    # layer scale changes the branches and (no_embed_class) the stem, not the kernel nor the head
    assert sig["deit3"]["vit_mlp"] != sig["deit"]["vit_mlp"] and sig["deit3"]["vit_qk"] != sig["deit"]["vit_qk"]
    assert sig["deit3"]["vit_sdpa"] == sig["deit"]["vit_sdpa"] and sig["deit3"]["vit_head"] == sig["deit"]["vit_head"]
    assert sig["deit3"]["vit_stem"] != sig["deit"]["vit_stem"]
    # no class token: one token fewer, so every term's token count changes
    assert all(sig["gap"][op] != sig["deit"][op] for op in sig["deit"])
    # the DeiT signature has no layout keys (rows profiled before the variants stay reusable)
    assert "layer_scale" not in sig["deit"]["vit_mlp"] and "pos_embed" not in sig["deit"]["vit_stem"]


@pytest.mark.parametrize("kwargs, message", [
    ({"qk_norm": True}, "qk-norm"),
    ({"global_pool": "map"}, "attention pooling"),
    ({"act_layer": "gelu_tanh"}, "exact-GELU"),
])
def test_unsupported_variants_are_one_line_errors(kwargs, message):
    model = create_model("vit_small_patch16_224", img_size=32, depth=2, **kwargs)
    with pytest.raises(MdpError, match=message) as info:
        vit_facts(model)
    assert "\n" not in str(info.value)


def test_resolution_and_pretrained_weights_at_another_size(tmp_path):
    """A model is created at the configured resolution; weights saved at another size load (the position
    embedding is resampled to the new grid); a resolution that is not a multiple of the patch is refused."""
    from safetensors.torch import save_file

    from mdp_cli.families.vit import VitFamily, load_vit_weights

    family = VitFamily()
    with pytest.raises(MdpError, match="not a multiple of vit_small_patch14_dinov2's patch size 14 \\(use 28 or 42\\)"):
        family._model({"model": "vit_small_patch14_dinov2", "resolution": 32})
    big = create_model("vit_small_patch14_dinov2", img_size=56, depth=2)  # 4x4 patches
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(tmp_path / "w.safetensors"))
    small = create_model("vit_small_patch14_dinov2", img_size=28, depth=2)  # 2x2 patches
    load_vit_weights(small, tmp_path / "w.safetensors")
    torch.testing.assert_close(small.blocks[1].ls2.gamma, big.blocks[1].ls2.gamma)
    assert small.pos_embed.shape == (1, 5, 384)
    with pytest.raises(MdpError, match="weights do not fit the model"):
        load_vit_weights(create_model("vit_small_patch14_dinov2", img_size=28, depth=3), tmp_path / "w.safetensors")


@pytest.mark.slow  # ~25 s: a 12-block DINOv2-S is created four times
def test_headless_dinov2_through_the_commands(tmp_path):
    """mdp space / score (label-free: score.objective features) / export (ONNX: features out) for a DINOv2
    backbone at 28 px; the default objective (distill) is refused in one line for a model without classifier."""
    import json

    import yaml
    from click.testing import CliRunner

    from mdp_cli.cli import main

    base = {"model": "vit_small_patch14_dinov2", "resolution": 28, "random_init": True,
            "space": {"steps": {"embed": 96, "mlp": 384}},
            "score": {"data": "synthetic", "batches": 1, "batch_size": 2}}
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "features.yaml").write_text(yaml.safe_dump({**base, "score": {**base["score"], "objective": "features"}}))
    runner = CliRunner()
    out = runner.invoke(main, ["space", "--config", str(tmp_path / "features.yaml")])
    assert out.exit_code == 0 and "input [3, 28, 28]" in out.output, out.output
    res = runner.invoke(main, ["score", "--config", str(tmp_path / "labels.yaml"), "-o", str(tmp_path / "x.json")])
    errors = [line for line in res.output.strip().splitlines() if not line.startswith("weights:")]
    assert res.exit_code != 0 and "no classifier" in res.output and len(errors) == 1, res.output
    imp = tmp_path / "imp.json"
    res = runner.invoke(main, ["score", "--config", str(tmp_path / "features.yaml"), "-o", str(imp)])
    assert res.exit_code == 0, res.output
    assert json.loads(imp.read_text())["provenance"]["objective"] == "features"
    sol = tmp_path / "sol.json"
    dims = json.loads(imp.read_text())["dims"]  # a solution names every dim and block
    choice = {name: rec["options"][-1] for name, rec in dims.items()} | {"embed": 192}
    blocks = {f"blocks.{i}.{b}": True for i in range(12) for b in ("attn", "mlp")} | {"blocks.3.attn": False}
    sol.write_text(json.dumps({"schema": "mdp.solution", "version": 1, "choice": choice, "blocks": blocks}))
    res = runner.invoke(main, ["export", "--config", str(tmp_path / "features.yaml"), "--solution", str(sol),
                               "--importance", str(imp), "-o", str(tmp_path / "pruned"), "--onnx", "--no-measure"])
    assert res.exit_code == 0, res.output
    model = load_exported(tmp_path / "pruned")
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 192)  # features as wide as the kept embedding
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["onnx"]


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_pretrained_file_loads_into_every_variant(key, tmp_path):
    """--pretrained goes through timm's checkpoint filter: for each variant a saved state dict loads into a
    fresh model of the same configuration and gives the same outputs (the filter changes nothing there)."""
    from safetensors.torch import save_file

    from mdp_cli.families.vit import load_vit_weights

    name, model, img = variant(key)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    fresh = create_model(name, depth=2, **VARIANTS[key][1])
    load_vit_weights(fresh, tmp_path / "w.safetensors")
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)
