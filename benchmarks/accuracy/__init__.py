"""Recognition-quality benchmark: CIFAR-10-LT-open with near and far open sets, two protocols,
plain vs OLTR vs modern long-tail baselines. Run ``python -m benchmarks.accuracy --help``."""
