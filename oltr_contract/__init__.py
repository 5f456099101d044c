"""The contract between training and the service, defined once (numpy, onnx, the stdlib).

- :mod:`oltr_contract.artifact`: the ONNX artifact's input and output names, the model card's
  metadata key and schema version.
- :mod:`oltr_contract.scores`: the open-set score names, their definitions, their numpy
  functions, and the unknown decision (``score >= threshold`` is known).
- :mod:`oltr_contract.atomic`: atomic file writes (model files, cards, checkpoints, captures):
  a reader sees the old file or the whole new one.
- :mod:`oltr_contract.graph_version`: a model's version, the hash of its graph and weights.

Training's evaluation and calibration and the service's ``/classify`` call these functions, so
what a model was calibrated on is what it is served with. The service installs without torch:
nothing here imports it.
"""
