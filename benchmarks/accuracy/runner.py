"""Run the benchmark: per protocol and seed, one stage-1 model, then every method from it.

Work layout (checkpoints, per-run results; resumable: finished runs are skipped)::

    WORK/splits/<split>/                      list files written by the project's split builder
    WORK/<protocol>/seed<k>/stage1/           config.yaml + checkpoints/stage1.pt (fit's layout)
    WORK/<protocol>/seed<k>/<method>/         config.yaml, result.json, scores.npz
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from benchmarks.accuracy.branches import (
    checkpoint_extra,
    train_classifier,
    train_oltr,
    train_stage1,
)
from benchmarks.accuracy.datasets import (
    Sources,
    far_open_sets,
    prepare_sources,
    write_closed_lt_split,
    write_open_lt_split,
)
from benchmarks.accuracy.probes import Probe, class_means, probe_outputs
from benchmarks.accuracy.scoring import diagnostics, report, run_sets
from benchmarks.accuracy.settings import BenchConfig, MethodSpec, ProtocolSpec
from oltr_contract.atomic import atomic_file
from training.config import FitConfig, load_config, save_config
from training.data import ImageDataset, eval_transform, load_split
from training.feature_cache import (
    BackboneFeatures,
    MapDataset,
    ViewMapDataset,
    backbone_bypassed,
    compute_maps,
    compute_views,
)
from training.losses import LossWeights
from training.models import OLTRNet, build_model
from training.run_data import RunData

log = logging.getLogger("benchmarks.accuracy")
RESULT_FILE = "result.json"
SCORES_FILE = "scores.npz"
ERROR_FILE = "error.json"


@dataclass
class SeedData:
    """The datasets of one protocol configuration (images; maps once cached)."""

    class_names: list[str]
    train_counts: list[int]
    train: Dataset
    """Training images with the training augmentation."""
    sets: dict[str, Dataset]
    """train_eval (training images, eval transform) and the evaluated sets."""
    eval_names: list[str] = field(default_factory=list)


class Benchmark:
    """One benchmark run: its config, folders and device."""

    def __init__(
        self,
        bench: BenchConfig,
        *,
        work: Path,
        cache: Path,
        data_dir: Path,
        device: torch.device,
        optional: bool = False,
    ) -> None:
        self.bench, self.work, self.cache, self.device = bench, work, cache, device
        self.data_dir = data_dir
        self.optional = optional
        """Also run the methods marked ``optional``."""
        self._sources: Sources | None = None
        self._far: dict[str, list] | None = None

    # ------------------------------------------------------------------ data

    @property
    def sources(self) -> Sources:
        if self._sources is None:
            self._sources = prepare_sources(self.cache, self.data_dir)
        return self._sources

    def split_dir(self, dataset: str) -> Path:
        """The split folder of ``dataset`` (written on first use)."""
        seed = self.bench.split_seed
        sizes = self.bench.data if dataset == "cifar10_lt_open" else self.bench.closed
        digest = hashlib.sha256(sizes.model_dump_json().encode()).hexdigest()[:8]
        out = self.work / "splits" / f"{dataset}-seed{seed}-{digest}"
        if not (out / "summary.json").is_file():
            if dataset == "cifar10_lt_open":
                write_open_lt_split(self.sources, out, sizes=self.bench.data, seed=seed)
            else:
                write_closed_lt_split(self.sources, out, sizes=self.bench.closed, seed=seed)
        return out

    def far_sets(self) -> dict[str, list]:
        if self._far is None:
            sizes = self.bench.data
            self._far = far_open_sets(
                self.sources,
                imagenet=sizes.imagenet,
                mnist=sizes.mnist,
                seed=self.bench.split_seed,
            )
        return self._far

    def run_config(
        self, protocol: ProtocolSpec, seed: int, method: MethodSpec | None = None
    ) -> FitConfig:
        """The FitConfig of one run: protocol overrides, its split, the seed, the method's."""
        split = self.split_dir(protocol.dataset)
        overrides = [*protocol.fit, "data.kind=lists", f"data.split_dir={split}", f"seed={seed}"]
        return load_config(overrides=[*overrides, *(method.overrides if method else [])])

    def seed_data(self, cfg: FitConfig, dataset: str) -> SeedData:
        """Training images and every evaluated set, with cfg's transforms."""
        split = load_split(cfg.data)
        data = RunData.from_split(split, cfg)
        sets = {"train_eval": data.eval_sets["train_eval"]}
        if dataset == "cifar10_lt_open":
            sets |= {n: data.eval_sets[n] for n in ("val", "test", "open_val")}
            sets["near"] = data.eval_sets["open_test"]
            transform = eval_transform(cfg.data)
            for name, samples in self.far_sets().items():
                sets[name] = ImageDataset(samples, transform)
            names = ["val", "test", "open_val", "near", *self.far_sets()]
        else:
            sets["test"] = data.eval_sets["test"]
            names = ["train_eval", "test"]  # no val split: calibrate on the training images
        return SeedData(split.class_names, split.train_counts, data.train, sets, names)

    # ------------------------------------------------------------------ running

    def run_protocol(self, name: str, protocol: ProtocolSpec) -> None:
        """Train and evaluate every (seed, method) of ``protocol`` that has no result yet."""
        seeds = protocol.seeds or self.bench.seeds
        methods = [m for m, spec in protocol.methods.items() if self.optional or not spec.optional]
        pending = [(s, m) for s in seeds for m in methods if not self._done(name, s, m)]
        log.info("protocol %s: %d of %d runs to do", name, len(pending), len(seeds) * len(methods))
        if len(methods) < len(protocol.methods):
            log.info(
                "protocol %s: %d optional methods left out (--optional runs them)",
                name,
                len(protocol.methods) - len(methods),
            )
        bar = tqdm(total=len(pending), desc=f"{name}", dynamic_ncols=True)
        pretrained_maps: dict[str, Dataset] | None = None
        for seed in seeds:
            todo = [m for s, m in pending if s == seed]
            if not todo:
                continue
            cfg = self.run_config(protocol, seed)
            data = self.seed_data(cfg, protocol.dataset)
            seed_dir = self.work / name / f"seed{seed}"
            plain, maps = None, None
            if protocol.cache_stage1 and pretrained_maps is None:
                pretrained_maps = self._pretrained_maps(name, protocol, cfg, data)
            if protocol.cache_stage1:
                maps = pretrained_maps
            if any(protocol.methods[m].kind != "scratch" for m in todo):
                plain = self._shared_stage1(cfg, data, seed_dir, maps)
                cached = any(protocol.methods[m].cached for m in todo)
                if protocol.cache_stage2 and not protocol.cache_stage1 and cached:
                    maps = self._maps(plain, cfg, data, f"seed {seed}", protocol.train_views, seed)
            for method in todo:
                bar.set_postfix_str(f"seed {seed} {method}")
                spec = protocol.methods[method]
                run_cfg = self.run_config(protocol, seed, spec)
                out = seed_dir / method
                method_maps = maps if spec.cached else None
                try:
                    result = self._run_method(
                        method, run_cfg, spec, data, plain, method_maps, protocol, out
                    )
                except (ValueError, RuntimeError) as err:  # e.g. a diverged run: NaN scores
                    log.error("%s seed %d %s failed: %s", name, seed, method, err)
                    (out / ERROR_FILE).write_text(
                        json.dumps({"method": method, "seed": seed, "error": str(err)})
                    )
                else:
                    (out / ERROR_FILE).unlink(missing_ok=True)
                    closed = result["report"]["closed_set"]
                    log.info(
                        "%s seed %d %s: top-1 %.3f few %s (train %.0f s)",
                        name,
                        seed,
                        method,
                        closed["overall"],
                        _fmt(closed["few"]),
                        result["train_seconds"],
                    )
                bar.update()
        bar.close()

    def _done(self, protocol: str, seed: int, method: str) -> bool:
        return (self.work / protocol / f"seed{seed}" / method / RESULT_FILE).is_file()

    def _new_plain(self, cfg: FitConfig, data: SeedData) -> OLTRNet:
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model,
            num_classes=len(data.class_names),
            input_size=cfg.data.input_size,
            stage="plain",
        )
        return model.to(self.device)

    def _branch(self, plain: OLTRNet, cfg: FitConfig, data: SeedData) -> OLTRNet:
        """A copy of the shared stage-1 model built from the method's own model config (so that
        its stage-2 options -- attention, memory, squashing ... -- apply in to_oltr)."""
        model = build_model(
            cfg.model,
            num_classes=len(data.class_names),
            input_size=cfg.data.input_size,
            stage="plain",
            load_pretrained=False,
        )
        model.load_state_dict(plain.state_dict())
        return model.to(self.device)

    def _pretrained_maps(
        self, name: str, protocol: ProtocolSpec, cfg: FitConfig, data: SeedData
    ) -> dict[str, Dataset]:
        """The frozen pretrained backbone's maps of every set, kept on disk across runs.

        They depend only on the protocol's fit overrides, its views, the data sizes and the
        split seed (the key of the file), not on the training seed."""
        key = json.dumps(
            [protocol.fit, protocol.train_views, self.bench.data.model_dump(), protocol.dataset]
            + [self.bench.closed.model_dump(), self.bench.split_seed]
        )
        path = self.work / "maps" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if not path.is_file():
            pretrained = self._new_plain(cfg, data)
            maps = self._maps(
                pretrained, cfg, data, "pretrained", protocol.train_views, self.bench.split_seed
            )
            with atomic_file(path) as handle:  # "train" is train_eval itself without views
                torch.save({n: _arrays(m) for n, m in maps.items()}, handle)
            return maps
        log.info("loading the cached %s feature maps from %s", name, path)
        stored = torch.load(path, weights_only=True)
        return {n: _dataset(n, *arrays) for n, arrays in stored.items()}

    def _maps(
        self, model: OLTRNet, cfg: FitConfig, data: SeedData, what: str, views: int, seed: int
    ) -> dict[str, Dataset]:
        """Cached maps of every set; ``train`` holds augmented views (or the clean maps)."""
        started = time.monotonic()
        names = ["train_eval", *(n for n in data.eval_names if n != "train_eval")]
        batch, workers = cfg.eval.batch_size, cfg.data.num_workers
        features = BackboneFeatures(model, self.device)
        maps: dict[str, Dataset] = {
            n: compute_maps(
                features,
                data.sets[n],
                batch_size=batch,
                desc=f"{what} {n}",
                num_workers=workers,
            )
            for n in names
        }
        maps["train"] = maps["train_eval"]
        if views:
            torch.manual_seed(seed)
            maps["train"] = compute_views(
                features, data.train, views=views, batch_size=batch, num_workers=workers
            )
        log.info(
            "cached %s feature maps of %d images in %.0f s",
            what,
            sum(len(m) for n, m in maps.items() if n != "train") + views * len(data.train),
            time.monotonic() - started,
        )
        return maps

    def _shared_stage1(
        self, cfg: FitConfig, data: SeedData, seed_dir: Path, maps: dict | None
    ) -> OLTRNet:
        model = self._new_plain(cfg, data)
        run_dir = seed_dir / "stage1"
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        started = time.monotonic()
        self._stage1(model, cfg, data, run_dir / "checkpoints" / "stage1.pt", maps)
        log.info("stage 1 (seed %d) took %.0f s", cfg.seed, time.monotonic() - started)
        return model

    def _stage1(self, model, cfg, data, checkpoint, maps) -> None:
        extra = checkpoint_extra(cfg, data.class_names, data.train_counts, "plain")
        if maps is None:
            train_stage1(model, data.train, cfg, self.device, checkpoint, extra)
            return
        with backbone_bypassed(model):
            train_stage1(model, maps["train"], cfg, self.device, checkpoint, extra, cached=True)

    def _run_method(
        self,
        name: str,
        cfg: FitConfig,
        spec: MethodSpec,
        data: SeedData,
        plain: OLTRNet | None,
        maps: dict[str, Dataset] | None,
        protocol: ProtocolSpec,
        out: Path,
    ) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        torch.manual_seed(cfg.seed * 7919 + zlib.crc32(name.encode()) % 7919)
        started = time.monotonic()
        if spec.kind == "probe":
            return self._run_probe(name, cfg, spec, data, maps, out, started)
        if spec.kind == "scratch":
            model = self._new_plain(cfg, data)
            stage1_maps = maps if protocol.cache_stage1 else None
            self._stage1(model, cfg, data, out / "stage1.pt", stage1_maps)
            maps = stage1_maps
        else:
            model = self._branch(plain, cfg, data)
        if spec.kind == "oltr":
            model.to_oltr()
        extra = checkpoint_extra(cfg, data.class_names, data.train_counts, model.stage)
        sets = maps if maps is not None else data.sets
        with backbone_bypassed(model) if maps is not None else nullcontext():
            if spec.kind == "classifier":
                train_set = maps["train"] if maps is not None else data.train
                train_classifier(
                    model,
                    train_set,
                    cfg,
                    self.device,
                    out / "head.pt",
                    extra,
                    reinit=spec.reinit,
                    cached=maps is not None,
                )
            elif spec.kind == "oltr":
                train_set = maps["train"] if maps is not None else data.train
                train_oltr(
                    model,
                    train_set,
                    sets["train_eval"],
                    cfg,
                    self.device,
                    out / "head.pt",
                    extra,
                    cached=maps is not None,
                )
            train_seconds = time.monotonic() - started
            started = time.monotonic()
            workers = 0 if maps is not None else cfg.data.num_workers
            names = dict.fromkeys([*data.eval_names, "train_eval"])  # train_eval: diagnostics
            outs = run_sets(
                model, {n: sets[n] for n in names}, self.device, cfg.eval.batch_size, workers
            )
        (out / "head.pt").unlink(missing_ok=True)
        shift = None
        if spec.kind == "posthoc":
            shift = LossWeights.for_stage(data.train_counts, spec.tau).logit_shift.numpy()
        centroids = model.centroids.detach().cpu().numpy() if model.centroids is not None else None
        return _save_result(
            out,
            outs,
            cfg,
            data,
            name,
            spec,
            shift=shift,
            centroids=centroids,
            model_config=model.cfg.model_dump(mode="json"),
            cached=maps is not None,
            train_seconds=train_seconds,
            eval_started=started,
        )

    def _run_probe(
        self,
        name: str,
        cfg: FitConfig,
        spec: MethodSpec,
        data: SeedData,
        maps: dict[str, Dataset] | None,
        out: Path,
        started: float,
    ) -> dict[str, Any]:
        """A probe baseline fitted on the pooled clean training maps, scored like a model."""
        if maps is None or spec.probe is None:
            raise ValueError(f"probe method {name!r} needs the protocol's cached maps")
        names = dict.fromkeys([*data.eval_names, "train_eval"])
        pooled = {n: maps[n].maps.mean(dim=(2, 3)).double().numpy() for n in names}
        labels = {n: np.asarray(maps[n].labels) for n in names}
        probe = Probe(spec.probe, spec.k, seed=cfg.seed).fit(
            pooled["train_eval"], labels["train_eval"]
        )
        train_seconds = time.monotonic() - started
        outs = probe_outputs(probe, pooled, labels)
        means = class_means(pooled["train_eval"], labels["train_eval"], len(data.class_names))
        return _save_result(
            out,
            outs,
            cfg,
            data,
            name,
            spec,
            shift=None,
            centroids=means,
            model_config={"probe": spec.probe, "k": spec.k},
            cached=True,
            train_seconds=train_seconds,
            eval_started=time.monotonic(),
        )


def _save_result(
    out: Path,
    outs: dict[str, dict[str, np.ndarray]],
    cfg: FitConfig,
    data: SeedData,
    name: str,
    spec: MethodSpec,
    *,
    shift: np.ndarray | None,
    centroids: np.ndarray | None,
    model_config: dict[str, Any],
    cached: bool,
    train_seconds: float,
    eval_started: float,
) -> dict[str, Any]:
    """Report, diagnostics and scores of one run, written to ``out``; returns result.json."""
    rep, scored_sets = report(outs, cfg, data.train_counts, shift)
    result = {
        "method": name,
        "title": spec.title,
        "kind": spec.kind,
        "seed": cfg.seed,
        "class_names": data.class_names,
        "model_config": model_config,
        "train_counts": data.train_counts,
        "stage2_on_cached_maps": cached,
        "report": rep,
        "diagnostics": diagnostics(outs, centroids),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.monotonic() - eval_started, 1),
    }
    arrays = {f"{s}/{k}": v for s, ss in scored_sets.items() for k, v in ss.scores.items()}
    for set_name, ss in scored_sets.items():
        arrays |= {f"{set_name}/preds": ss.preds, f"{set_name}/labels": ss.labels}
    np.savez_compressed(out / SCORES_FILE, **arrays)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def _arrays(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors of a cached-map dataset, for torch.save."""
    maps = dataset.views if isinstance(dataset, ViewMapDataset) else dataset.maps
    return maps, torch.tensor(dataset.labels)


def _dataset(name: str, maps: torch.Tensor, labels: torch.Tensor) -> Dataset:
    """A cached-map dataset back from :func:`_arrays` (``train`` may hold augmented views)."""
    if name == "train" and maps.ndim == 5:
        return ViewMapDataset(maps, labels.tolist())
    return MapDataset(maps, labels.tolist())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def load_results(work: Path, protocol: str) -> list[dict[str, Any]]:
    """Every finished run of ``protocol`` under ``work``."""
    return [
        json.loads(p.read_text()) for p in sorted((work / protocol).glob(f"seed*/*/{RESULT_FILE}"))
    ]


def load_errors(work: Path, protocol: str) -> list[dict[str, Any]]:
    """Runs of ``protocol`` that failed (and have not succeeded since)."""
    paths = sorted((work / protocol).glob(f"seed*/*/{ERROR_FILE}"))
    return [json.loads(p.read_text()) for p in paths]


def load_scores(work: Path, protocol: str, seed: int, method: str) -> dict[str, np.ndarray]:
    """The saved scores of one run: ``"<set>/<score>" -> array``."""
    with np.load(work / protocol / f"seed{seed}" / method / SCORES_FILE) as npz:
        return {k: npz[k] for k in npz.files}
