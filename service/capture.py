"""Capture: keep the images the service flags unknown, for discovery and enrolment.

One flat folder (``OLTR_CAPTURE_DIR``): ``<sha256 of the bytes>.<ext>``, the upload as sent
(``ext`` from the format Pillow detects), and ``<sha256>.json``, its sidecar (:data:`FIELDS`).
Every file is written atomically (temp file + ``os.replace``), the image first and the sidecar
last; deleting goes the other way round. A sidecar therefore always has its image, and listing
reads sidecars only. The same bytes again keep one image and only refresh the sidecar.

Writing happens on one background thread (:class:`CaptureWriter`) fed by a bounded queue, so a
slow or broken disk never delays or fails a ``/classify`` answer: what cannot be written is
logged (once per kind of failure) and counted as ``oltr_captured_images_total{result="failed"}``.
Over ``OLTR_CAPTURE_MAX_BYTES`` the oldest captures are deleted. The byte count is kept by the
process that writes, so a folder belongs to one service process.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import logging
import os
import queue
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from oltr_contract.atomic import write_bytes_atomic
from service import metrics
from service.errors import CaptureNotFound, CaptureUnavailable
from service.logs import REQUEST_ID

log = logging.getLogger("oltr.service")

CAPTURE_ID = re.compile(r"^[0-9a-f]{64}$")
SIDECAR = ".json"
FIELDS = (
    "id",
    "received",
    "filename",
    "content_type",
    "label",
    "confidence",
    "reachability",
    "score",
    "unknown_score",
    "threshold",
    "nearest_class",
    "model_version",
    "request_id",
)
"""The sidecar's keys, in order. ``nearest_class`` is the name of the class whose centroid is
nearest (the model's ``nearest_class`` output), ``label`` the most probable class."""
_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif", "MPO": "jpg"}
_MAX_FILENAME = 255
MAX_PENDING = 256
MAX_PENDING_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CaptureRecord:
    """What the service knew about one unknown image when it answered (the sidecar less
    ``id`` and ``received``)."""

    filename: str | None
    content_type: str | None
    label: str
    confidence: float
    reachability: float
    score: float
    unknown_score: str
    threshold: float
    nearest_class: str
    model_version: str
    request_id: str


def now_iso() -> str:
    """The current time, ISO 8601 UTC with milliseconds (``2026-12-01T20:30:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def image_extension(data: bytes) -> str:
    """File extension for image ``data`` from the format Pillow detects (``img`` if none)."""
    try:
        fmt = Image.open(io.BytesIO(data)).format or ""
    except Exception:  # noqa: BLE001 -- only decodable images reach capture; be safe anyway
        fmt = ""
    return _EXTENSIONS.get(fmt, fmt.lower() or "img")


@dataclass
class _Entry:
    image: str
    size: int  # image + sidecar bytes


class CaptureStore:
    """The capture folder: write, list, find and delete captures (thread-safe)."""

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._opened = False

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def open(self) -> None:
        """Create the folder, prove it writable, index what is there; raises OSError."""
        with self._lock:
            self._open()

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / ".write-probe", b"ok")
        (self.folder / ".write-probe").unlink()
        self._index.clear()
        for sidecar in sorted(self._sidecars(), key=lambda e: (e.stat().st_mtime_ns, e.name)):
            capture_id = sidecar.name[: -len(SIDECAR)]
            image = self._image_of(capture_id)
            if image is not None:
                size = sidecar.stat().st_size + image.stat().st_size
                self._index[capture_id] = _Entry(image.name, size)
        self._remove_leftovers()
        self._bytes = sum(e.size for e in self._index.values())
        metrics.CAPTURE_BYTES.set(self._bytes)
        self._opened = True

    def _remove_leftovers(self) -> None:
        """Delete what a crash can leave: temp files, and images whose sidecar never came."""
        for path in self.folder.iterdir():
            stem = path.name.partition(".")[0]
            temp = path.name.startswith(".") and path.name.endswith(".tmp")
            orphan = CAPTURE_ID.match(stem) is not None and stem not in self._index
            if (temp or orphan) and path.is_file():
                path.unlink(missing_ok=True)

    def keep(self, data: bytes, record: CaptureRecord, received: str | None = None) -> str:
        """Write ``data`` and its sidecar (or refresh the sidecar of the same bytes), evict the
        oldest captures over the cap; returns the capture id. Raises OSError, or ValueError
        for an image larger than the whole cap."""
        capture_id = hashlib.sha256(data).hexdigest()
        doc = {"id": capture_id, "received": received or now_iso(), **asdict(record)}
        sidecar = json.dumps({k: doc[k] for k in FIELDS}, ensure_ascii=False).encode()
        if len(data) + len(sidecar) > self.max_bytes:
            raise ValueError(f"{len(data)} bytes: larger than OLTR_CAPTURE_MAX_BYTES")
        with self._lock:
            if not self._opened:
                self._open()
            old = self._index.get(capture_id)
            image = old.image if old else f"{capture_id}.{image_extension(data)}"
            if old is None or not (self.folder / image).is_file():
                write_bytes_atomic(self.folder / image, data)
            write_bytes_atomic(self.folder / f"{capture_id}{SIDECAR}", sidecar)
            self._index.pop(capture_id, None)  # re-inserted last: the newest
            self._index[capture_id] = _Entry(image, len(data) + len(sidecar))
            self._bytes += len(data) + len(sidecar) - (old.size if old else 0)
            self._evict()
            metrics.CAPTURE_BYTES.set(self._bytes)
        return capture_id

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._index) > 1:
            oldest = next(iter(self._index))
            self._delete(oldest)
            metrics.CAPTURE_EVICTED.inc()

    def _delete(self, capture_id: str) -> None:
        entry = self._index.pop(capture_id)
        (self.folder / f"{capture_id}{SIDECAR}").unlink(missing_ok=True)  # sidecar first
        (self.folder / entry.image).unlink(missing_ok=True)
        self._bytes -= entry.size

    def remove(self, capture_id: str) -> bool:
        """Delete one capture (sidecar first); False when there is no such capture."""
        try:
            path: Path | None = self.path_of(capture_id)
        except CaptureNotFound:
            path = None
        with self._lock:
            if capture_id in self._index:
                self._delete(capture_id)
            elif path is not None:  # written by an earlier process, not yet indexed
                (self.folder / f"{capture_id}{SIDECAR}").unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            else:
                return False
            metrics.CAPTURE_BYTES.set(self._bytes)
        return True

    def list(self, limit: int = 100, offset: int = 0) -> tuple[int, builtins.list[dict[str, Any]]]:
        """(total, sidecars newest first from ``offset``, at most ``limit``)."""
        try:
            found = [(e.stat().st_mtime_ns, e.name, e) for e in self._sidecars()]
        except FileNotFoundError:
            return 0, []
        except OSError as err:
            raise CaptureUnavailable(
                f"cannot read the capture folder {self.folder}: {err}"
            ) from err
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        items = []
        for _, _, entry in found[offset : offset + limit]:
            try:
                items.append(json.loads(Path(entry.path).read_bytes()))
            except (OSError, ValueError):  # deleted or evicted meanwhile
                continue
        return len(found), items

    def path_of(self, capture_id: str) -> Path:
        """The image of capture ``capture_id``; CaptureNotFound for a malformed id or none."""
        image = self._image_of(capture_id) if CAPTURE_ID.match(capture_id) else None
        if image is None or not (self.folder / f"{capture_id}{SIDECAR}").is_file():
            raise CaptureNotFound(f"no capture {capture_id[:80]!r}")
        return image

    def _sidecars(self) -> builtins.list[os.DirEntry[str]]:
        with os.scandir(self.folder) as entries:
            return [
                e
                for e in entries
                if e.name.endswith(SIDECAR) and CAPTURE_ID.match(e.name[: -len(SIDECAR)])
            ]

    def _image_of(self, capture_id: str) -> Path | None:
        for path in self.folder.glob(f"{capture_id}.*"):
            if path.suffix != SIDECAR:
                return path
        return None


class CaptureWriter:
    """Samples unknown images and writes them on one background thread; :meth:`offer` never
    blocks or raises (a full queue or a failed write is logged once per kind and counted)."""

    def __init__(
        self,
        store: CaptureStore,
        sample_rate: float,
        *,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.sample_rate = sample_rate
        self._draw = draw
        self._queue: queue.Queue[tuple[bytes, CaptureRecord, str] | None] = queue.Queue()
        self._pending = 0
        self._pending_bytes = 0
        self._count_lock = threading.Lock()
        self._logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="oltr-capture", daemon=True)
        self._thread.start()

    def offer(self, data: bytes, record: CaptureRecord) -> None:
        """Keep ``data`` with probability ``sample_rate``: queue it for writing."""
        if self._draw() >= self.sample_rate:
            metrics.CAPTURED.labels(result="sampled_out").inc()
            return
        with self._count_lock:
            full = (
                self._pending >= MAX_PENDING or self._pending_bytes + len(data) > MAX_PENDING_BYTES
            )
            if not full:
                self._pending += 1
                self._pending_bytes += len(data)
        if full:
            self._failed("queue_full", "capture writer queue full (disk too slow?)")
            return
        self._queue.put((data, record, now_iso()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to ``timeout_s``), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("capture: %d images still queued at shutdown were dropped", self._pending)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, record, received = item
            token = REQUEST_ID.set(record.request_id)  # log lines name the request
            try:
                self.store.keep(data, record, received)
                metrics.CAPTURED.labels(result="kept").inc()
            except OSError as err:
                kind = errno.errorcode.get(err.errno or 0, type(err).__name__)
                self._failed(kind, f"cannot write to {self.store.folder}: {err}")
            except ValueError as err:
                self._failed("too_large", str(err))
            except Exception as err:  # noqa: BLE001 -- the writer thread must keep running
                self._failed(type(err).__name__, f"unexpected error: {err!r}")
            finally:
                REQUEST_ID.reset(token)
                with self._count_lock:
                    self._pending -= 1
                    self._pending_bytes -= len(data)

    def _failed(self, kind: str, message: str) -> None:
        metrics.CAPTURED.labels(result="failed").inc()
        if kind not in self._logged:
            self._logged.add(kind)
            log.error(
                "capture failed (%s): %s; further %s failures are only counted in "
                'oltr_captured_images_total{result="failed"}',
                kind,
                message,
                kind,
            )
