"""defectloop.vision: the torch-free detector runtime shared by inference, trainer and evaluation.

Modules (import what you need; nothing heavy is imported here):

- ``manifest``: the model bundle contract (``BundleManifest``, ``write_bundle``, ``verify_bundle``).
- ``preprocess``: uint8 grayscale images → normalised ``[N, 1, H, W]`` float32 batch.
- ``decode``: CenterNet heads → boxes in original pixels (peaks, top-k, NMS) + decision.
- ``runtime``: ``Detector``: a verified bundle in an ONNX Runtime session.
- ``outlier``: embedding reference statistics and outlier scores.
- ``metrics``: COCO-style AP@0.5 and image-level precision/recall/F1.
- ``coco``: COCO dataset directories and result files.
- ``evaluate``: ``evaluate_bundle`` (a bundle on a COCO dataset → ``EvalReport``).

See ``docs/model-bundle.md``.
"""
