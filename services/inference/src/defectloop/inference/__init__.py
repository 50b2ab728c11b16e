"""defectloop inference: Consumes image.captured, runs each site's ONNX model (ONNX Runtime) and publishes prediction.made."""
