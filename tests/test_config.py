"""The typed training config: YAML, presets, dotted overrides, rejection of unknown keys."""

from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, FitConfig, load_config, preset_names, save_config


def test_defaults_are_the_embedded_mnist_run():
    cfg = load_config()
    assert cfg.data.kind == "mnist"
    assert cfg.stage1.sampler == "shuffle"
    assert cfg.stage2.sampler == "class_aware"
    assert cfg.loss.centroid_weight == 0.01
    assert cfg.model.squash == "code"


def test_dotted_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(overrides=["stage1.epochs=3", "model.attention=false", "loss.margin=0.5"])
    assert cfg.stage1.epochs == 3
    assert cfg.model.attention is False
    assert cfg.loss.margin == 0.5


def test_partial_stage2_override_keeps_stage2_defaults():
    cfg = load_config(overrides=["stage2.lr=0.2"])
    assert cfg.stage2.lr == 0.2
    assert cfg.stage2.sampler == "class_aware"  # not reset to the stage-1 default
    assert cfg.stage2.head_lr == 0.05


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("stage2.bogus=1", "stage2.bogus"),
        ("modle.backbone=resnet18", "modle"),
        ("model.backbone=resnet9", "model.backbone"),
        ("stage1.epochs=-1", "stage1.epochs"),
    ],
)
def test_bad_keys_and_values_are_rejected_by_name(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["stage1.epochs"])


def test_crop_larger_than_resize_is_rejected():
    with pytest.raises(ConfigError, match="input_size"):
        load_config(overrides=["data.input_size=64", "data.resize_size=32"])


def test_yaml_file_then_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "stage1": {"epochs": 2, "lr": 0.3}}))
    cfg = load_config(path, overrides=["stage1.epochs=5"])
    assert (cfg.name, cfg.stage1.epochs, cfg.stage1.lr) == ("mine", 5, 0.3)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "top level must be a mapping"), ("a: [unclosed", "not valid YAML")],
)
def test_bad_yaml_files_are_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", preset_names())
def test_presets_resolve(name: str):
    cfg = load_config(preset=name)
    assert cfg.name == name
    # the paper's presets sample class-aware; photos re-balances with Balanced Softmax instead
    expected = ("shuffle", 1.0) if name == "photos" else ("class_aware", 0.0)
    assert (cfg.stage2.sampler, cfg.stage2.logit_adjust_tau) == expected


def test_paper_presets_follow_the_method_notes():
    imagenet = load_config(preset="imagenet_lt")
    assert (imagenet.model.backbone, imagenet.model.pretrained) == ("resnet10", None)
    places = load_config(preset="places_lt")
    assert places.model.backbone == "resnet152"
    assert places.stage2.freeze_backbone is True
    assert places.loss.centroid_weight == 0.0  # frozen backbone: docs/BENCHMARKS.md


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="imagenet_lt"):
        load_config(preset="nope")


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config(overrides=["stage2.epochs=3", "model.squash=paper"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert FitConfig.model_validate(cfg.model_dump(mode="json")) == cfg
