from __future__ import annotations

import numpy as np
import pytest
import torch

from defectloop.trainer.config import ModelConfig
from defectloop.trainer.export import PARITY_TOLERANCE, export_onnx, max_abs_diff, ort_outputs
from defectloop.trainer.model import build_model

pytestmark = pytest.mark.unit

CFG = ModelConfig(input_size=(64, 96), width=8, head_width=8)


def _trained_looking_model(seed: int = 0) -> torch.nn.Module:
    """Random weights AND non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    net = build_model(CFG, num_classes=3)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_onnx_runtime_matches_torch_within_tolerance() -> None:
    net = _trained_looking_model()
    onnx_bytes = export_onnx(net, CFG.input_size)
    batch = np.random.default_rng(0).normal(0, 1, (3, 1, 64, 96)).astype(np.float32)
    diffs = max_abs_diff(net, onnx_bytes, batch)
    assert max(diffs.values()) <= PARITY_TOLERANCE, diffs


def test_exported_graph_has_the_contract_names_shapes_and_dynamic_batch() -> None:
    net = _trained_looking_model()
    onnx_bytes = export_onnx(net, CFG.input_size)
    for n in (1, 5):
        out = ort_outputs(onnx_bytes, np.zeros((n, 1, 64, 96), np.float32))
        assert out["heatmap"].shape == (n, 3, 16, 24)
        assert out["size"].shape == (n, 2, 16, 24)
        assert out["offset"].shape == (n, 2, 16, 24)
        assert out["embedding"].shape == (n, net.embedding_dim)
        # Sigmoid is in the graph; offsets are in [0, 1) cells; sizes are positive pixels.
        assert out["heatmap"].min() >= 0.0
        assert out["heatmap"].max() <= 1.0
        assert out["offset"].min() >= 0.0
        assert out["offset"].max() < 1.0
        assert out["size"].min() > 0.0


def test_export_is_byte_deterministic() -> None:
    net = _trained_looking_model()
    assert export_onnx(net, CFG.input_size) == export_onnx(net, CFG.input_size)


def test_different_weights_export_different_bytes() -> None:
    a = export_onnx(_trained_looking_model(0), CFG.input_size)
    b = export_onnx(_trained_looking_model(1), CFG.input_size)
    assert a != b
