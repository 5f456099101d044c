"""A model's version: what training's export and the service's enrolment stamp on a graph."""

from __future__ import annotations

import hashlib

import onnx

VERSION_CHARS = 12


def model_version(proto: onnx.ModelProto) -> str:
    """First 12 hex digits of the sha256 of ``proto`` serialized without metadata_props, so the
    version names the graph and its weights, not the card."""
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString()).hexdigest()[:VERSION_CHARS]
