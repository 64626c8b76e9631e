"""Importers: ONNX models -> Graph."""
