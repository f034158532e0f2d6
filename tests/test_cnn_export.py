"""Export: physically smaller models from random solutions; dense equality; reload in a fresh process; ONNX."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cnn_helpers import UserResNet, random_solution, randomize_bn
from mdp_cli.errors import MdpError
from mdp_cli.export.cnn_prune import prune_cnn
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.space.cnn import analyze_cnn, discover_space


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "resnext50_32x4d"])
def test_nothing_pruned_equals_dense(name):
    model, analysis = discover_space(name, 32)
    randomize_bn(model)
    net, _ = prune_cnn(model, analysis, {}, {})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), atol=1e-5, rtol=0)


def _check_widths(net, analysis, choice, kept):
    layers = dict(net.layers.items())
    removed = {n for b in analysis.blocks if not kept.get(b.name, True) for n in b.branch + [b.add]}
    for node in analysis.graph.nodes:
        if node.name in removed:
            assert node.name not in layers
            continue
        if node.op == "conv":
            conv = layers[node.name]
            out_dim = analysis.dim_out(node)
            if out_dim:
                assert conv.out_channels == choice[out_dim]
            in_dim = analysis.dim_in(node)
            if in_dim:
                assert conv.in_channels == choice[in_dim]
        if node.op == "linear" and analysis.dim_in(node):
            assert layers[node.name].in_features == choice[analysis.dim_in(node)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "resnext50_32x4d"])
def test_random_solutions_have_exact_widths_and_blocks(name):
    model, analysis = discover_space(name, 32)
    rng = random.Random(7)
    for _ in range(3):
        choice, kept = random_solution(analysis, rng)
        order = {d.name: rng.sample(range(d.size), d.size) for d in analysis.space.dims}
        net, arch = prune_cnn(model, analysis, choice, kept, order)
        assert arch["widths"] == choice
        assert arch["blocks"] == {b: kept[b] for b in kept}
        _check_widths(net, analysis, choice, kept)
        with torch.no_grad():
            assert net(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_slicing_keeps_the_chosen_channels():
    """Pruning channels whose BN output is zeroed must not change the output: the right ones were kept."""
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16))
    dim = analysis.space.dim("stage1.0.conv1")
    keep = [1, 4, 5, 9, 12, 13, 14, 15]
    bn = model.stage1[0].bn1
    dropped = [i for i in range(dim.size) if i not in keep]
    with torch.no_grad():
        bn.weight[dropped] = 0
        bn.bias[dropped] = 0
    order = {dim.name: keep + dropped}
    net, _ = prune_cnn(model, analysis, {dim.name: 8}, {}, order)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), atol=1e-5, rtol=0)


def test_removed_first_block_keeps_downsample_path():
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16))
    net, _ = prune_cnn(model, analysis, {}, {"stage2.0": False})
    assert "stage2_0_short_0" in net.layers and "stage2_0_conv1" not in net.layers
    # reference: the block replaced by relu(shortcut(x))
    blk = model.stage2[0]
    with torch.no_grad():
        real_forward = blk.forward
        blk.forward = lambda x: torch.relu(blk.short(x))
        x = torch.randn(2, 3, 16, 16)
        want = model(x)
        blk.forward = real_forward
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=0)


def test_bad_solution_sizes_are_errors():
    model = UserResNet()
    analysis = analyze_cnn(model, "user", (3, 16, 16))
    with pytest.raises(MdpError, match="expand"):
        prune_cnn(model, analysis, {"expand": 1000}, {})
    with pytest.raises(MdpError, match="does not have"):
        prune_cnn(model, analysis, {"nope": 3}, {})


def test_exported_model_reloads_in_fresh_process(tmp_path):
    model, analysis = discover_space("resnet18", 32)
    randomize_bn(model)
    choice, kept = random_solution(analysis, random.Random(3))
    net, arch = prune_cnn(model, analysis, choice, kept)
    save_exported(tmp_path / "m", net, arch, source_model="resnet18")
    x = torch.randn(1, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "y.npy", net(x).numpy())
    assert "pickle" not in (tmp_path / "m" / "arch.json").read_text()
    code = (
        "import sys, numpy as np, torch\n"
        "from mdp_cli.export.spec import load_exported\n"
        f"m = load_exported({str(tmp_path / 'm')!r})\n"
        # the loader must not need the tracing / pruning code
        "assert not any(k.startswith(('mdp_cli.space', 'mdp_cli.export.cnn_prune')) for k in sys.modules), "
        "[k for k in sys.modules if k.startswith('mdp_cli')]\n"
        f"y = m(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))\n"
        f"np.testing.assert_allclose(y.detach().numpy(), np.load({str(tmp_path / 'y.npy')!r}), atol=1e-5)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    assert arch["schema"] == "mdp.arch" and arch["family"] == "cnn_graph"


def test_onnx_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    from mdp_cli.export.onnx import export_onnx

    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16))
    choice, kept = random_solution(analysis, random.Random(1))
    net, _ = prune_cnn(model, analysis, choice, kept)
    result = export_onnx(net, (3, 16, 16), tmp_path / "m.onnx")
    assert result["max_abs_diff"] < 1e-4
    assert (tmp_path / "m.onnx").is_file()


def test_loader_rejects_missing_weights(tmp_path):
    model = UserResNet()
    analysis = analyze_cnn(model, "user", (3, 16, 16))
    net, arch = prune_cnn(model, analysis, {}, {})
    save_exported(tmp_path, net, arch)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MdpError, match="missing"):
        load_exported(tmp_path)


class _VggLike(nn.Module):
    """conv -> relu -> pool -> flatten over a 2x2 map -> linear -> relu -> dropout -> linear -> relu -> linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(8 * 2 * 2, 24), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(24, 20), nn.ReLU(inplace=True), nn.Linear(20, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_vgg_linear_chain_prunes_producer_and_consumer():
    """Regression: in linear -> act -> linear the producer's outputs are cut with the consumer's inputs, and a
    conv dim before a flatten over a map cuts its H*W columns of the first linear."""
    torch.manual_seed(0)
    model = _VggLike().eval()
    analysis = analyze_cnn(model, "vgglike", (3, 8, 8), prune_stem=True)
    names = {d.name for d in analysis.space.dims}
    assert names == {"features.0", "classifier.0", "classifier.3"}
    choice = {"features.0": 3, "classifier.0": 10, "classifier.3": 7}
    order = {"features.0": [5, 1, 6, 0, 2, 3, 4, 7], "classifier.0": list(range(23, -1, -1)),
             "classifier.3": list(range(20))}
    net, _ = prune_cnn(model, analysis, choice, {}, order)
    layers = dict(net.layers.items())
    fc1 = [m for m in layers.values() if isinstance(m, nn.Linear)][0]
    assert (fc1.in_features, fc1.out_features) == (3 * 4, 10)
    # Reference: the dense model with the dropped units silenced gives the same outputs.
    ref = _VggLike().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for dim, module in (("features.0", ref.features[0]), ("classifier.0", ref.classifier[0]),
                            ("classifier.3", ref.classifier[3])):
            dropped = order[dim][choice[dim]:]
            module.weight[dropped] = 0
            module.bias[dropped] = 0
        x = torch.randn(4, 3, 8, 8)
        torch.testing.assert_close(net(x), ref(x), atol=1e-6, rtol=0)


def test_pruned_export_with_removed_blocks_trains():
    """Regression: a removed block's skip input feeds the next op; no op may overwrite it in place."""
    model, analysis = discover_space("resnet18", 32)
    kept = {b.name: i == 0 for i, b in enumerate(b for b in analysis.blocks if b.removable)}
    net, _ = prune_cnn(model, analysis, {}, kept)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    loss = nn.functional.cross_entropy(net(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert not any(getattr(m, "inplace", False) for m in net.modules())
    assert nn.functional.cross_entropy(net(x), torch.tensor([1, 2])).item() != loss.item()
