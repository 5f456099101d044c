"""Discover new classes among captured (or any) images: embed them with the served model, group
the embeddings, and write each group as a class folder with a contact sheet.

Images are decoded exactly as ``/classify`` decodes them (:mod:`service.preprocessing`), run
through the ONNX model's ``embedding`` output in batches, L2-normalised and grouped by
scikit-learn's average-linkage agglomerative clustering on cosine distance. The tree is cut
at ``relative_cut`` times the median pairwise distance of the images, so one default suits
models whose embeddings spread differently (docs/ARCHITECTURE.md: the measurements behind it,
and why not HDBSCAN). Groups smaller than ``min_group_size`` are left ungrouped.
Used by ``python -m service.discover`` and ``GET /admin/captures/groups``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from oltr_contract.artifact import INPUT_NAME
from service.capture import CAPTURE_ID, SIDECAR
from service.config import DEFAULT_MAX_IMAGE_PIXELS
from service.errors import ServiceError
from service.pixels import to_rgb
from service.preprocessing import PreprocessSpec, decode, image_to_input

Method = Literal["agglomerative", "hdbscan"]
RELATIVE_CUT = 0.8
"""Default cut of the average-linkage tree, as a share of the median pairwise cosine distance
(measured best-or-near-best for new digits under the default model and new CIFAR-10 classes
under a Lite0 photos model)."""
MEDIAN_SAMPLE = 2000
MIN_GROUP_SIZE = 3
BATCH_SIZE = 64
THUMB = 96
SHEET_COLUMNS = 10
SHEET_MAX_IMAGES = 100
EMBEDDING = "embedding"


class Embedder(Protocol):
    """What discovery needs of a model: the service's :class:`~service.predictor.Predictor`."""

    @property
    def session(self) -> Any: ...

    @property
    def preprocess_spec(self) -> PreprocessSpec: ...

    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


@dataclass
class Discovery:
    """The grouping of the images of ``folder``: ``labels[i]`` is the group (1, 2, ..., biggest
    first) of ``files[i]``, 0 when it is in no group."""

    folder: Path
    model_version: str
    files: list[Path]
    labels: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [image_id(path, self.folder) for path in self.files]

    def groups(self) -> list[list[int]]:
        """Indices into ``files`` of each group, group 1 first."""
        count = int(self.labels.max(initial=0))
        return [np.flatnonzero(self.labels == g).tolist() for g in range(1, count + 1)]

    def ungrouped(self) -> list[int]:
        return np.flatnonzero(self.labels == 0).tolist()

    def summary(self) -> dict[str, Any]:
        """``{"model_version", "groups": [{"group", "size", "ids"}], "ungrouped": [ids]}``."""
        ids = self.ids
        return {
            "model_version": self.model_version,
            "groups": [
                {"group": n, "size": len(members), "ids": [ids[i] for i in members]}
                for n, members in enumerate(self.groups(), start=1)
            ],
            "ungrouped": [ids[i] for i in self.ungrouped()],
        }


def image_id(path: Path, folder: Path) -> str:
    """A capture's id (its file stem) for capture files, else the path relative to ``folder``."""
    return path.stem if CAPTURE_ID.match(path.stem) else path.relative_to(folder).as_posix()


def candidate_files(folder: Path) -> list[Path]:
    """Every visible file below ``folder`` (sorted) except capture sidecars: each is tried as an
    image, so a file that is none is reported as skipped, not silently left out."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in files if not f.startswith(".") and _not_sidecar(f)]
    return sorted(found)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _not_sidecar(name: str) -> bool:
    return not (name.endswith(SIDECAR) and CAPTURE_ID.match(name[: -len(SIDECAR)]))


def _load(path: Path, spec: PreprocessSpec) -> np.ndarray | str:
    """The model input of one file, or the reason it cannot be one."""
    try:
        return image_to_input(path.read_bytes(), spec, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    except ServiceError as err:
        return err.message
    except OSError as err:
        return f"unreadable: {err.strerror or err}"


def embed_files(
    model: Embedder,
    files: Sequence[Path],
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> tuple[np.ndarray, list[Path], list[Skipped]]:
    """(L2-normalised embeddings [n, D], the files they belong to, the files skipped)."""
    spec = model.preprocess_spec
    kept: list[Path] = []
    skipped: list[Skipped] = []
    chunks: list[np.ndarray] = []
    bar = tqdm(total=len(files), unit="img", desc="embedding", disable=not progress)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool, bar:
        for batch in _batches(files, batch_size):
            inputs = []
            for path, item in zip(batch, pool.map(lambda p: _load(p, spec), batch), strict=True):
                if isinstance(item, str):
                    skipped.append(Skipped(str(path), item))
                else:
                    inputs.append(item)
                    kept.append(path)
            if inputs:
                (emb,) = model.session.run([EMBEDDING], {INPUT_NAME: np.stack(inputs)})
                chunks.append(np.asarray(emb, dtype=np.float64))
            bar.update(len(batch))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 1))
    return l2_normalise(embeddings), kept, skipped


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    normalised: np.ndarray = x / np.maximum(norms, 1e-12)
    return normalised


def cluster(
    embeddings: np.ndarray,
    *,
    method: Method = "agglomerative",
    relative_cut: float = RELATIVE_CUT,
    min_group_size: int = MIN_GROUP_SIZE,
) -> np.ndarray:
    """Group labels 1..G (biggest group first) per row, 0 for rows in no group of at least
    ``min_group_size``."""
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering  # slow import: on first use

    n = len(embeddings)
    if n < max(2, min_group_size):
        return np.zeros(n, dtype=np.int64)
    if method == "hdbscan":
        raw = HDBSCAN(min_cluster_size=max(2, min_group_size), copy=True).fit_predict(embeddings)
    else:
        raw = AgglomerativeClustering(
            n_clusters=None,
            metric="cosine",
            linkage="average",
            distance_threshold=relative_cut * median_distance(embeddings),
        ).fit_predict(embeddings)
    return relabel(raw, min_group_size)


def median_distance(embeddings: np.ndarray) -> float:
    """Median cosine distance between two different rows (from a fixed sample of at most
    :data:`MEDIAN_SAMPLE` rows); a tiny positive number when all rows are the same."""
    from sklearn.metrics import pairwise_distances

    rows = embeddings
    if len(rows) > MEDIAN_SAMPLE:
        pick = np.random.default_rng(0).choice(len(rows), MEDIAN_SAMPLE, replace=False)
        rows = rows[pick]
    d = pairwise_distances(rows, metric="cosine")
    return max(float(np.median(d[np.triu_indices(len(d), 1)])), 1e-9)


def relabel(raw: np.ndarray, min_group_size: int) -> np.ndarray:
    """Renumber clusters 1.. by size (ties: first member first); small ones and noise -> 0."""
    sizes = [(int((raw == c).sum()), int(np.flatnonzero(raw == c)[0]), c) for c in set(raw)]
    kept = sorted(
        (s for s in sizes if s[2] >= 0 and s[0] >= min_group_size), key=lambda s: (-s[0], s[1])
    )
    labels = np.zeros(len(raw), dtype=np.int64)
    for number, (_, _, c) in enumerate(kept, start=1):
        labels[raw == c] = number
    return labels


def discover(
    folder: Path,
    model: Embedder,
    *,
    method: Method = "agglomerative",
    relative_cut: float = RELATIVE_CUT,
    min_group_size: int = MIN_GROUP_SIZE,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    max_images: int | None = None,
) -> Discovery:
    """Embed every image below ``folder`` (the ``max_images`` newest when given) with ``model``
    and group them."""
    folder = Path(folder)
    files = candidate_files(folder)
    if max_images is not None and len(files) > max_images:
        files = sorted(sorted(files, key=_mtime)[-max_images:])
    embeddings, kept, skipped = embed_files(model, files, batch_size=batch_size, progress=progress)
    labels = cluster(
        embeddings,
        method=method,
        relative_cut=relative_cut,
        min_group_size=min_group_size,
    )
    return Discovery(folder, model.version, kept, labels, skipped)


# -- output -------------------------------------------------------------------------------------


def write_groups(discovery: Discovery, out: Path, params: dict[str, Any]) -> Path:
    """Write ``out/group-NN/`` (copies of each group's images: a class folder),
    ``out/group-NN.png`` (contact sheets) and ``out/groups.json``; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = discovery.summary()
    for entry, members in zip(doc["groups"], discovery.groups(), strict=True):
        name = group_name(entry["group"], len(doc["groups"]))
        files = [discovery.files[i] for i in members]
        _copy_images(files, discovery.folder, out / name)
        contact_sheet(files, f"{name}: {len(files)} images").save(out / f"{name}.png")
        entry.update(folder=name, contact_sheet=f"{name}.png")
    doc.update(
        source=str(discovery.folder),
        params=params,
        images=len(discovery.files),
        skipped=[{"file": s.file, "reason": s.reason} for s in discovery.skipped],
    )
    path = out / "groups.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def group_name(number: int, count: int) -> str:
    """``group-01``...: zero-padded to at least two digits, to sort in order."""
    return f"group-{number:0{max(2, len(str(count)))}d}"


def _copy_images(files: Sequence[Path], source: Path, folder: Path) -> None:
    folder.mkdir()
    for path in files:
        shutil.copyfile(path, folder / path.relative_to(source).as_posix().replace("/", "__"))


def contact_sheet(files: Sequence[Path], title: str) -> Image.Image:
    """A grid of up to :data:`SHEET_MAX_IMAGES` thumbnails under a one-line title."""
    shown = files[:SHEET_MAX_IMAGES]
    columns = min(SHEET_COLUMNS, max(1, math.ceil(math.sqrt(len(shown)))))
    rows = max(1, math.ceil(len(shown) / columns))
    header = 20
    sheet = Image.new("RGB", (columns * THUMB, header + rows * THUMB), "white")
    more = f" (first {len(shown)})" if len(files) > len(shown) else ""
    ImageDraw.Draw(sheet).text((4, 4), title + more, fill="black")
    for i, path in enumerate(shown):
        thumb = ImageOps.contain(
            to_rgb(decode(path.read_bytes(), max_pixels=DEFAULT_MAX_IMAGE_PIXELS)), (THUMB, THUMB)
        )
        x, y = (i % columns) * THUMB, header + (i // columns) * THUMB
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
    return sheet
