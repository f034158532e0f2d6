"""The user's own model (FILE.py:factory, module:factory) and unambiguous library names (tv:, timm:)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from mdp_cli.errors import MdpError
from mdp_cli.export.cnn_prune import prune_cnn
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.model_names import resolve_model_name
from mdp_cli.models import create_model
from mdp_cli.space.cnn import discover_space

USER_MODEL = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class MyNet(nn.Module):
    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, width),
                                    Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3)))


def make(num_classes=10):
    return MyNet(num_classes)
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def test_user_file_factory_discovers_exports_and_reloads(user_file, tmp_path):
    model, analysis = discover_space(f"{user_file}:make", 32)
    space = analysis.space
    assert space.model_name == f"{user_file}:make"
    assert [b.name for b in space.blocks if b.removable] == [f"blocks.{i}.body" for i in range(4)]
    assert {d.name for d in space.dims} == {"blocks.0.body.0", "blocks.1.body.0", "blocks.2.body.0", "blocks.3.body.0",
                                          "blocks.res"}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    dense, _ = prune_cnn(model, analysis, {}, {})
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=0)
    choice = {d.name: d.options[0] for d in space.dims}
    pruned, arch = prune_cnn(model, analysis, choice, {"blocks.1.body": False})
    save_exported(tmp_path / "out", pruned, arch)
    again = load_exported(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), atol=0, rtol=0)


def test_factory_keyword_arguments(user_file):
    assert create_model(f"{user_file}:make", num_classes=3)(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    # a module on sys.path (tests/ is): module:factory, with a factory that has no num_classes
    assert create_model("cnn_helpers:UserResNet", classes=4)(torch.randn(1, 3, 16, 16)).shape == (1, 4)
    with pytest.raises(MdpError, match="takes no argument 'num_classes'"):
        create_model("cnn_helpers:UserResNet", num_classes=4)


@pytest.mark.parametrize("spec,message", [
    ("missing_dir/none.py:make", "not found"),
    ("cnn_helpers:no_such_factory", "no callable 'no_such_factory'"),
    ("no_such_package.models:make", "cannot import module"),
    ("tv:no_such_net", "torchvision has no classification model"),
    ("timm:no_such_net", "timm has no model"),
    ("no_such_net", "FILE.py:factory".lower()[:0] + "path/to/file.py:factory"),
])
def test_bad_model_names_are_one_line_errors(spec, message):
    with pytest.raises(MdpError) as err:
        create_model(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_library_prefixes_and_ambiguous_plain_names():
    plain = resolve_model_name("resnet18")
    assert plain.library == "torchvision" and "timm:resnet18" in plain.note
    assert resolve_model_name("tv:resnet18").library == "torchvision"
    assert resolve_model_name("tv:resnet18").note is None
    assert resolve_model_name("timm:resnet18").library == "timm"
    assert resolve_model_name("mobilenetv3_small_100").library == "timm"  # timm only: no note
    assert resolve_model_name("mobilenetv3_small_100").note is None
    timm_net = create_model("timm:resnet18", num_classes=7)
    assert type(timm_net).__module__.startswith("timm") and timm_net.fc.out_features == 7
