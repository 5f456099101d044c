"""End-to-end training on the embedded MNIST data, scaled down: both stages, checkpoints,
resume, evaluation outputs, the CLI's errors, and the DistributedDataParallel path."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oltr_contract.scores import SCORE_NAMES
from training import feature_cache
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import load_config
from training.data import load_split
from training.fit import _warn_frozen_centroid_loss, fit, main

ROOT = Path(__file__).resolve().parents[1]
CKPT2 = Path("checkpoints") / "stage2.pt"

# 16 px digits, few epochs: seconds, not minutes, while exercising every part of the pipeline.
TINY = [
    "data.input_size=16",
    "data.resize_size=16",
    "model.feat_dim=64",
    "stage1.epochs=3",
    "stage1.batch_size=32",
    "stage1.lr=0.05",
    "stage2.epochs=2",
    "stage2.batch_size=32",
    "eval.batch_size=512",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("oltr-cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(overrides=[*TINY, f"data.cache_dir={cache_dir}"])
    return fit(cfg, run_dir, export=False)


@pytest.mark.slow
def test_fit_writes_a_complete_run_directory(tiny_run):
    run_dir = tiny_run.run_dir
    for name in (
        "config.yaml",
        "metrics.json",
        "report.md",
        "train.log",
        "eval_plain.json",
        "checkpoints/stage1.pt",
        "checkpoints/stage2.pt",
    ):
        assert (run_dir / name).is_file(), name
    for plot in ("class_counts", "per_class_accuracy", "scores_reachability", "training_curves"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 5_000, plot
    assert not list(run_dir.rglob("*.tmp")), "a temporary checkpoint file was left behind"
    report = (run_dir / "report.md").read_text()
    assert "plain (stage 1)" in report and "OLTR (stage 2)" in report


@pytest.mark.slow
def test_fit_reports_both_models_side_by_side(tiny_run):
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    assert set(metrics["oltr"]["shot_groups"]["num_classes"]) == {"many", "medium", "few"}
    assert metrics["plain"]["open_set"]["decision"]["score"] == "max_softmax"
    assert metrics["oltr"]["open_set"]["decision"]["score"] == "combined"
    assert list(metrics["plain"]["open_set"]["scores"]) == ["max_softmax", "energy"]
    assert list(metrics["oltr"]["open_set"]["scores"]) == list(SCORE_NAMES)
    assert metrics["oltr"]["closed_set"]["overall"] > 1 / 6  # better than chance on 6 digits
    report = (tiny_run.run_dir / "report.md").read_text()
    for model in ("plain", "oltr"):
        auroc = metrics[model]["open_set"]["scores"]["max_softmax"]["open_sets"]["open"]["auroc"]
        assert f"{100 * auroc:.1f}" in report


@pytest.mark.slow
def test_reported_auroc_is_that_of_the_trained_model(tiny_run):
    """Recomputed here from the trained model's reachability on the known test and open test
    digits with scikit-learn directly (known = positive, higher = more known)."""
    from sklearn.metrics import roc_auc_score

    from training.data import load_split
    from training.engine import predict
    from training.run_data import RunData

    model, cfg = model_from_checkpoint(load_checkpoint(tiny_run.run_dir / CKPT2))
    data = RunData.from_split(load_split(cfg.data), cfg)
    cpu = torch.device("cpu")
    known = predict(model, data.loader("test"), cpu)["reachability"]
    opens = predict(model, data.loader("open_test"), cpu)["reachability"]
    expected = roc_auc_score(np.r_[np.ones(known.size), np.zeros(opens.size)], np.r_[known, opens])
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    reported = metrics["oltr"]["open_set"]["scores"]["reachability"]["open_sets"]["open"]
    assert reported["auroc"] == pytest.approx(expected, abs=1e-12)
    assert reported["num_images"] == opens.size


@pytest.mark.slow
def test_training_loss_falls(tiny_run):
    history = tiny_run.metrics["history"]
    stage1 = [row["loss"] for row in history if row["stage"] == 1]
    assert len(stage1) == 3
    assert stage1[-1] < stage1[0]


@pytest.mark.slow
def test_checkpoint_reload_reproduces_the_trained_model_exactly(tiny_run):
    """The stage-2 checkpoint, loaded fresh, is the model fit trained (and evaluated)."""
    state = load_checkpoint(tiny_run.run_dir / CKPT2)
    model, cfg = model_from_checkpoint(state)
    trained = tiny_run.model.eval()
    x = torch.rand(5, 3, cfg.data.input_size, cfg.data.input_size)
    with torch.no_grad():
        reloaded, original = model(x), trained(x)
    assert torch.equal(reloaded.logits, original.logits)
    assert torch.equal(reloaded.reach, original.reach)
    assert torch.equal(model.centroids, trained.centroids)
    assert state["stage"] == "oltr" and state["epoch"] == cfg.stage2.epochs - 1


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path, cache_dir):
    """A run stopped after two stage-1 epochs and resumed for three trains only the third:
    the first two history rows come from the checkpoint (marked here; a retrained run would
    have computed its own)."""
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.cache_dir={cache_dir}", "stage1.epochs=2", "stage2.epochs=1"]
    fit(load_config(overrides=overrides), run_dir, export=False)
    for name in ("checkpoints/stage2.pt", "metrics.json", "eval_plain.json"):
        (run_dir / name).unlink()  # as if stopped at the end of stage-1 epoch 1
    ckpt1 = run_dir / "checkpoints" / "stage1.pt"
    state = load_checkpoint(ckpt1)
    assert state["epoch"] == 1  # 0-based in the checkpoint, 1-based in the history rows
    state["history"] = [{**row, "loss": 1000.0 + row["epoch"]} for row in state["history"]]
    marks = [row["loss"] for row in state["history"]]
    torch.save(state, ckpt1)
    cfg = load_config(run_dir / "config.yaml")
    cfg.stage1.epochs = 3
    resumed = fit(cfg, run_dir, resume=True, export=False)
    stage1 = [r for r in resumed.metrics["history"] if r["stage"] == 1]
    assert [r["epoch"] for r in stage1] == [1, 2, 3]
    assert [r["loss"] for r in stage1[:2]] == marks  # carried over, not retrained
    assert stage1[2]["loss"] < 100  # the one epoch trained now
    assert load_checkpoint(ckpt1)["epoch"] == 2
    assert (run_dir / "metrics.json").is_file()


def test_cli_rejects_unknown_keys_by_name(capsys):
    assert main(["stage1.nonsense=3"]) == 2
    assert "stage1.nonsense" in capsys.readouterr().err


def test_cli_takes_overrides_after_options(tmp_path, capsys):
    assert main(["--run-dir", str(tmp_path / "run"), "stage1.nonsense=3"]) == 2
    assert "stage1.nonsense" in capsys.readouterr().err  # parsed as an override, then refused


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["--run-dir", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_refuses_a_folder_without_test_images_before_training(tmp_path, capsys):
    from PIL import Image

    for name, value in (("cat", 0), ("dog", 255)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (value, i, 0)).save(tmp_path / "photos" / name / f"{i}.png")
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "data.kind=folder", f"data.train={tmp_path / 'photos'}"]
    assert main(args) == 1
    assert "make_split" in capsys.readouterr().err
    assert not list(run_dir.rglob("*.pt"))  # refused before any training


def test_cli_resume_rejects_overrides(tmp_path, capsys):
    assert main(["--resume", str(tmp_path), "stage1.epochs=1"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "centroids",
    [
        [],  # default: EMA centroids, updated from class means summed across ranks
        # no gradient ever reaches the centroids: DDP must not wait for one (it used to fail
        # with "Expected to have finished reduction in the prior iteration")
        ["loss.centroid_update=gradient", "loss.centroid_weight=0"],
    ],
    ids=["ema", "gradient-lambda0"],
)
def test_distributed_fit_with_two_gloo_processes(tmp_path, cache_dir, centroids):
    """torchrun, 2 CPU ranks, gloo: both stages train under DistributedDataParallel."""
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "training.fit",
        "--run-dir",
        str(run_dir),
        "--no-export",
        *TINY,
        "stage1.epochs=1",
        "stage2.epochs=1",
        f"data.cache_dir={cache_dir}",
        *centroids,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "2 rank(s)" in log
    state = load_checkpoint(run_dir / "checkpoints" / "stage2.pt")
    assert state["stage"] == "oltr"
    assert json.loads((run_dir / "metrics.json").read_text())["oltr"]["closed_set"]["overall"] > 0


@pytest.mark.slow
def test_export_cli_writes_a_servable_model_with_its_card(tiny_run, tmp_path):
    import onnxruntime as ort

    from training.export import main as export_main
    from training.export import read_card

    out = tmp_path / "model"
    assert export_main([str(tiny_run.run_dir), "--out", str(out)]) == 0
    card = read_card(out / "model.onnx")
    assert card["class_names"] == [str(d) for d in range(6)]
    assert card["input_size"] == 16
    assert card["preprocess"]["resize_shorter"] == 16
    assert card["unknown_score"]["name"] == "combined"
    assert set(card["unknown_score"]["params"]) == {"max_softmax", "reachability"}
    decision = tiny_run.metrics["oltr"]["open_set"]["decision"]
    assert card["threshold"] == decision["threshold"]
    assert card["calibration"]["known_accept"] >= 0.95
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": np.zeros((2, 16, 16, 3), np.uint8)})
    assert outputs[0].shape == (2, 6)
    # the export stores the imprint reference, so a class can be enrolled into it at once
    from service.enrolment import Artifact, Example, enrol

    reference = card["imprint_reference"]
    assert len(reference["classifier_input_mean"]) > 0
    assert 0 < reference["images"] <= 50 * 6  # at most 50 training images per class
    pixels = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    examples = [Example.of(p, p.tobytes()) for p in pixels]
    enrolled = enrol(Artifact.read(out / "model.onnx"), "new", examples)
    assert enrolled.class_names[-1] == "new"


@pytest.mark.parametrize("problem", ["missing", "no_checkpoint", "corrupt"])
def test_export_of_a_bad_run_is_a_clear_error_and_writes_nothing(tmp_path, capsys, problem):
    from training.export import main as export_main

    run_dir = tmp_path / "run"
    if problem != "missing":
        (run_dir / "checkpoints").mkdir(parents=True)
    if problem == "corrupt":
        (run_dir / "checkpoints" / "stage2.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    assert export_main([str(run_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(run_dir) in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_runs_own_figures(tiny_run, tmp_path):
    from training.evaluate import main as evaluate_main

    assert evaluate_main([str(tiny_run.run_dir), "--out", str(tmp_path), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    expected = tiny_run.metrics["oltr"]
    assert report["closed_set"]["overall"] == pytest.approx(expected["closed_set"]["overall"])
    assert report["open_set"]["decision"] == pytest.approx(expected["open_set"]["decision"])
    assert "few-shot" in (tmp_path / "eval.md").read_text()


def test_frozen_backbone_with_centroid_loss_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        _warn_frozen_centroid_loss(load_config(overrides=["stage2.freeze_backbone=true"]))
    assert "consider loss.centroid_weight=0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        _warn_frozen_centroid_loss(load_config(preset="places_lt"))
        _warn_frozen_centroid_loss(load_config())
    assert caplog.text == ""


@pytest.mark.slow
def test_cached_features_train_the_model_the_images_train(tmp_path, cache_dir, monkeypatch):
    """Frozen backbone, no augmentation, one cached view: the backbone runs once per image, and
    the run trains the same model as the uncached one (same batches; only the backbone's batch
    size differs, so float rounding may). The checkpoint keeps the backbone's weights.
    Features in torch here: onnxruntime's agree to float rounding (tests/test_feature_cache.py),
    which five epochs of SGD amplify beyond a tight tolerance."""
    monkeypatch.setattr(feature_cache, "RUNTIME", "torch")
    frozen = [
        *TINY,
        f"data.cache_dir={cache_dir}",
        "data.augment=none",
        "stage1.freeze_backbone=true",
        "stage2.freeze_backbone=true",
    ]
    plain = fit(load_config(overrides=frozen), tmp_path / "images", export=False)
    cached_cfg = load_config(overrides=[*frozen, "data.cached_views=1"])
    cached = fit(cached_cfg, tmp_path / "cached", export=False)
    data = load_split(load_config(overrides=frozen).data)
    images = sum(len(getattr(data, n)) for n in ("train", "val", "test", "open_val", "open_test"))
    once = f"cached the frozen backbone's features of {images + len(data.train)} images"
    log_lines = (tmp_path / "cached" / "train.log").read_text().splitlines()
    cache_logs = [line.split(": ", 1)[1] for line in log_lines if "cached the" in line]
    assert len(cache_logs) == 1 and cache_logs[0].startswith(once)  # shared by both stages
    x = torch.rand(8, 3, 16, 16)
    reloaded, _ = model_from_checkpoint(load_checkpoint(tmp_path / "cached" / CKPT2))
    with torch.no_grad():
        want, got, again = plain.model.eval()(x), cached.model.eval()(x), reloaded.eval()(x)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.reach, want.reach, rtol=1e-3, atol=1e-3)
    assert torch.equal(again.logits, got.logits)  # backbone included
    for model in ("plain", "oltr"):
        assert cached.metrics[model]["closed_set"]["overall"] == pytest.approx(
            plain.metrics[model]["closed_set"]["overall"], abs=0.005
        )
