"""The ONNX artifact: what training's export writes and the service's predictor reads.

Input ``image``: uint8 [N, C, C, 3] (NHWC RGB, N dynamic); scaling and normalisation are inside
the graph. Outputs, batch on axis 0: ``logits`` [N, K], ``probabilities`` [N, K] (softmax of the
logits), ``reachability`` [N], ``distance`` [N] (d_min), ``nearest_class`` [N] int64,
``embedding`` [N, D]. The model card is JSON under metadata key ``oltr.card``.
"""

from __future__ import annotations

from typing import Final

INPUT_NAME: Final = "image"
INPUT_LAYOUT: Final = "NHWC uint8 RGB"
OUTPUT_NAMES: Final = (
    "logits",
    "probabilities",
    "reachability",
    "distance",
    "nearest_class",
    "embedding",
)
CARD_KEY: Final = "oltr.card"
CARD_SCHEMA_VERSION: Final = 1
"""Version of the card's layout. Cards written before the field existed are version 1."""
