"""ONNX export of a stage-"oltr" model: the graph, its model card, atomic writes, parity.

The artifact's names (input, outputs, card key) are the shared contract in
:mod:`oltr_contract.artifact`. Scaling (/255) and normalisation are inside the graph; centroids
and all weights are initializers. The model card is JSON under metadata key ``oltr.card`` and in
``card.json``.

Exporter: torch.export-based (``dynamo=True``). With torch 2.14 it gives a graph with no shape
arithmetic (about half the nodes of the legacy TorchScript exporter, which is deprecated).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from torch import Tensor, nn

from oltr_contract.artifact import CARD_KEY, INPUT_NAME, OUTPUT_NAMES
from oltr_contract.atomic import write_bytes_atomic
from oltr_contract.graph_version import model_version
from training.models import OLTRNet

FOLD_LIMIT = 1 << 26
"""Elements a folded constant may have (256 MiB of float32): every parameter of a head."""

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"


class ExportGraph(nn.Module):
    """uint8 NHWC images -> the six artifact outputs of a stage-"oltr" model.

    ``dtype`` is the model's compute dtype (float16 for fp16 export); the float outputs are
    cast back to float32 so the artifact's I/O does not depend on it.
    """

    def __init__(self, model: OLTRNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if model.stage != "oltr":
            raise ValueError(f"export needs a stage 'oltr' model, got stage {model.stage!r}")
        self.model = model
        self.dtype = dtype

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        # * (1/255), not / 255: bit-identical to the training transform (ToUnitTensor)
        x = image.permute(0, 3, 1, 2).to(self.dtype) * (1.0 / 255.0)
        outputs = self.model(x).artifact_outputs()
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def export_onnx(
    model: OLTRNet, out_dir: Path, card: dict[str, Any], *, opset: int = 18, fp16: bool = False
) -> Path:
    """Write ``out_dir/model.onnx`` and ``out_dir/card.json``; return the model's path.

    The card is copied with ``version`` set to the first 12 hex digits of the sha256 of the
    serialized model without metadata. Both files are written through temp files and
    ``os.replace``; if writing the model fails, the new card.json is removed again.

    ``fp16=True`` stores the weights and runs all internal math in float16; the input stays
    uint8 and the float outputs are cast back to float32 (nearest_class stays int64). Against
    the float32 PyTorch model (random-init ResNet-10, 32 px, real MNIST digits) the measured
    max differences are about 1.5e-3 on logits and 1e-3 relative on reachability; in float16
    reachability becomes inf when d_min < s_r / 65504.
    """
    _check_card(model, card)
    dtype = torch.float16 if fp16 else torch.float32
    graph = ExportGraph(copy.deepcopy(model).cpu().to(dtype), dtype).eval()
    proto = _to_onnx(graph, model.input_size, opset)
    version = model_version(proto)
    card_text = json.dumps({**card, "version": version}, indent=2, allow_nan=False)
    onnx.helper.set_model_props(proto, {CARD_KEY: card_text})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, card_path = out_dir / MODEL_FILE, out_dir / CARD_FILE
    write_bytes_atomic(card_path, card_text.encode())
    try:
        write_bytes_atomic(model_path, proto.SerializeToString())
    except BaseException:
        card_path.unlink(missing_ok=True)  # a card without its model would describe nothing
        raise
    return model_path


def _check_card(model: OLTRNet, card: dict[str, Any]) -> None:
    try:
        json.dumps(card, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"card is not valid JSON: {err}") from err
    names = card.get("class_names")
    if names is not None and len(names) != model.num_classes:
        raise ValueError(
            f"card.class_names has {len(names)} names but the model has {model.num_classes} classes"
        )
    size = card.get("input_size")
    if size is not None and size != model.input_size:
        raise ValueError(
            f"card.input_size is {size} but the model was built for {model.input_size}"
        )


def _to_onnx(graph: ExportGraph, input_size: int, opset: int) -> onnx.ModelProto:
    # Batch 2: torch.export specialises a dimension whose example size is 0 or 1.
    example = torch.randint(0, 256, (2, input_size, input_size, 3), dtype=torch.uint8)
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N")}},
        opset_version=opset,
        verbose=False,
    )
    # The exporter folds constants of up to 8,192 elements only: a bigger head (7 classes at
    # D = 1280) would keep its raw parameters and normalise them at every inference. Folded,
    # the class constants are the plain tensors that enrolment edits (service/head_surgery).
    proto = onnxscript.optimizer.optimize(
        program.model_proto, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT
    )
    _strip_debug_metadata(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _strip_debug_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's annotations (FX node names, stack traces with local paths), so the
    artifact and its version depend on the graph and weights only."""
    del graph.metadata_props[:]
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del item.metadata_props[:]


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card stored in an exported model's ``oltr.card`` metadata."""
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in props:
        raise ValueError(f"{path}: no {CARD_KEY!r} metadata; not an OLTR export")
    return json.loads(props[CARD_KEY])


def parity_report(model: OLTRNet, onnx_path: str | Path, images: np.ndarray) -> dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and PyTorch on uint8 NHWC images.

    Adds ``argmax_mismatch``: how many images get a different top class. The PyTorch side runs
    ``model`` as it is (float32 for a float32 model), the reference an fp16 export is judged by.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    graph = ExportGraph(model, next(model.parameters()).dtype).eval()
    device = next(model.parameters()).device
    was_training = model.training
    with torch.no_grad():
        ref = [t.cpu().numpy() for t in graph(torch.from_numpy(images).to(device))]
    model.train(was_training)
    report = {
        name: float(np.abs(g.astype(np.float64) - r.astype(np.float64)).max())
        for name, g, r in zip(OUTPUT_NAMES, got, ref, strict=True)
    }
    report["argmax_mismatch"] = float((got[0].argmax(1) != ref[0].argmax(1)).sum())
    return report


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line interface of `python -m training.export`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a finished run's stage-2 model and model card to ONNX.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by training.fit")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. models/mine")
    parser.add_argument("--fp16", action="store_true", help="float16 weights (for GPUs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export RUN_DIR into --out; returns the exit code."""
    from training.artifact import export_run  # artifact builds on this module
    from training.checkpoint import CheckpointError

    args = get_args_parser().parse_args(argv)
    try:
        path = export_run(args.run_dir, args.out, fp16=args.fp16 or None)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    card = read_card(path)
    print(f"exported {path} (version {card['version']}, {len(card['class_names'])} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
