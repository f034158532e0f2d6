"""Space discovery: couplings, blocks and fixed parts read from the model itself."""

import pytest

from cnn_helpers import UserResNet
from mdp_cli.errors import MdpError
from mdp_cli.space.cnn import analyze_cnn, discover_space


@pytest.fixture(scope="module")
def resnet50():
    return discover_space("resnet50", 32)[1]


def test_resnet50_couplings_match_known_structure(resnet50):
    space = resnet50.space
    stage_blocks = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    sizes = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    for stage, n in stage_blocks.items():
        dim = space.dim(f"{stage}.res")
        assert dim.size == sizes[stage]
        # one shared dim per stage: every block's conv3 and the stage's downsample conv
        expected = sorted([f"{stage}.{i}.conv3" for i in range(n)] + [f"{stage}.0.downsample.0"])
        assert dim.coupled == expected
        assert dim.block is None
        for i in range(n):
            for conv, width in (("conv1", sizes[stage] // 4), ("conv2", sizes[stage] // 4)):
                inner = space.dim(f"{stage}.{i}.{conv}")
                assert inner.size == width and inner.block == f"{stage}.{i}"
    assert len(space.dims) == 4 + 2 * 16
    removable = [b.name for b in space.blocks if b.removable]
    assert removable == [f"{s}.{i}" for s, n in stage_blocks.items() for i in range(n)]
    fixed = {b.name: b.modules for b in space.blocks if not b.removable}
    assert fixed["stem"] == ["conv1", "bn1", "relu", "maxpool"]
    assert fixed["layer1.0.skip"] == ["layer1.0.downsample.0", "layer1.0.downsample.1"]
    assert fixed["head"] == ["fc"]
    # the stem keeps full width: its output is no dim, and the first conv's input is fixed
    assert not any("conv1" == d.name for d in space.dims)


def test_resnet50_terms_are_bilinear_in_coupled_dims(resnet50):
    terms = {t.name: t for t in resnet50.space.terms}
    t = terms["layer2_1_conv1"]
    assert t.op == "conv_bn_act" and t.dims == ("layer2.res", "layer2.1.conv1") and t.roles == ("cin", "cout")
    assert t.block == "layer2.1" and t.context["act"] == "relu" and t.context["bn"]
    down = terms["layer2_0_downsample_0"]
    assert down.dims == ("layer1.res", "layer2.res") and down.block is None
    stem = terms["conv1"]
    assert stem.dims == () and stem.context["cin"] == 3 and stem.context["cout"] == 64
    fc = terms["fc"]
    assert fc.op == "linear" and fc.dims == ("layer4.res",)
    adds = [t for t in resnet50.space.terms if t.op == "add"]
    assert len(adds) == 16 and all(t.block for t in adds)
    # identical convs share a signature (measured once, reused across blocks and models)
    assert terms["layer3_1_conv2"].signature() == terms["layer3_2_conv2"].signature()


def test_resnet18_stage1_is_fixed_by_the_stem():
    space = discover_space("resnet18", 32)[1].space
    names = [d.name for d in space.dims]
    assert "layer2.res" in names and not any(n.startswith("layer1.res") for n in names)
    assert space.dim("layer1.0.conv1").block == "layer1.0"
    pruned_stem = discover_space("resnet18", 32, prune_stem=True)[1].space
    shared = [d for d in pruned_stem.dims if "conv1" in d.coupled]
    assert shared and shared[0].size == 64


def test_mobilenet_v2_depthwise_coupled_in_out():
    analysis = discover_space("mobilenet_v2", 32)[1]
    terms = {t.name: t for t in analysis.space.terms}
    dw = terms["features_2_conv_1_0"]
    assert dw.dims == ("features.2.conv.0.0",) and dw.roles == ("c",) and dw.context["mode"] == "grouped"
    assert dw.context["group_size"] == 1
    removable = [b.name for b in analysis.space.blocks if b.removable]
    assert len(removable) == 10 and "features.3.conv" in removable


def test_resnext_grouped_convs_prune_whole_groups():
    space = discover_space("resnext50_32x4d", 32)[1].space
    dim = space.dim("layer1.0.conv1")
    assert dim.align == 4 and all(o % 4 == 0 for o in dim.options)
    assert "layer1.0.conv2" not in [d.name for d in space.dims]  # the grouped conv passes conv1's dim through


def test_multiple_restricts_widths():
    space = discover_space("resnet18", 32, multiple=32)[1].space
    for dim in space.dims:
        assert all(o % 32 == 0 for o in dim.options)


def test_user_residual_cnn_needs_no_model_code():
    analysis = analyze_cnn(UserResNet(), "user", (3, 16, 16))
    space = analysis.space
    assert [b.name for b in space.blocks if b.removable] == ["stage1.0", "stage1.1", "stage2.0", "stage2.1"]
    stage2 = [d for d in space.dims if "stage2.0.short.0" in d.coupled]
    assert len(stage2) == 1 and stage2[0].size == 32
    assert space.dim("expand").size == 64  # the depthwise conv shares the expand conv's dim


def test_unsupported_op_is_one_line_error():
    import torch
    from torch import nn

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            a, b = self.conv(x).chunk(2, dim=1)
            return a * torch.sigmoid(b)

    with pytest.raises(MdpError, match="chunk.*not supported") as info:
        analyze_cnn(Split(), "split", (3, 8, 8))
    assert "\n" not in str(info.value)


def test_concat_parts_keep_their_own_dims():
    """cat along channels: each input keeps its dim; the consumer's input is the union (SqueezeNet's Fire)."""
    import torch
    from torch import nn

    from mdp_cli.export.cnn_prune import prune_cnn

    class Fire(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.e1 = nn.Conv2d(8, 6, 1)
            self.e3 = nn.Conv2d(8, 10, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.head = nn.Conv2d(16, 5, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            y = torch.relu(self.bn(torch.cat([self.e1(x), self.e3(x)], 1)))
            return self.head(y).mean((2, 3))

    model = Fire().eval()
    model.bn.running_mean.uniform_(-1, 1)
    analysis = analyze_cnn(model, "fire", (3, 8, 8))
    assert {d.name for d in analysis.space.dims} == {"e1", "e3"}
    order = {"e1": [5, 4, 3, 2, 1, 0], "e3": list(range(10))}
    net, _ = prune_cnn(model, analysis, {"e1": 2, "e3": 4}, {}, order)
    layers = dict(net.layers.items())
    head = [m for k, m in layers.items() if isinstance(m, nn.Conv2d) and m.out_channels == 5][0]
    assert head.in_channels == 6
    kept = [5, 4] + [6 + i for i in range(4)]  # e1 keeps channels 4, 5; e3 its first four, shifted by 6
    torch.testing.assert_close(head.weight, model.head.weight[:, sorted(kept)])
    bn = [m for m in layers.values() if isinstance(m, nn.BatchNorm2d)][0]
    torch.testing.assert_close(bn.running_mean, model.bn.running_mean[sorted(kept)])


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "wide_resnet50_2"])
def test_other_resnets_discover(name):
    space = discover_space(name, 32)[1].space
    assert any(b.removable for b in space.blocks) and space.dims
