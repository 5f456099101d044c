"""training.feature_cache: a model on cached backbone features answers as on the images."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.feature_cache import (
    BackboneFeatures,
    ViewMapDataset,
    backbone_bypassed,
    compute_maps,
)
from training.models import build_model


class _Set(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.labels = images, [i % 3 for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.labels[i]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize(
    ("stage", "attention", "pooled"),
    [("plain", True, False), ("oltr", True, False), ("oltr", False, True), ("plain", True, True)],
)
def test_bypassed_model_on_cached_features_equals_the_model_on_images(
    stage, attention, pooled, runtime
):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10", feat_dim=16, attention=attention)
    model = build_model(cfg, num_classes=3, input_size=16, stage=stage).eval()
    if stage == "oltr":
        model.set_centroids(torch.randn(3, 16))
    images = torch.rand(5, 3, 16, 16)
    features = BackboneFeatures(model, torch.device("cpu"), pooled=pooled, runtime=runtime)
    assert (features.session is not None) == (runtime == "onnxruntime")
    maps = compute_maps(features, _Set(images), batch_size=2, desc="t")
    assert maps.maps.shape[2:] == ((1, 1) if pooled else tuple(model.backbone.feature_size))
    backbone = model.backbone
    with torch.no_grad():
        expected = model(images)
        with backbone_bypassed(model):
            got = model(maps.maps)
        again = model(images)
    assert model.backbone is backbone and "forward" not in vars(backbone)  # restored
    torch.testing.assert_close(again.logits, expected.logits)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
    if stage == "oltr":
        torch.testing.assert_close(got.reach, expected.reach, rtol=1e-4, atol=1e-4)
    assert set(model.state_dict()) == set(
        build_model(cfg, num_classes=3, input_size=16, stage=stage).state_dict()
    )


def test_view_dataset_draws_one_of_the_image_views():
    # views[v, i] = 10 * v + i: item i must be i, 10 + i or 20 + i.
    views = (10 * torch.arange(3)[:, None] + torch.arange(4)[None, :]).float()
    data = ViewMapDataset(views, [0, 1, 0, 1])
    torch.manual_seed(0)
    seen = {float(data[2][0]) for _ in range(50)}
    assert seen == {2.0, 12.0, 22.0}
    assert data[3][1] == 1 and len(data) == 4


def test_one_view_draws_nothing_from_the_global_generator():
    data = ViewMapDataset(torch.arange(4.0)[None, :], [0, 1, 0, 1])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert float(data[2][0]) == 2.0
    assert torch.equal(torch.get_rng_state(), before)
