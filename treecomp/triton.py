"""Triton Inference Server: a model repository for Triton's ONNX Runtime backend.

:func:`write_repository` writes the model's exported ONNX graph (:meth:`CompiledModel.to_onnx`)
and a ``config.pbtxt`` describing it::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx

The configuration is read off the graph itself: its input and output names, their Triton
data types (``TYPE_FP32`` or ``TYPE_FP64`` features as ``cm.export_dtype`` says,
``TYPE_STRING`` labels for text classes, ``TYPE_INT64``, ``TYPE_BOOL``, ...) and their shapes.
With ``max_batch_size > 0`` (the default) the batch axis is Triton's, left out of ``dims``,
and Triton's dynamic batcher gathers requests into batches; one-value-per-row outputs
(``label``, ``scores``) are ``dims: [ 1 ]`` reshaped to the graph's ``(N,)``, as Triton's
documentation prescribes for them. With ``max_batch_size: 0`` every shape is the graph's,
the batch axis as ``-1``.

The instances run on the CPU. ONNX Runtime's CUDA execution provider has no kernel for
ONNX-ML's ``TreeEnsemble`` operator, which the default CPU graph walks its trees with (those
nodes would fall back to the CPU, copying every batch across): for GPU instances write the
repository with a standard-operator strategy (``strategy="gemm"``, ``"tree_traversal"`` or
``"perfect_tree_traversal"``) and use the ``KIND_GPU`` group the file carries in a comment.

Typical use::

    import treecomp.triton

    treecomp.triton.write_repository(cm, "models", name="churn", max_batch_size=4096)
    # tritonserver --model-repository=models

Only the ``onnx`` package is needed to write a repository (no Triton package); the graph is
the one :meth:`CompiledModel.export_onnx` writes, exact under any ONNX Runtime session options.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from treecomp.container import CompiledModel
from treecomp.files import write_replacing
from treecomp.names import for_target

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "model_config", "write_repository"]

# Rows Triton lets into one request, and into one batch its dynamic batcher forms. Tree
# models score a row in well under a microsecond per tree, so batches of thousands cost
# milliseconds; a client sending more rows in one request is refused by Triton.
DEFAULT_MAX_BATCH_SIZE = 4096
# A model's folder name: Triton's model name, and one path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# ONNX element types (onnx.TensorProto) to the model configuration's data types.
_DATA_TYPES = {
    1: "TYPE_FP32",  # FLOAT
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",  # DOUBLE
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
# Strategies of standard operators only: those that lower to torch as well as to ONNX.
_STANDARD_STRATEGIES = for_target("torch")


def write_repository(
    cm: CompiledModel,
    repo: str | Path,
    *,
    name: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    version: int = 1,
    strategy: str | None = None,
    leaf_indices: bool = False,
    instances: int = 1,
) -> Path:
    """Write ``cm`` into the Triton model repository ``repo`` as model ``name``.

    ``repo`` may already hold other models, and ``name`` other versions; this version's
    ``model.onnx`` and the model's ``config.pbtxt`` are replaced whole (each written under
    a temporary name, then renamed), so a polling server never reads half a file.

    Args:
        cm: The model, from :func:`treecomp.convert` or :func:`treecomp.load`.
        repo: The repository folder (created if missing).
        name: The model's name: letters, digits, ``_``, ``.`` and ``-``, starting with a
            letter or digit (Triton's name is the folder's).
        max_batch_size: The most rows in one request and in one dynamic batch; ``0``
            turns Triton's batching off (the graph still takes any number of rows).
        version: The version folder to write.
        strategy: The graph's strategy, as for :meth:`CompiledModel.to_onnx`: by default
            the model's own (on the CPU, ONNX-ML's ``TreeEnsemble`` operator where exact);
            ``"gemm"``, ``"tree_traversal"`` or ``"perfect_tree_traversal"`` for a graph of
            standard operators, which ONNX Runtime's CUDA provider runs whole.
        leaf_indices: Also output ``leaf_indices`` ``(N, n_trees)``, the native leaf numbers.
        instances: Model instances in the CPU instance group.

    Returns:
        The model's folder, ``repo/name``.

    Raises:
        TypeError: ``cm`` is not a :class:`~treecomp.CompiledModel`.
        ValueError: a bad name, batch size, version or instance count, or an unknown
            strategy.
    """
    if not isinstance(cm, CompiledModel):
        raise TypeError(f"expected a treecomp.CompiledModel, got {type(cm).__qualname__}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} is not a Triton model folder name: use letters, digits, "
            "'_', '.' and '-', starting with a letter or digit"
        )
    _check_count("max_batch_size", max_batch_size, minimum=0)
    _check_count("version", version, minimum=1)
    _check_count("instances", instances, minimum=1)
    model = cm.to_onnx(leaf_indices=leaf_indices, strategy=strategy)
    config = model_config(model, name=name, max_batch_size=max_batch_size, instances=instances)
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    write_replacing(folder / str(version) / "model.onnx", model.SerializeToString())
    write_replacing(folder / "config.pbtxt", config.encode())
    return folder


def model_config(model: Any, *, name: str, max_batch_size: int, instances: int = 1) -> str:
    """The ``config.pbtxt`` text (protobuf text format) of the ONNX ``model``."""
    graph = model.graph
    props = {p.key: p.value for p in model.metadata_props}
    plan = props.get("treecomp.strategy", "unknown")
    # The ML opset is declared where a node uses it, in If branches too (treecomp.onnx.export).
    ml_operator = any(opset.domain == "ai.onnx.ml" for opset in model.opset_import)
    batched = max_batch_size > 0
    lines = [
        f"# Written by treecomp from an ONNX graph: {' '.join(model.doc_string.split())}",
        "# Feed the features as the native model sees them, NaN for missing values.",
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        *_tensors("input", graph.input, batched),
        *_tensors("output", graph.output, batched),
    ]
    if batched:
        lines.append("dynamic_batching { }")
    lines += [
        "instance_group [",
        "  {",
        f"    count: {instances}",
        "    kind: KIND_CPU",
        "  }",
        "]",
    ]
    if ml_operator:
        lines += [
            f"# GPU instances: this graph walks its trees with ONNX-ML's TreeEnsemble operator"
            f" ({plan}),",
            "# which ONNX Runtime's CUDA provider has no kernel for (those nodes would run on",
            "# the CPU, every batch copied across). Write the repository again with a standard-",
            "# operator strategy (treecomp convert ... --to triton --strategy gemm, or",
            f"# {', '.join(_STANDARD_STRATEGIES[1:])}), then use this group instead of the one"
            " above:",
        ]
    else:
        lines += [
            f"# GPU instances: this graph holds standard operators only ({plan}), which ONNX",
            "# Runtime's CUDA provider runs whole. Use this group instead of the one above:",
        ]
    lines += ["# instance_group [ { count: 1, kind: KIND_GPU } ]", ""]
    return "\n".join(lines)


def _tensors(kind: str, values: Any, batched: bool) -> list[str]:
    """The ``input [...]`` or ``output [...]`` block of the graph's inputs or outputs."""
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        data_type = _DATA_TYPES.get(tensor.elem_type)
        if data_type is None:
            raise ValueError(
                f"graph {kind} {value.name!r} has ONNX element type {tensor.elem_type}, "
                "which Triton's ONNX Runtime backend has no data type for"
            )
        # Symbolic axes (the batch axis "N") are -1; the first one is the batch axis.
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        dims, reshape = shape, None
        if batched:
            dims = shape[1:]
            if not dims:  # one value per row: Triton wants a non-empty dims
                dims, reshape = [1], "    reshape: { shape: [ ] }"
        entry = [
            "  {",
            f'    name: "{value.name}"',
            f"    data_type: {data_type}",
            f"    dims: [ {', '.join(str(d) for d in dims)} ]",
        ]
        if reshape:
            entry.append(reshape)
        entries.append("\n".join([*entry, "  }"]))
    return [f"{kind} [", ",\n".join(entries), "]"]


def _check_count(option: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")
