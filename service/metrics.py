"""Prometheus collectors, declared once. Names and labels are a shared contract (dashboards,
alert rules): change them only together with docs and monitoring. Every label is bounded."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: 2x scrape

REQUESTS = Counter(
    "oltr_requests",
    "HTTP requests by route template, method and status",
    ["endpoint", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "oltr_request_duration_seconds",
    "HTTP request latency by route template",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IMAGES = Counter(
    "oltr_images_classified",
    "Images classified, by open-set outcome (known / unknown)",
    ["outcome"],
)
PREDICTIONS = Counter(
    "oltr_predictions", "Images per predicted class (the response's label)", ["label"]
)
REACHABILITY = Histogram(
    "oltr_reachability",
    "Reachability s_r / d_min of classified images (higher = more known)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100, 250),
)
CONFIDENCE = Histogram(
    "oltr_confidence",
    "Top-1 softmax probability of classified images",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
BATCH_SIZE = Histogram(
    "oltr_batch_size",
    "Images per inference batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge("oltr_queue_depth", "Images waiting for inference")
IN_FLIGHT = Gauge(
    "oltr_images_in_flight",
    "Images accepted and not yet answered (decoding, queued or in inference): the autoscaling "
    "signal, Little's law concurrency per replica",
)
INFERENCE_DURATION = Histogram(
    "oltr_inference_duration_seconds",
    "onnxruntime run time per batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REJECTED = Counter("oltr_rejected_requests", "Requests refused, by reason", ["reason"])
REJECT_REASONS = (
    "payload_too_large",
    "unsupported_media_type",
    "invalid_image",
    "too_many_pixels",
    "too_many_files",
    "missing_file",
    "queue_full",
    "decode_busy",
    "timeout",
    "unauthorized",
    "bad_request",
)
MODEL_INFO = Gauge(
    "oltr_model_info",
    "The model being served (value 1): version, provider in use, providers requested",
    ["version", "provider", "requested"],
)
PROVIDER_FALLBACK = Gauge(
    "oltr_provider_fallback", "1 when CUDA was requested but the session runs on CPU"
)
ENROLMENTS = Counter(
    "oltr_enrolments", "Classes added or removed without training, by action", ["action"]
)
ENROLLED_CLASSES = Gauge("oltr_enrolled_classes", "Enrolled classes in the serving model")
UNKNOWN_THRESHOLD = Gauge("oltr_unknown_threshold", "Threshold of the unknown score in use")
CAPTURED = Counter(
    "oltr_captured_images",
    "Unknown images offered to capture (OLTR_CAPTURE_DIR), by result: kept, sampled_out "
    "(OLTR_CAPTURE_SAMPLE_RATE) or failed (folder not writable, disk full, writer queue full)",
    ["result"],
)
CAPTURE_RESULTS = ("kept", "sampled_out", "failed")
CAPTURE_EVICTED = Counter(
    "oltr_capture_evicted_images",
    "Captures deleted, oldest first, to keep the folder under OLTR_CAPTURE_MAX_BYTES",
)
CAPTURE_BYTES = Gauge("oltr_capture_bytes", "Bytes in the capture folder (images + sidecars)")


# Every outcome and reason exists at 0 from start-up: rate() cannot see the first increments of a
# series that appears only when it first counts.
for _outcome in ("known", "unknown"):
    IMAGES.labels(outcome=_outcome)
for _reason in REJECT_REASONS:
    REJECTED.labels(reason=_reason)
for _result in CAPTURE_RESULTS:
    CAPTURED.labels(result=_result)
for _action in ("add", "remove"):
    ENROLMENTS.labels(action=_action)


def set_model_info(
    version: str,
    provider: str,
    requested: str,
    fallback: bool,
    class_names: list[str],
    enrolled: int = 0,
) -> None:
    """Replace the model-info series (one model at a time), set the fallback flag and the
    enrolled-class count, and create the per-class prediction series at 0."""
    ENROLLED_CLASSES.set(enrolled)
    MODEL_INFO.clear()
    MODEL_INFO.labels(version=version, provider=provider, requested=requested).set(1)
    PROVIDER_FALLBACK.set(1 if fallback else 0)
    for name in class_names:
        PREDICTIONS.labels(label=name)
