"""Deployment formats built from an artifact (ONNX, TensorRT, Triton)."""
