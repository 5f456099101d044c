"""OLTR image classification service: FastAPI + onnxruntime, no torch.

Run with ``python -m service`` or ``uvicorn service.app:app``; settings are ``OLTR_*``
environment variables (see :mod:`service.config`).
"""

__version__ = "0.1.0"
