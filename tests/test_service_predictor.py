"""Loading models: the contract checks, clear errors naming the file, provider detection."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _service_fixtures import CMY_CLASSES, build_standin, card_of, write_model
from onnx import TensorProto, helper

from service.config import Settings
from service.errors import ModelLoadError
from service.predictor import CPU, CUDA, Predictor, resolve_providers

HAS_CUDA = CUDA in ort.get_available_providers()


def _load(path, **settings):
    return Predictor.load(path, Settings(model_path=path, **settings))


def test_standin_loads_and_predicts_by_hand(tmp_path):
    path = write_model(tmp_path / "m" / "model.onnx", build_standin())
    p = _load(path)
    assert p.class_names == ["red", "green", "blue"] and p.input_size == 16
    assert p.version == card_of(path)["version"] and len(p.version) == 12
    red = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    out = p.run(red)
    # embedding (1, 0, 0); d(red centroid 0.9, 0.1, 0.1) = sqrt(0.01 * 3) = 0.173205;
    # reachability = 10 / 0.173205 = 57.735
    assert out["distance"][0] == pytest.approx(0.173205, abs=1e-5)
    assert out["reachability"][0] == pytest.approx(57.735, abs=1e-3)
    assert out["nearest_class"][0] == 0 and out["probabilities"][0].argmax() == 0
    assert p.warm_up(max_batch_size=4, runs=2) == 2


def _expect_load_error(path, *fragments):
    with pytest.raises(ModelLoadError) as info:
        _load(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(info.value)
    return info.value


def test_missing_and_garbage_files(tmp_path):
    _expect_load_error(tmp_path / "nope.onnx", "not found")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    _expect_load_error(garbage, "onnxruntime cannot load it")


def test_no_card(tmp_path):
    path = write_model(tmp_path / "m.onnx", build_standin(with_card=False))
    _expect_load_error(path, "oltr.card", "missing")


def test_card_missing_a_field_names_it(tmp_path):
    model = build_standin()
    card = json.loads(model.metadata_props[0].value)
    del card["threshold"]
    helper.set_model_props(model, {"oltr.card": json.dumps(card)})
    _expect_load_error(write_model(tmp_path / "m.onnx", model), "threshold", "Field required")


def test_card_crop_must_match_input_size(tmp_path):
    model = build_standin()
    card = json.loads(model.metadata_props[0].value)
    card["preprocess"]["crop"] = 12
    helper.set_model_props(model, {"oltr.card": json.dumps(card)})
    _expect_load_error(write_model(tmp_path / "m.onnx", model), "preprocess.crop (12)")


def test_float_input_breaks_contract(tmp_path):
    path = write_model(tmp_path / "m.onnx", build_standin(input_dtype=TensorProto.FLOAT))
    _expect_load_error(path, "must be uint8")


def test_static_batch_breaks_contract(tmp_path):
    model = build_standin()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    _expect_load_error(write_model(tmp_path / "m.onnx", model), "N dynamic")


def test_class_count_must_match_card(tmp_path):
    model = build_standin()
    card = json.loads(model.metadata_props[0].value)
    card["class_names"] = ["red", "green"]
    helper.set_model_props(model, {"oltr.card": json.dumps(card)})
    _expect_load_error(write_model(tmp_path / "m.onnx", model), "3 classes", "2 class_names")


def test_wrong_runtime_output_shape_fails_warm_up(tmp_path):
    model = build_standin()
    node = next(n for n in model.graph.node if n.op_type == "ReduceMin")
    node.attribute[0].i = 1  # keepdims=1: distance comes out [N, 1] instead of [N]
    path = write_model(tmp_path / "m.onnx", model)
    p = _load(path)  # static checks pass ...
    with pytest.raises(ModelLoadError, match=r"batch of 1: output '\w+' has shape \(1, 1\)"):
        p.warm_up(max_batch_size=2, runs=1)  # ... the run does not


def test_second_model_differs(tmp_path):
    a = _load(write_model(tmp_path / "a.onnx", build_standin()))
    b = _load(write_model(tmp_path / "b.onnx", build_standin(classes=CMY_CLASSES)))
    assert a.version != b.version and b.class_names == ["cyan", "magenta", "yellow"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "b.onnx")))


def test_provider_resolution():
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers("cuda") == [CUDA, CPU]
    assert resolve_providers("CUDAExecutionProvider,CPUExecutionProvider") == [CUDA, CPU]
    assert resolve_providers("auto") == ([CUDA, CPU] if HAS_CUDA else [CPU])


def test_cuda_request_without_cuda_is_a_visible_fallback(tmp_path):
    if HAS_CUDA:
        pytest.skip("this onnxruntime build has CUDA; the fallback cannot be provoked here")
    path = write_model(tmp_path / "m.onnx", build_standin())
    with pytest.warns(UserWarning, match="not in available provider"):
        choice = _load(path, providers="cuda").providers
    assert choice.requested == (CUDA, CPU) and choice.active[0] == CPU
    assert choice.fallback is True
    auto = _load(path).providers
    assert auto.fallback is False and auto.primary == CPU  # auto never asked for CUDA here
