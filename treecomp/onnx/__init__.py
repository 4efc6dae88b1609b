"""The ONNX target: a forest's graph (:mod:`~treecomp.onnx.graph`), the exported model
(:mod:`~treecomp.onnx.export`) and the ``"onnx"`` backend's engine in ONNX Runtime
(:mod:`~treecomp.onnx.engine`).

Nothing is imported here: ``import treecomp.onnx`` needs neither onnx nor ONNX Runtime.
"""
