"""The torch-free core every other layer builds on.

Errors, the I/O and state contract, the one atomic writer, onnxruntime's provider
table, lazy package exports, walking ONNX graphs, the one comparator and the
input generators. Nothing here imports torch or onnxscript; ``errors``,
``contract``, ``io``, ``ort`` and ``lazy`` import neither onnx.
"""
