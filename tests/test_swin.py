"""Swin (timm SwinTransformer v1) family: exact export, surgery, importance, latency ops, mdp run.

Small size: swin_tiny at 56 px (token grids 14/7/4/2, so stage 0 has a shifted window with its mask and
stage 2 a window clamped to the 4x4 grid), depths (2, 2, 2, 2), random weights perturbed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import mdp_cli.latency.swin_ops  # noqa: F401  (registers the Swin latency ops)
from mdp_cli.errors import MdpError
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.export.swin import export_swin
from mdp_cli.families import family_of
from mdp_cli.importance.objectives import make_loss
from mdp_cli.importance.swin import swin_importance
from mdp_cli.latency.ops import get_op
from mdp_cli.models import create_model
from mdp_cli.space.swin import build_swin_space, swin_facts

NAME = "swin_tiny_patch4_window7_224"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny(num_classes=7):
    model = create_model(NAME, img_size=56, depths=(2, 2, 2, 2), num_classes=num_classes)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def test_space_and_family():
    assert family_of(NAME) == "swin" and family_of("swin_base_patch4_window7_224") == "swin"
    space = build_swin_space(tiny(), NAME)
    assert len(space.dims) == 4 * 8 and len([b for b in space.blocks if b.removable]) == 16
    f = swin_facts(tiny())
    assert [s["dim"] for s in f["stages"]] == [96, 192, 384, 768] and [s["res"] for s in f["stages"]] == [
        [14, 14], [7, 7], [4, 4], [2, 2]]
    assert f["stages"][0]["blocks"][1]["shift"] == [3, 3] and f["stages"][2]["blocks"][0]["window"] == [4, 4]
    assert space.dim("stages.2.blocks.1.attn.heads").options == tuple(range(1, 13))
    assert any(b.name == "stage widths" and not b.removable for b in space.blocks)


def test_unpruned_export_equals_timm_and_pruned_export_reloads(tmp_path):
    model = tiny()
    x = torch.randn(2, 3, 56, 56)
    pruned, _ = export_swin(model, {})
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x))
    space = build_swin_space(model, NAME)
    rng = random.Random(0)
    choice = {d.name: rng.choice(d.options) for d in space.dims}
    kept = {b.name: rng.random() > 0.3 for b in space.blocks if b.removable}
    small, arch = export_swin(model, choice, kept)
    with torch.no_grad():
        y = small(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    save_exported(tmp_path / "m", small, arch, source_model=NAME)
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / "m")(x), y)
    with pytest.raises(MdpError, match="keeps fixed"):
        export_swin(model, {}, {"stage widths": False})


def test_zeroed_units_are_cut_exactly():
    """Zero a head (its v rows and bias: it contributes nothing), q/k and v columns, MLP neurons of the
    shifted-window block, and one whole branch; the cut model computes exactly what timm computes."""
    model = tiny()
    blk = model.layers[0].blocks[1]
    H, D, E = 3, 32, 96
    with torch.no_grad():
        w, b = blk.attn.qkv.weight.view(3, H, D, E), blk.attn.qkv.bias.view(3, H, D)
        for t in (0, 1):
            w[t][:, 24:], b[t][:, 24:] = 0, 0
        w[2][:, 16:], b[2][:, 16:] = 0, 0
        w[2][2], b[2][2] = 0, 0
        blk.mlp.fc1.weight[50:], blk.mlp.fc1.bias[50:] = 0, 0
        model.layers[1].blocks[0].mlp.fc2.weight.zero_()
        model.layers[1].blocks[0].mlp.fc2.bias.zero_()
    p = "stages.0.blocks.1."
    importance = {p + "attn.heads": [1, 1, 0], p + "attn.qk": [1.0] * 24 + [0.0] * 8,
                  p + "attn.v": [1.0] * 16 + [0.0] * 16, p + "mlp.hidden": [1.0] * 50 + [0.0] * 334}
    choice = {p + "attn.heads": 2, p + "attn.qk": 24, p + "attn.v": 16, p + "mlp.hidden": 50}
    small, arch = export_swin(model, choice, {"stages.1.blocks.0.mlp": False}, importance)
    assert arch["stages"][0]["blocks"][1]["attn"]["heads"] == 2
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


@pytest.mark.parametrize("objective, criterion", [("labels", "taylor"), ("pseudo_labels", "fisher"),
                                                  ("features", "taylor")])
def test_importance_is_finite_and_non_zero(objective, criterion):
    model = tiny()
    space = build_swin_space(model, NAME)
    data = [(torch.randn(2, 3, 56, 56), torch.randint(0, 7, (2,)))]
    record = swin_importance(model, data, space, loss_fn=make_loss(objective), criterion=criterion)
    assert set(record["dims"]) == {d.name for d in space.dims}
    for name, rec in record["dims"].items():
        assert np.isfinite(rec["scores"]).all() and sum(rec["scores"]) > 0, name


def test_latency_ops_build_the_exported_modules():
    model = tiny()
    space = build_swin_space(model, NAME)
    pruned, _ = export_swin(model, {})
    parts = {"stages.0.blocks.1.attn": pruned.stages[0][1][0], "stages.2.blocks.0.mlp": pruned.stages[2][1][1],
             "stages.1.merge": pruned.stages[1][0], "stem": pruned.stem, "head": pruned.head}
    for term in space.terms:
        if term.name not in parts:
            continue
        sizes = {role: space.dim(d).size for d, role in zip(term.dims, term.roles)}
        module, x = get_op(term.op)(term.context, sizes, 1)
        assert {k: v.shape for k, v in module.state_dict().items()} == \
            {k: v.shape for k, v in parts[term.name].state_dict().items()}, term.name
        if term.op == "swin_attn":  # the shift mask travels with the module (a non-persistent buffer)
            torch.testing.assert_close(module.attn_mask, parts[term.name].attn_mask)
        with torch.no_grad():
            module(x)


@pytest.mark.slow  # 12-20 s: full swin_tiny (depths 2, 2, 6, 2) through every stage
def test_mdp_run_on_swin(tmp_path, monkeypatch):
    import json

    import yaml
    from click.testing import CliRunner

    from mdp_cli.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = {"model": NAME, "resolution": 56, "num_classes": 5, "random_init": True,
           "space": {"steps": {"qk": 16, "v": 16, "mlp": 192}},
           "profile": {"warmup": 1, "repeats": 3, "grid": {"heads": 2, "qk": 2, "v": 2, "hidden": 2}},
           "score": {"batches": 1, "batch_size": 2}, "solve": {"budget": 0.6}, "export": {"repeats": 3, "tolerance": 10.0}}
    (tmp_path / "swin.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["run", "swin.yaml", "-q"])
    assert res.exit_code == 0 and "[export] done" in res.output, res.output
    solution = json.loads((tmp_path / "runs" / "swin" / "solution.json").read_text())
    assert solution["predicted_latency"] <= solution["budget"] * (1 + 1e-9)
    with torch.no_grad():
        assert load_exported(tmp_path / "runs" / "swin" / "exported")(torch.randn(1, 3, 56, 56)).shape == (1, 5)
    res = CliRunner().invoke(main, ["space", "--model", NAME, "--resolution", "58"])
    assert res.exit_code != 0 and "not a multiple of" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.slow  # ~13 s: three full swin_tiny models
def test_pretrained_weights_from_another_resolution(tmp_path):
    """--pretrained for a Swin created at 56 px from weights of one created at 112 px: timm's Swin filter
    resizes the relative-position tables of the windows clamped to the smaller grids."""
    from safetensors.torch import save_file

    from mdp_cli.families.swin import SwinFamily

    big = create_model(NAME, img_size=112, num_classes=5)
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = SwinFamily()._model({"model": NAME, "resolution": 56, "num_classes": 5, "pretrained": tmp_path / "w.safetensors"})
    torch.testing.assert_close(model.layers[0].blocks[0].mlp.fc1.weight, big.layers[0].blocks[0].mlp.fc1.weight)
    assert model.layers[3].blocks[0].attn.relative_position_bias_table.shape == (9, 24)  # 2x2 window at 56 px
    with pytest.raises(MdpError, match="weights do not fit"):
        SwinFamily()._model({"model": NAME, "resolution": 56, "num_classes": 7, "pretrained": tmp_path / "w.safetensors"})
