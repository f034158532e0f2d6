"""A user's own checkpoint: the head size comes from it, misfits are one line with both shapes, provenance line."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from mdp_cli.errors import MdpError
from mdp_cli.models import classifier_paths, create_model
from mdp_cli.weights import describe_weights


def _save(model: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def resnet18_10(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("w") / "r18_10.safetensors"
    _save(model, path)
    return model, path


def test_head_size_comes_from_the_checkpoint(resnet18_10, tmp_path) -> None:
    source, path = resnet18_10
    x = torch.randn(2, 3, 32, 32)
    loaded = create_model("resnet18", path)
    assert loaded.fc.out_features == 10
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert loaded.mdp_weights == f"{path} (sha256 {digest}), 10 classes from the checkpoint"
    # a torch checkpoint wrapped as {"state_dict": ...} with DDP's "module." prefix reads the same
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r.pth")
    torch.testing.assert_close(create_model("resnet18", tmp_path / "r.pth")(x), source(x), rtol=0, atol=0)


def test_misfit_is_one_line_naming_both_shapes(resnet18_10) -> None:
    _, path = resnet18_10
    with pytest.raises(MdpError) as info:
        create_model("resnet18", path, num_classes=1000)
    assert "fc.weight: checkpoint [10, 512], model [1000, 512]" in str(info.value)
    with pytest.raises(MdpError) as info:
        create_model("resnet50", path)
    assert "layer1.0.conv1.weight: checkpoint [64, 64, 3, 3], model [64, 64, 1, 1]" in str(info.value)
    assert "not a resnet50" in str(info.value)
    with pytest.raises(MdpError, match="does not fit resnet34: 80 model tensors missing"):
        create_model("resnet34", path)
    with pytest.raises(MdpError, match="weights file not found.*builtin:efficientnet-lite0"):
        create_model("resnet18", path.with_name("missing.safetensors"))
    for error in (info.value,):
        assert "\n" not in str(error)


def test_replace_head_keeps_the_backbone(resnet18_10) -> None:
    source, path = resnet18_10
    model = create_model("resnet18", path, num_classes=3, replace_head=True)
    assert model.fc.out_features == 3 and "new 3-class head" in model.mdp_weights
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    for key, value in body.items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_vit_heads_from_the_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=7, img_size=32).eval()
    _save(source, tmp_path / "d.safetensors")
    model = create_model("deit_tiny_distilled", tmp_path / "d.safetensors", img_size=32)
    assert classifier_paths(model) == ["head", "head_dist"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    with pytest.raises(MdpError, match=r"pos_embed: checkpoint \[1, 6, 192\], model \[1, 198, 192\]"):
        create_model("deit_tiny_distilled", tmp_path / "d.safetensors")


def test_classifier_paths_of_torchvision_families() -> None:
    assert classifier_paths(torchvision.models.resnet18()) == ["fc"]
    assert classifier_paths(torchvision.models.mobilenet_v2()) == ["classifier.1"]
    assert classifier_paths(torchvision.models.squeezenet1_0()) == ["classifier.1"]  # a 1x1 conv head


def test_describe_weights_lines(tmp_path) -> None:
    assert describe_weights(None) == "random init"
    assert describe_weights(None, seed=3) == "random init (seed 3)"
    (tmp_path / "w.safetensors").write_bytes(b"abc")
    assert describe_weights(str(tmp_path / "w.safetensors")).endswith(
        f"(sha256 {hashlib.sha256(b'abc').hexdigest()[:12]})")


def test_weights_hash_of_a_file(resnet18_10) -> None:
    from mdp_cli.weights import weights_hash

    _, path = resnet18_10
    assert weights_hash(str(path)) == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(MdpError, match="unknown built-in weights"):
        weights_hash("builtin:nope")
