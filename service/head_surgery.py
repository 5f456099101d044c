"""Add or remove a class in an exported OLTR graph by editing the head's constants.

An OLTR class is a few rows of constants in the head downstream of the ``embedding`` output
(v_direct): its centroid (in the distance computation and, with the memory on, in the memory
read), the hallucinator's row (memory on) and the cosine classifier's direction. Training's
export folds them into initializers whose names depend on the exporter, so they are found by
their *role* in the graph, not their names:

- ``distance_centroids``: the initializer with a class axis on the path from ``embedding`` to
  ``distance`` (``[1, K, D]`` raw centroids for the L2 metric, ``[D, K]`` unit centroids for
  cosine);
- ``hallucinator_weight`` / ``hallucinator_bias``: the Gemm with K outputs (``[K, D]``, ``[K]``);
- ``memory_centroids``: the MatMul reading the hallucinator's softmax (``[K, D]``);
- ``classifier``: the other class-axis initializer, the cosine classifier's unit weights
  (``[D, K]``); its other input is the unit meta-embedding (``classifier_input``).

A new class gets: its centroid in both centroid slots (unit length where the metric is cosine),
a hallucinator row that takes no share of the memory read (weight 0, bias
:data:`SILENT_BIAS`: its softmax share underflows to exactly 0, so v_memory and every old
class's logit stay as they were), and the imprinted classifier direction (Qi et al., CVPR 2018).
Removing the class deletes the same rows, which gives back the parent's constants exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

Role = Literal[
    "distance_centroids",
    "memory_centroids",
    "hallucinator_weight",
    "hallucinator_bias",
    "classifier",
]
Metric = Literal["l2", "cosine"]
FloatArray = npt.NDArray[np.float32]
SILENT_BIAS = -1.0e4
"""Hallucinator bias of an added class: exp(-1e4 - max) is 0 in float32."""


class HeadLayoutError(ValueError):
    """The graph's head is not the layout this module knows how to edit."""


@dataclass(frozen=True)
class Slot:
    """One class-indexed initializer: its name, role and class axis."""

    name: str
    role: Role
    axis: int


@dataclass(frozen=True)
class Head:
    """Where a graph keeps its classes: the slots, K, and the classifier's input tensor."""

    slots: tuple[Slot, ...]
    num_classes: int
    classifier_input: str

    def slot(self, role: Role) -> Slot | None:
        return next((s for s in self.slots if s.role == role), None)


@dataclass(frozen=True)
class NewClass:
    """What a class adds to the head: its centroid (v_direct space, raw) and its unit
    classifier direction (meta-embedding space)."""

    centroid: FloatArray
    direction: FloatArray


def locate_head(proto: onnx.ModelProto, num_classes: int) -> Head:
    """Find the class-indexed constants of ``proto``'s head; HeadLayoutError if they are not
    exactly the known layout."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {i.name: i for i in graph.initializer}
    head_nodes = _descendants(graph, "embedding")
    to_distance = _ancestors(producers, "distance")
    slots: list[Slot] = []
    classifier_input = ""
    for node in head_nodes:
        for index, name in enumerate(node.input):
            if name not in inits:
                continue
            axis = _class_axis(inits[name], num_classes)
            if axis is None:
                continue
            role = _role(node, index, to_distance, producers)
            if role == "classifier":
                classifier_input = node.input[1 - index]
            slots.append(Slot(name, role, axis))
    head = Head(tuple(slots), num_classes, classifier_input)
    _check_complete(head)
    return head


def _class_axis(init: onnx.TensorProto, k: int) -> int | None:
    if init.data_type != onnx.TensorProto.FLOAT:
        return None
    axes = [i for i, d in enumerate(init.dims) if d == k]
    if not axes:
        return None
    dims = list(init.dims)
    if len(axes) > 1 or len(dims) > 3 or (len(dims) == 3 and dims[0] != 1):
        raise HeadLayoutError(f"initializer {init.name!r} {dims}: class axis ambiguous for K={k}")
    return axes[0]


def _role(
    node: onnx.NodeProto, index: int, to_distance: set[str], producers: dict[str, onnx.NodeProto]
) -> Role:
    if node.op_type == "Gemm":
        return "hallucinator_weight" if index == 1 else "hallucinator_bias"
    if node.name in to_distance or any(out in to_distance for out in node.output):
        return "distance_centroids"
    other = producers.get(node.input[1 - index]) if node.op_type == "MatMul" else None
    if other is not None and other.op_type == "Softmax":
        return "memory_centroids"
    if node.op_type != "MatMul":
        raise HeadLayoutError(f"class-indexed constant feeds an unexpected {node.op_type} node")
    return "classifier"


def _check_complete(head: Head) -> None:
    roles: list[str] = [s.role for s in head.slots]
    for role in ("distance_centroids", "classifier"):
        if roles.count(role) != 1:
            raise HeadLayoutError(f"expected one {role} constant, found {roles.count(role)}")
    memory = ("memory_centroids", "hallucinator_weight", "hallucinator_bias")
    counts = {roles.count(r) for r in memory}
    if counts not in ({0}, {1}):
        raise HeadLayoutError(f"memory constants incomplete: {roles}")


def _descendants(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """Nodes downstream of ``tensor``, in graph (topological) order."""
    reached, nodes = {tensor}, []
    for node in graph.node:
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    if len(reached) == 1:
        raise HeadLayoutError(f"no node reads {tensor!r}: not an OLTR export")
    return nodes


def _ancestors(producers: dict[str, onnx.NodeProto], tensor: str) -> set[str]:
    """Output names of every node upstream of ``tensor`` (``tensor`` included)."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.update(node.output)
        stack.extend(node.input)
    return seen


def class_rows(new: NewClass, role: Role, metric: Metric) -> FloatArray:
    """The values a new class adds to the slot of ``role``, as a 1-D row."""
    centroid = np.asarray(new.centroid, dtype=np.float32)
    if role == "distance_centroids" and metric == "cosine":
        return unit(centroid)
    if role in ("distance_centroids", "memory_centroids"):
        return centroid
    if role == "hallucinator_weight":
        return np.zeros_like(centroid)
    if role == "hallucinator_bias":
        return np.array([SILENT_BIAS], dtype=np.float32)
    return unit(np.asarray(new.direction, dtype=np.float32))


def unit(v: FloatArray, eps: float = 1e-12) -> FloatArray:
    """``v / max(||v||, eps)`` in float32."""
    out: FloatArray = (v / max(float(np.linalg.norm(v)), eps)).astype(np.float32)
    return out


def unit_rows(x: FloatArray, eps: float = 1e-12) -> FloatArray:
    """Each row of ``x`` divided by max(its L2 norm, eps), in float32."""
    x = np.asarray(x, dtype=np.float32)
    out: FloatArray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    return out


def add_class(proto: onnx.ModelProto, head: Head, new: NewClass, metric: Metric) -> None:
    """Append ``new`` as class K (in place): one more row in every slot."""
    for slot in head.slots:
        row = class_rows(new, slot.role, metric)
        _edit(proto, slot.name, functools.partial(_append, axis=slot.axis, row=row))
    _reshape_outputs(proto, head.num_classes, head.num_classes + 1)


def remove_class(proto: onnx.ModelProto, head: Head, index: int) -> None:
    """Delete class ``index`` (in place) from every slot."""
    if not 0 <= index < head.num_classes:
        raise IndexError(f"class index {index} out of range for {head.num_classes} classes")
    for slot in head.slots:
        _edit(proto, slot.name, functools.partial(_delete, index=index, axis=slot.axis))
    _reshape_outputs(proto, head.num_classes, head.num_classes - 1)


def _reshape_outputs(proto: onnx.ModelProto, k_old: int, k_new: int) -> None:
    """Declare K = ``k_new`` where the head's shapes said ``k_old``: the class axis (the last)
    of the graph's outputs; the head's intermediate shape annotations are dropped (optional in
    ONNX; onnxruntime infers them again)."""
    head = {out for node in _descendants(proto.graph, "embedding") for out in node.output}
    kept = [v for v in proto.graph.value_info if v.name not in head]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].dim_value == k_old:
            dims[1].dim_value = k_new


def _delete(array: FloatArray, *, index: int, axis: int) -> FloatArray:
    out: FloatArray = np.delete(array, index, axis=axis)
    return out


def _append(array: FloatArray, *, axis: int, row: FloatArray) -> FloatArray:
    shape = list(array.shape)
    shape[axis] = 1
    if row.size != int(np.prod(shape)):
        raise HeadLayoutError(f"a new class row of {row.size} values does not fit shape {shape}")
    out: FloatArray = np.concatenate([array, row.reshape(shape)], axis=axis)
    return out


def _edit(proto: onnx.ModelProto, name: str, change: Callable[[FloatArray], FloatArray]) -> None:
    """Replace initializer ``name`` by ``change`` of its value."""
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), name))


def class_inputs_probe(proto: onnx.ModelProto, head: Head) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs the classifier's input (the unit meta-embedding),
    which imprinting averages."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(
        onnx.helper.make_tensor_value_info(head.classifier_input, onnx.TensorProto.FLOAT, None)
    )
    return probe


def imprint(
    embeddings: FloatArray,
    classifier_inputs: FloatArray,
    reference: FloatArray,
    trained_directions: FloatArray,
) -> NewClass:
    """A class from its examples. Centroid: the mean embedding (how training sets centroids).

    Direction: weight imprinting (Qi et al., CVPR 2018), the mean unit classifier input, with
    what every image shares taken out (the component along the training images' mean
    ``reference`` and along the trained classes' directions ``trained_directions`` [K, D]:
    centring as in SimpleShot, Wang et al. 2019), and then as much of the reference put back
    as the trained directions hold on average: ``d = b r + sqrt(1 - b^2) n`` with ``r`` the
    unit reference, ``n`` the unit centred mean and ``b = mean_k(w_k . r)``. So the new class
    scores the average image as the trained classes do: uncentred it outscores them on their
    own images (a model whose directions ignore the shared component, b near 0, as the
    embedded default); centred alone it never wins (a model whose directions carry it, b 0.87
    in the photos preset, whose classifier starts at the class means)."""
    if len(embeddings) == 0:
        raise ValueError("a class needs at least one example")
    units = unit_rows(classifier_inputs)
    basis = _orthonormal_span(np.column_stack([*trained_directions, reference]))
    mean = units.mean(axis=0).astype(np.float64)
    novel = unit((mean - basis @ (basis.T @ mean)).astype(np.float32))
    shared = unit(np.asarray(reference, dtype=np.float32))
    b = float(np.clip(np.mean(unit_rows(trained_directions) @ shared), -1.0, 1.0))
    direction = unit(b * shared + np.sqrt(1.0 - b * b) * novel)
    return NewClass(
        centroid=np.asarray(embeddings, dtype=np.float32).mean(axis=0), direction=direction
    )


def _orthonormal_span(
    columns: npt.NDArray[np.floating], rtol: float = 1e-6
) -> npt.NDArray[np.float64]:
    """An orthonormal basis [D, r] of the span of ``columns`` [D, n] (rank-aware: dependent
    columns add nothing, where a QR factor would add an arbitrary direction)."""
    u, s, _ = np.linalg.svd(np.asarray(columns, dtype=np.float64), full_matrices=False)
    out: npt.NDArray[np.float64] = u[:, s > rtol * s.max()] if s.size and s.max() > 0 else u[:, :0]
    return out


def trained_directions(proto: onnx.ModelProto, head: Head) -> FloatArray:
    """The classifier's class directions [K, D] as stored in the graph."""
    slot = head.slot("classifier")
    assert slot is not None  # locate_head guarantees one
    init = next(i for i in proto.graph.initializer if i.name == slot.name)
    out: FloatArray = np.moveaxis(numpy_helper.to_array(init), slot.axis, 0)
    return out
