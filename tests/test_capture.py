"""The capture folder itself (service.capture): layout, sidecars, refresh, size cap, atomic
order, ids, re-opening, the background writer's sampling and failures. Real files, real images,
the real writer thread; the service-level behaviour is in test_service_capture.py."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from _service_fixtures import mnist_digits, solid
from prometheus_client import REGISTRY

from service import metrics
from service.capture import (
    FIELDS,
    CaptureRecord,
    CaptureStore,
    CaptureWriter,
    image_extension,
)
from service.config import SettingsError, load_settings
from service.errors import CaptureNotFound

RECORD = CaptureRecord(
    filename="seven.png",
    content_type="image/png",
    label="1",
    confidence=0.5,
    reachability=1.25,
    score=0.75,
    unknown_score="combined",
    threshold=0.9,
    nearest_class="2",
    model_version="abc123",
    request_id="req-1",
)


def _digits(n: int) -> list[bytes]:
    return [data for data, _ in mnist_digits(range(6, 10), per_digit=(n + 3) // 4)][:n]


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    s = CaptureStore(tmp_path / "captures", max_bytes=10 * 1024 * 1024)
    s.open()
    return s


def test_keep_writes_the_bytes_as_sent_and_the_sidecar(store: CaptureStore) -> None:
    data = _digits(1)[0]
    capture_id = store.keep(data, RECORD, received="2026-12-01T10:00:00.000Z")
    image = store.path_of(capture_id)
    assert image.name == f"{capture_id}.png" and image.read_bytes() == data
    sidecar = json.loads((store.folder / f"{capture_id}.json").read_text())
    assert list(sidecar) == list(FIELDS)
    assert sidecar["id"] == capture_id and sidecar["received"] == "2026-12-01T10:00:00.000Z"
    assert sidecar["filename"] == "seven.png" and sidecar["nearest_class"] == "2"
    assert sidecar["request_id"] == "req-1" and sidecar["score"] == 0.75
    assert store.total_bytes == sum(_files(store.folder).values())
    assert _sample("oltr_capture_bytes", {}) == store.total_bytes


def test_the_extension_is_the_detected_format_not_the_name() -> None:
    assert image_extension(solid((1, 2, 3), fmt="JPEG")) == "jpg"
    assert image_extension(solid((1, 2, 3), fmt="GIF")) == "gif"
    assert image_extension(solid((1, 2, 3), fmt="WEBP")) == "webp"
    assert image_extension(b"not an image") == "img"


def test_same_bytes_again_only_refresh_the_sidecar(store: CaptureStore) -> None:
    data = _digits(1)[0]
    first = store.keep(data, RECORD, received="2026-12-01T10:00:00.000Z")
    image_mtime = store.path_of(first).stat().st_mtime_ns
    again = store.keep(data, RECORD, received="2026-12-01T11:00:00.000Z")
    assert again == first and len(_files(store.folder)) == 2
    assert store.path_of(first).stat().st_mtime_ns == image_mtime  # image not rewritten
    total, items = store.list()
    assert total == 1 and items[0]["received"] == "2026-12-01T11:00:00.000Z"
    assert store.total_bytes == sum(_files(store.folder).values())


def test_list_is_newest_first_and_pages(store: CaptureStore) -> None:
    ids = []
    for i, data in enumerate(_digits(5)):
        ids.append(store.keep(data, RECORD, received=f"2026-12-01T10:00:0{i}.000Z"))
        time.sleep(0.01)  # distinct modification times
    total, items = store.list(limit=2, offset=1)
    assert total == 5 and [it["id"] for it in items] == [ids[3], ids[2]]
    assert [it["id"] for it in store.list()[1]] == ids[::-1]


def test_over_the_cap_the_oldest_captures_go(tmp_path: Path) -> None:
    digits = _digits(6)
    probe = CaptureStore(tmp_path / "probe", max_bytes=10**9)
    sizes = [probe.keep(d, RECORD) and probe.total_bytes for d in digits]
    per_capture = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    cap = sum(per_capture[-3:])  # exactly the newest three fit
    store = CaptureStore(tmp_path / "captures", max_bytes=cap)
    evicted = _sample("oltr_capture_evicted_images_total", {})
    ids = [store.keep(d, RECORD) for d in digits]
    assert _sample("oltr_capture_evicted_images_total", {}) - evicted == 3
    assert [it["id"] for it in store.list()[1]] == ids[:2:-1]
    assert sum(_files(store.folder).values()) == store.total_bytes <= cap
    for gone in ids[:3]:
        with pytest.raises(CaptureNotFound):
            store.path_of(gone)


def test_an_image_bigger_than_the_cap_is_refused_whole(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=1000)
    with pytest.raises(ValueError, match="larger than"):
        store.keep(b"x" * 2000, RECORD)
    assert not store.folder.exists() or _files(store.folder) == {}


def test_no_sidecar_without_its_image(store: CaptureStore) -> None:
    """The image is written first: when it cannot be, no sidecar appears."""
    data = _digits(1)[0]
    blocked = store.folder / f"{hashlib.sha256(data).hexdigest()}.png"
    blocked.mkdir()  # os.replace onto a folder fails: a real OSError while writing the image
    with pytest.raises(OSError):
        store.keep(data, RECORD)
    assert [p.name for p in store.folder.iterdir()] == [blocked.name]
    assert store.list() == (0, [])


def test_a_reader_never_sees_a_sidecar_without_its_image(store: CaptureStore) -> None:
    digits = _digits(120)
    seen: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for sidecar in store.folder.glob("*.json"):
                try:
                    json.loads(sidecar.read_text())
                    store.path_of(sidecar.stem)
                    seen.append(sidecar.stem)
                except FileNotFoundError:
                    pass  # sidecar deleted between the glob and the read: not a problem
                except (CaptureNotFound, ValueError) as err:
                    problems.append(f"{sidecar.name}: {err!r}")

    reader = threading.Thread(target=read)
    reader.start()
    for data in digits:
        store.keep(data, RECORD)
    done.set()
    reader.join()
    assert not problems and seen
    assert not [p for p in store.folder.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 64 + ".json"],
)
def test_malformed_ids_are_not_found(store: CaptureStore, bad: str) -> None:
    (store.folder.parent / "secret.txt").write_text("no")
    with pytest.raises(CaptureNotFound):
        store.path_of(bad)
    assert store.remove(bad) is False


def test_remove_deletes_both_files(store: CaptureStore) -> None:
    a, b = (store.keep(d, RECORD) for d in _digits(2))
    assert store.remove(a) is True and store.remove(a) is False
    assert store.list()[0] == 1 and sorted(_files(store.folder)) == [f"{b}.json", f"{b}.png"]
    assert store.total_bytes == sum(_files(store.folder).values())


def test_reopening_counts_what_is_there_and_clears_crash_leftovers(store: CaptureStore) -> None:
    kept = [store.keep(d, RECORD) for d in _digits(3)]
    (store.folder / ".x.png.abc.tmp").write_bytes(b"half")  # a write cut off by a crash
    orphan = store.folder / ("f" * 64 + ".png")  # image whose sidecar never came
    orphan.write_bytes(_digits(4)[3])
    again = CaptureStore(store.folder, max_bytes=store.max_bytes)
    again.open()
    assert again.total_bytes == store.total_bytes
    assert sorted(p.stem for p in again.folder.glob("*.json")) == sorted(kept)
    assert not orphan.exists() and not (store.folder / ".x.png.abc.tmp").exists()


def test_open_fails_on_a_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OSError):
        CaptureStore(tmp_path / "file" / "captures", max_bytes=10**6).open()


def test_the_writer_samples_and_counts(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=10**8)
    writer = CaptureWriter(store, 0.5)
    before = {
        r: _sample("oltr_captured_images_total", {"result": r}) for r in metrics.CAPTURE_RESULTS
    }
    digits = _digits(80)
    for data in digits:
        writer.offer(data, RECORD)
    writer.close()
    delta = {
        r: _sample("oltr_captured_images_total", {"result": r}) - before[r]
        for r in metrics.CAPTURE_RESULTS
    }
    assert delta["failed"] == 0 and delta["kept"] + delta["sampled_out"] == len(digits)
    assert 20 <= delta["kept"] <= 60  # Binomial(80, 0.5): outside this range p < 1e-5
    assert store.list()[0] == delta["kept"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_failing_folder_is_counted_and_logged_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    writer = CaptureWriter(CaptureStore(tmp_path / "file" / "c", max_bytes=10**6), 1.0)
    before = _sample("oltr_captured_images_total", {"result": "failed"})
    records = _Records()
    logging.getLogger("oltr.service").addHandler(records)
    try:
        for data in _digits(4):
            writer.offer(data, RECORD)
        writer.close()
    finally:
        logging.getLogger("oltr.service").removeHandler(records)
    assert _sample("oltr_captured_images_total", {"result": "failed"}) - before == 4
    errors = [m for m in records.messages if "capture failed" in m]
    assert len(errors) == 1 and "ENOTDIR" in errors[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("capture_sample_rate", 0), ("capture_sample_rate", 1.5), ("capture_max_bytes", 1000)],
)
def test_capture_settings_are_checked_by_name(field: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"OLTR_{field.upper()}"):
        load_settings(**{field: value})
    assert load_settings(capture_dir="/tmp/x").capture_sample_rate == 1.0
    assert load_settings().capture_dir is None  # off by default
