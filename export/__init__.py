"""metrix.export: a trained run to a verified, self-describing ONNX model (`metrix export`)."""
