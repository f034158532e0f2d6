"""The Family interface: a third family defined in this file alone goes through `mdp run`, and the typed
configuration refuses bad values in one line before any stage runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from mdp_cli.cli import main
from mdp_cli.config import load_config
from mdp_cli.export.spec import load_exported
from mdp_cli.families import Discovered, Family, all_families, family_of, register_family, unregister_family
from mdp_cli.latency.ops import OPS, register_op
from mdp_cli.modules.registry import ARCH_BUILDERS, register_arch
from mdp_cli.settings import setting
from mdp_cli.space.core import PruningSpace, SpaceDim, SpaceTerm

# ---------------------------------------------------------------------------------------------------------
# A toy family: a two-layer MLP on 3x32x32 images whose hidden width is the one prunable dim.
# ---------------------------------------------------------------------------------------------------------

INPUT = (3, 32, 32)


class ToyMlp(nn.Module):
    def __init__(self, hidden: int = 512, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(int(np.prod(INPUT)), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@register_arch("toy_mlp")
def build_toy(arch):
    return ToyMlp(arch["hidden"], arch["num_classes"])


@register_op("toy_mlp_hidden")
def toy_op(context, sizes, batch):
    return ToyMlp(sizes["hidden"], context["classes"]).eval(), torch.randn(batch, *INPUT)


@dataclasses.dataclass
class ToySpace:
    step: int = setting(128, min=1)


class ToyFamily(Family):
    name = "toymlp"
    title = "toy MLP"
    summary = "two-layer MLP (test family)"
    space_section = ToySpace
    default_model = "toy_mlp"
    default_resolution = 32
    priority = 5

    def recognises(self, model):
        return model == "toy_mlp"

    def discover(self, cfg):
        torch.manual_seed(0)
        model = ToyMlp(512, cfg.get("num_classes") or 10).eval()
        step = cfg["space"]["step"]
        dim = SpaceDim("hidden", 512, step, tuple(range(step, 513, step)), kind="mlp")
        term = SpaceTerm("mlp", "toy_mlp_hidden", ("hidden",), ("hidden",), {"classes": model.num_classes})
        return Discovered(model, PruningSpace("toy_mlp", self.name, INPUT, [dim], [term], []))

    def measurements(self, discovered, grid):
        from mdp_cli.latency.profile import grid_measurements

        return grid_measurements(discovered.space, grid or 1)

    def build_problem(self, cfg, discovered, lut, importance, importance_path):
        from mdp_cli.latency.to_problem import build_problem

        return build_problem(discovered.space, lut, importance, interpolate=False)

    def score(self, cfg, discovered, batches, device):
        model, dim = discovered.model, discovered.space.dims[0]
        scores, count = torch.zeros(dim.size, dtype=torch.float64), 0
        for x, y in batches:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y % model.num_classes).backward()
            w = model.fc1.weight
            scores += (w * w.grad).sum(1).abs().double().detach()
            count += 1
        order = torch.argsort(-scores, stable=True)
        csum = np.concatenate([[0.0], np.cumsum(scores[order].numpy())])
        cumulative = [float(csum[o]) for o in dim.options]
        return {"dims": {"hidden": {"scores": scores.tolist(), "step": dim.step, "options": list(dim.options),
                                    "align": 1, "order": order.tolist(), "cumulative": cumulative,
                                    "base": cumulative, "block": None, "gated": {}}},
                "batches": count, "method": "toy_taylor"}

    def export(self, discovered, choice, kept, importance):
        model = discovered.model
        k = int(choice.get("hidden", 512))
        order = importance["hidden"]["order"] if importance else list(range(512))
        keep = torch.tensor(sorted(order[:k]))
        arch = {"family": "toy_mlp", "hidden": k, "num_classes": model.num_classes}
        net = build_toy(arch)
        with torch.no_grad():
            net.load_state_dict({"fc1.weight": model.fc1.weight[keep], "fc1.bias": model.fc1.bias[keep],
                                 "fc2.weight": model.fc2.weight[:, keep], "fc2.bias": model.fc2.bias})
        return net.eval(), arch


@pytest.fixture
def toy_family():
    register_family(ToyFamily)
    yield
    unregister_family("toymlp")


def test_a_family_defined_in_one_module_runs_through_mdp_run(tmp_path, monkeypatch, toy_family):
    monkeypatch.chdir(tmp_path)
    assert "toymlp" in [f.name for f in all_families()] and family_of("toy_mlp") == "toymlp"
    assert "toymlp" in CliRunner().invoke(main, ["families"]).output
    config = {"model": "toy_mlp", "random_init": True, "space": {"step": 128},
              "profile": {"warmup": 2, "repeats": 5, "lut_dir": str(tmp_path / "luts")},
              "score": {"data": "synthetic", "batches": 2, "batch_size": 4},
              "solve": {"budget": 0.7}, "export": {"repeats": 5, "tolerance": 10.0}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["run", "toy.yaml", "-q"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "toy"
    space = json.loads((run / "space.json").read_text())
    assert space["family"] == "toymlp" and space["dims"][0]["options"] == [128, 256, 384, 512]
    # the LUT holds one row per option of the one term, timed by the shared engine
    lut = next((tmp_path / "luts").glob("*.csv")).read_text().splitlines()
    assert len(lut) == 1 + 4 and all(line.startswith("toy_mlp_hidden,") for line in lut[1:])
    solution = json.loads((run / "solution.json").read_text())
    assert solution["choice"]["hidden"] < 512 and solution["predicted_latency"] <= solution["budget"] * (1 + 1e-9)
    report = json.loads((run / "exported" / "report.json").read_text())
    assert report["family"] == "toymlp" and report["timed_in_turns"] and report["measured_ms"] > 0
    # the export keeps the most important hidden units, and equals the dense model restricted to them
    pruned = load_exported(run / "exported")
    assert pruned.fc1.out_features == solution["choice"]["hidden"]
    importance = json.loads((run / "importance.json").read_text())
    assert importance["provenance"]["family"] == "toymlp" and importance["provenance"]["method"] == "toy_taylor"
    dense = ToyFamily().discover(load_config(tmp_path / "toy.yaml")).model
    keep = sorted(importance["dims"]["hidden"]["order"][:pruned.fc1.out_features])
    x = torch.randn(5, *INPUT)
    with torch.no_grad():
        want = dense.fc2.bias + torch.relu(dense.fc1(x.flatten(1)))[:, keep] @ dense.fc2.weight[:, keep].T
        torch.testing.assert_close(pruned(x), want)
    # a second run skips every stage
    again = CliRunner().invoke(main, ["run", "toy.yaml"])
    assert again.exit_code == 0 and again.output.count("unchanged inputs and outputs, skipped") == 6, again.output


def test_family_registry_refuses_a_second_family_of_the_same_name(toy_family):
    class Other(ToyFamily):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_family(Other)
    assert "toy_mlp" in ARCH_BUILDERS and "toy_mlp_hidden" in OPS


def test_builtin_families_and_their_sections():
    names = [f.name for f in all_families()]
    assert names[-1] == "cnn" and "vit" in names  # the CNN tracer is the catch-all, asked last
    cfg = load_config(None, {"model": "resnet18"})
    # prune_stem defaults to true for CNNs (docs/results.md, "Coupled importance": +1.05 points at budget 0.3)
    assert cfg["family"] == "cnn" and cfg["space"] == {"step": None, "max_options": 8, "multiple": 1,
                                                       "prune_stem": True}
    assert cfg["score"]["coupled"] == "sum"  # unset: the family's default
    assert cfg["resolution"] == 64 and cfg["profile"]["grid"] == 1
    vit = load_config(None, {"model": "deit_tiny", "profile": {"grid": "embed=3,mlp=4"}})
    assert vit["family"] == "vit" and vit["resolution"] is None and vit["profile"]["grid"] == {"embed": 3, "hidden": 4}


@pytest.mark.parametrize("yaml_text, message", [
    ("profile: {batch: 0}", "profile.batch (--batch) = 0 is out of range; expected an integer >= 1"),
    ("space: {max_options: 0}", "space.max_options (--max-options) = 0 is out of range"),
    ("space: {prune_stem: 'no'}", "space.prune_stem (--prune-stem) = 'no' is not allowed; expected true or false"),
    ("profile: {batch: eight}", "profile.batch (--batch) = 'eight' is not allowed; expected an integer"),
    ("profile: {dtype: float64}", "profile.dtype (--dtype) = 'float64' is not allowed; expected one of float32"),
    ("profile: {batch: 1.5}", "expected an integer"),
    ("profile: {stat: mean}", "expected one of median, p10"),
    ("score: {batches: -1}", "score.batches (--batches) = -1 is out of range"),
    ("score: {coupled: median}", "score.coupled (--coupled) = 'median' is not allowed; expected one of sum, mean, sqrt"),
    ("solve: {budget: [1, 2]}", "solve.budget (--budget) = [1, 2] is not allowed"),
    ("export: {onnx: 1}", "export.onnx = 1 is not allowed; expected true or false"),
    ("resolution: 0", "resolution (--resolution) = 0 is out of range"),
    ("space: {stepz: 8}", "unknown key 'stepz' in 'space'"),
    ("profil: {batch: 1}", "unknown config keys ['profil']"),
    ("space: {steps: {embed: 16}}", "space.steps (--steps) applies to Swin/ViT models only"),
    ("profile: 3", "'profile' must be a mapping of settings"),
    ("model: 7", "model = 7 is not allowed"),
])
def test_bad_config_values_are_one_line_errors_before_any_stage(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text("model: resnet18\n" + yaml_text + "\n" if not yaml_text.startswith("model") else yaml_text + "\n")
    result = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert str(path) in result.output
    assert not (tmp_path / "run").exists()  # refused before any stage (or the run directory) started


def test_vit_keys_of_a_cnn_config(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("model: deit_tiny\nspace: {max_options: 3}\n")
    with pytest.raises(Exception, match=r"space.max_options \(--max-options\) applies to CNN models only"):
        load_config(path)


def test_weights_are_explicit_and_random_init_is_seeded(tmp_path):
    base = ["--model", "resnet18", "--resolution", "32", "--max-options", "2", "--data", "synthetic",
            "--batches", "1", "--batch-size", "2"]
    runner = CliRunner()
    refused = runner.invoke(main, ["score", *base, "-o", str(tmp_path / "a.json")])
    assert refused.exit_code == 2 and "no weights given; pass --pretrained FILE" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "a.json").exists()
    scores = []
    for name in ("a", "b"):
        result = runner.invoke(main, ["score", *base, "--random-init", "-o", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
        assert "weights: random init (seed 0" in result.output
        scores.append(json.loads((tmp_path / f"{name}.json").read_text())["dims"])
    assert scores[0] == scores[1]  # the same random model, so the same importance, run after run
    both = runner.invoke(main, ["score", *base, "--random-init", "--pretrained", str(tmp_path / "w.safetensors")])
    assert both.exit_code == 2 and "keep one" in both.output
    path = tmp_path / "run.yaml"
    path.write_text("model: resnet18\nresolution: 32\n")
    run = runner.invoke(main, ["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert run.exit_code == 2 and "no weights given" in run.output and not (tmp_path / "run" / "state.json").exists()
