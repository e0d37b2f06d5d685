"""pbrforge.export: Core ML, ONNX and TensorRT artifacts, each gated by a parity check."""
