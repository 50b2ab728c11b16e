"""ONNX export (the bundle contract) and the ORT-vs-torch parity check.

Uses torch's TorchScript-based exporter (``dynamo=False``): for this plain Conv/BN/Resize graph it
is deterministic (same weights → same bytes), embeds the weights in one file and needs no
onnxscript optimisation pass whose output could drift between versions. Doc strings are cleared
so no source path or stack trace leaks into the bytes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt

from defectloop.common.errors import IntegrityMismatchError
from defectloop.vision.manifest import (
    DYNAMIC_AXIS,
    EMBEDDING,
    HEATMAP,
    INPUT_NAME,
    OFFSET,
    OUTPUT_NAMES,
    SIZE,
)

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(net: object, input_size: tuple[int, int]) -> bytes:
    """Export ``net`` (a :class:`~defectloop.trainer.model.CenterNet`) to ONNX bytes."""
    import onnx
    import torch

    from defectloop.trainer.model import CenterNet, ExportWrapper

    assert isinstance(net, CenterNet)
    wrapper = ExportWrapper(net).eval()
    dummy = torch.zeros(1, 1, *input_size, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # the legacy exporter writes to file objects too
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: DYNAMIC_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def torch_outputs(
    net: object, batch: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[np.float32]]:
    import torch

    from defectloop.trainer.model import CenterNet, ExportWrapper

    assert isinstance(net, CenterNet)
    with torch.no_grad():
        outs = ExportWrapper(net).eval()(torch.from_numpy(batch))
    return {
        name: o.numpy() for name, o in zip((HEATMAP, SIZE, OFFSET, EMBEDDING), outs, strict=True)
    }


def ort_outputs(
    onnx_bytes: bytes, batch: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[np.float32]]:
    from defectloop.vision.runtime import run_graph

    return run_graph(onnx_bytes, batch, intra_op_threads=1)


def max_abs_diff(
    net: object, onnx_bytes: bytes, batch: npt.NDArray[np.float32]
) -> dict[str, float]:
    """Largest |ORT - torch| per output on ``batch``."""
    a, b = torch_outputs(net, batch), ort_outputs(onnx_bytes, batch)
    return {name: float(np.max(np.abs(a[name] - b[name]))) for name in OUTPUT_NAMES}


def check_parity(
    net: object, onnx_bytes: bytes, batch: npt.NDArray[np.float32], tol: float = PARITY_TOLERANCE
) -> dict[str, float]:
    """Raise :class:`IntegrityMismatchError` when ORT and torch disagree by more than ``tol``."""
    diffs = max_abs_diff(net, onnx_bytes, batch)
    worst = max(diffs, key=lambda k: diffs[k])
    if diffs[worst] > tol:
        raise IntegrityMismatchError(
            f"ONNX/torch parity failed: {worst} differs by {diffs[worst]:.2e} > {tol:.0e}",
            reason="export_parity_failed",
            hint="the exported graph does not compute what the torch model does",
        )
    return diffs
