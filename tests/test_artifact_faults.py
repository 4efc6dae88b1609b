"""Crafted artifacts: every field checked against the schema, memory bounded by the file.

The checksum of an artifact covers its body, so whoever crafts a file can make it valid:
each case here is re-signed, and must still be refused by the schema check, with an
InvalidArtifactError naming the field, before any large allocation.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal
from tests.test_ir import small_forest, small_tree
from treecomp import artifact
from treecomp.ir import Forest

# A crafted file of N bytes may make loading use at most this many bytes per byte of the file
# (plus the model it really describes, none here: every case is refused).
MEMORY_PER_FILE_BYTE = 50


def classifier(classes: np.ndarray) -> Forest:
    """Two trees of one output (a binary classifier), leaf_shape (1, 2)."""
    return small_forest(
        trees=(small_tree(), small_tree()),
        task="classifier",
        classes=classes,
        methods=("predict", "predict_proba", "apply"),
        post_transform=treecomp.PostTransform("sigmoid"),
        leaf_shape=(1, 2),
    )


def document(forest: Forest | None = None) -> dict[str, Any]:
    cm = treecomp.convert(forest or classifier(np.array(["no", "yes"])), backend="numpy")
    return json.loads(artifact.dumps(cm))


def signed(doc: dict[str, Any]) -> bytes:
    """``doc`` with a valid checksum, as a crafter would write it."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return artifact._canonical(
        {**body, "sha256": hashlib.sha256(artifact._canonical(body)).hexdigest()}
    )


def crafted(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = document()
    change(doc)
    return signed(doc)


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set the field at a dotted path (``forest.trees.0.left_child.dtype``) to ``value``."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            del node[last]
        else:
            node[last] = value

    return change


DELETE = object()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_a_crafted_file_round_trips_when_untouched() -> None:
    forest = classifier(np.array(["a", "bb"], dtype="<U7"))  # wider than its labels: kept
    backend, again, options = artifact.loads(signed(document(forest)))
    assert again == forest and again.classes is not None
    assert again.classes.dtype == np.dtype("<U7") and backend == "numpy"
    assert options == {"precision": "auto"}


# (dotted path, crafted value, what the error must name)
FAULTS = [
    # versions: exactly a known integer, never a bool or a float
    ("version", 0, "unknown model format version 0"),
    ("version", -1, "unknown model format version -1"),
    ("version", True, "no integer format version"),
    ("version", 1.0, "no integer format version"),
    ("version", 3, "version 3 .*up to 2"),
    ("forest.version", 0, "unknown forest document version 0"),
    ("forest.version", True, "no integer version"),
    # flags: true or false, not null, 0 or a string
    ("forest.allow_nan", None, "allow_nan must be true or false, got null"),
    ("forest.allow_inf", 0, "allow_inf must be true or false"),
    ("forest.check_feature_names", "yes", "check_feature_names must be true or false"),
    # integers: not bools, floats or strings, and in range
    ("forest.n_features", True, "n_features must be an integer"),
    ("forest.n_features", 2.0, "n_features must be an integer"),
    ("forest.n_features", "2", "n_features must be an integer"),
    ("forest.n_features", 2**31, "n_features must be an integer in"),
    ("forest.n_outputs", 0, "n_outputs must be an integer"),
    ("forest.trees.0.output_index", False, r"trees\[0\].output_index must be an integer"),
    ("forest.trees.1.output_index", -1, r"trees\[1\].output_index must be an integer"),
    ("forest.leaf_shape", [True, 2], r"leaf_shape\[0\] must be an integer"),
    # 274177 * 67280421310721 == 2**64 + 1: a product that wraps int64 to 1
    ("forest.leaf_shape", [274177, 67280421310721], r"leaf_shape\[1\] must be an integer"),
    ("forest.leaf_shape", [2, 1, 3], r"leaf_shape \(2, 1, 3\) does not hold 2 trees"),
    ("forest.leaf_shape", [1] * 33 + [2], "leaf_shape must be a list of at most 32 sizes"),
    # strings from their sets, lists of strings
    ("forest.comparison", ["<"], "comparison must be one of"),
    ("forest.task", "clasifier", "task must be one of"),
    ("forest.frame_cast", "rows", "frame_cast must be one of"),
    # fields that only fit together
    ("forest.task", "regressor", "a regressor has no classes"),
    ("forest.post_transform.kind", "isolation", "the isolation link is an outlier detector's"),
    ("forest.methods", "predict", "methods must be a list of strings"),
    ("forest.methods", ["predict", "fit"], r"methods\[\] must be one of"),
    ("forest.feature_names", [1, 2], "feature_names must be a list of strings"),
    ("forest.ignored_columns", [None], "ignored_columns must be a list of strings"),
    # floats in hex, finite where they must be
    ("forest.missing_value", 0.5, "missing_value must be a float in hex"),
    ("forest.decision_offset", "0x1p2000", "decision_offset must be a finite float"),
    ("forest.decision_offset", "inf", "decision_offset must be a finite float"),
    ("forest.post_transform.scale", None, "post_transform.scale must be a finite float"),
    ("forest.post_transform.kind", "tanh", "post_transform.kind must be one of"),
    # arrays: exactly the dtype written, a shape the data pays for, booleans 0 or 1
    ("forest.trees.0.left_child.dtype", "<i8", r"trees\[0\].left_child.dtype must be '<i4'"),
    ("forest.trees.0.value.dtype", "<U1000000000", r"value.dtype must be '<f8'"),
    ("forest.trees.0.value.dtype", "|O", r"value.dtype must be '<f8'"),
    ("forest.base_score.dtype", ">f8", "base_score.dtype must be '<f8'"),
    ("forest.trees.0.threshold.shape", [10**12], r"threshold holds 40 bytes, but shape"),
    ("forest.trees.0.threshold.shape", [True] * 5, r"threshold.shape must be a list of 1"),
    ("forest.trees.0.threshold.shape", [-5], r"threshold.shape must be non-negative"),
    ("forest.trees.0.value.shape", [5], r"value.shape must be a list of 2 integers"),
    ("forest.trees.0.threshold.data", "@@@@", r"threshold.data must be base64"),
    ("forest.trees.0.default_left.data", b64(bytes([1, 2, 0, 1, 1])), "bytes other than 0, 1"),
    ("forest.trees.0.left_child", DELETE, r"trees\[0\] lacks \['left_child'\]"),
    ("forest.trees.0.extra", 1, r"trees\[0\] has unknown fields"),
    ("forest.extra", 1, "the document has unknown fields"),
    ("forest.trees", {}, "trees must be a list"),
    # class labels: a dtype from the allowlist, each value of that dtype exactly
    ("forest.classes.dtype", "|S3", "classes.dtype must be"),
    ("forest.classes.dtype", "<M8[ns]", "classes.dtype must be"),
    ("forest.classes.dtype", "<U1", "classes.values do not fit dtype <U1"),
    ("forest.classes", {"dtype": "|i1", "values": [1, 300]}, "do not fit dtype"),
    ("forest.classes", {"dtype": "<i8", "values": [1, True]}, r"classes.values\[1\] must be"),
    (
        "forest.classes",
        {"dtype": "<f4", "values": [{"float": "0x1.0000001p+0"}, {"float": "0x1p0"}]},
        "do not fit dtype <f4",
    ),
    ("forest.classes", {"dtype": "|b1", "values": [0, 1]}, r"classes.values\[0\] must be"),
    ("forest.classes", {"dtype": "object", "values": ["a", None]}, r"classes.values\[1\] must be"),
    (
        "forest.classes",
        {"dtype": "object", "values": ["a", {"float": 1.5}]},
        r"values\[1\].float must be",
    ),
    ("forest.categories", [None, [None]], r"categories\[1\]\[0\] must be"),
    ("forest.categories", [None, "ab"], r"categories\[1\] must be null or a list"),
    # the artifact's own fields
    ("backend", 1, "unknown backend 1"),
    ("precision", None, "unknown precision None"),
    ("options", {"batch_size": True}, "batch_size = True is out of its range or type"),
    ("options", {"strategy": ["gemm"]}, r"strategy = \['gemm'\] is out of"),
    ("options", {"device": "cuda"}, "unexpected options: 'device' is not one"),
    ("options", [], r"an object was expected, got \[\]"),
    ("treecomp_version", 5, "treecomp_version must be strings"),
    ("extra", 1, r"unknown fields \['extra'\]"),
    ("forest", DELETE, r"fields \['forest'\] are missing"),
]


@pytest.mark.parametrize(("path", "value", "match"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_crafted_field_is_refused_by_name(path: str, value: Any, match: str) -> None:
    raw = crafted(setter(path, value if value is DELETE else copy.deepcopy(value)))
    with pytest.raises(treecomp.InvalidArtifactError, match=match):
        artifact.loads(raw, source="crafted.tc")


def test_a_link_scale_beyond_the_accumulation_type_is_refused() -> None:
    """A float32 forest's link scale must be a float32 number (1e308 overflowed inside torch)."""

    def change(doc: dict[str, Any]) -> None:
        doc["forest"]["accumulation"] = "float32"
        doc["forest"]["post_transform"]["scale"] = (1e308).hex()

    with pytest.raises(treecomp.InvalidArtifactError, match=r"scale 1e.308 overflows float32"):
        artifact.loads(crafted(change), source="crafted.tc")


def test_forest_documents_are_checked_alike() -> None:
    """Forest.from_json and from_dict read the same schema (without an artifact around it)."""
    text = classifier(np.array(["no", "yes"])).to_json()
    doc = json.loads(text)
    doc["allow_nan"] = None
    with pytest.raises(treecomp.InvalidForestError, match="allow_nan must be true or false"):
        Forest.from_json(json.dumps(doc))
    with pytest.raises(treecomp.InvalidForestError, match="allow_nan must be true or false"):
        Forest.from_dict(doc)
    with pytest.raises(treecomp.InvalidForestError, match="not a JSON document"):
        Forest.from_json("[" * 100_000)
    with pytest.raises(treecomp.InvalidForestError, match="not JSON data"):
        Forest.from_dict({**json.loads(text), "n_features": object()})


def test_validate_refuses_a_leaf_shape_whose_product_wraps() -> None:
    with pytest.raises(treecomp.InvalidForestError, match="does not hold 1 trees"):
        small_forest(leaf_shape=(274177, 67280421310721))  # product 2**64 + 1


def peak_bytes(action: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        action()
    except treecomp.InvalidArtifactError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


HUGE = [
    # 4.9 KB that asked for 4 GB: two labels of dtype <U500000000
    ("forest.classes.dtype", "<U500000000"),
    # the widest string dtype the allowlist parses, for no labels and for many
    ("forest.classes", {"dtype": "<U9999999999", "values": []}),
    ("forest.classes", {"dtype": "<U60000", "values": ["x"] * 200}),
    # shapes that ask for more than their data
    ("forest.trees.0.value.shape", [2**40, 2**40]),
    ("forest.base_score.shape", [2**62]),
    ("forest.leaf_shape", [2**31 - 1, 2**31 - 1]),
    # what costs the JSON parse most per byte: many empty objects
    ("forest.feature_names", [{}] * 20_000),
]


@pytest.mark.parametrize(("path", "value"), HUGE, ids=[h[0] for h in HUGE])
def test_a_crafted_file_cannot_ask_for_memory_it_does_not_pay_for(path: str, value: Any) -> None:
    raw = crafted(setter(path, value))
    peak_bytes(lambda: artifact.loads(signed(document())))  # imports and caches warmed up
    with pytest.raises(treecomp.InvalidArtifactError):
        treecomp.loads(raw)
    peak = peak_bytes(lambda: treecomp.loads(raw))
    assert peak < MEMORY_PER_FILE_BYTE * len(raw), (peak, len(raw))


def test_labels_wider_than_their_text_load_while_the_file_pays_for_them() -> None:
    """A string dtype wider than its labels is real (labels sliced from a wider array) and
    kept; the width is refused only past what the file's size can pay for."""
    forest = classifier(np.array(["a", "b"], dtype="<U300"))
    cm = treecomp.loads(signed(document(forest)))
    assert cm.forest.classes is not None and cm.forest.classes.dtype == np.dtype("<U300")
    assert_equal(cm.predict(np.array([[0.0, 0.0]])), np.array(["b"], dtype="<U300"))


def test_a_failed_export_leaves_the_file_that_was_there(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save and export_onnx write under a temporary name and rename it into place: an export
    that fails (a bad option, a write cut short) leaves the previous file whole, and no
    temporary file behind."""
    pytest.importorskip("onnx")
    cm = treecomp.convert(small_forest(small_tree()), backend="numpy")
    onnx_path, saved = tmp_path / "model.onnx", tmp_path / "model.tc"
    cm.export_onnx(onnx_path)
    cm.save(saved)
    before = {p: p.read_bytes() for p in (onnx_path, saved)}
    with pytest.raises(ValueError):
        cm.export_onnx(onnx_path, strategy="no_such_strategy")

    write_bytes = Path.write_bytes

    def cut_short(self: Path, data: bytes) -> None:  # the disk fills after ten bytes
        write_bytes(self, data[:10])
        raise OSError("No space left on device")

    monkeypatch.setattr("pathlib.Path.write_bytes", cut_short)
    with pytest.raises(OSError, match="No space left"):
        cm.save(saved)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (onnx_path, saved)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.tc"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"precision": "float16"}, "precision must be one of"),
        ({"n_threads": 0}, "n_threads must be a positive integer"),
        ({"strategy": "bogus"}, "unknown strategy 'bogus'"),
        ({"backend": "bogus"}, "unknown backend 'bogus'"),
    ],
)
def test_a_callers_bad_option_at_load_is_the_callers_error(
    tmp_path: Any, options: dict[str, Any], said: str
) -> None:
    """load(path, **options) with an option no conversion takes raises that option's error,
    as convert() does, not one that blames the file (which rebuilds as it was saved)."""
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.tc"
    treecomp.convert(small_forest(small_tree()), backend="onnx").save(path)
    with pytest.raises(ValueError, match=said) as raised:
        treecomp.load(path, **options)
    assert not isinstance(raised.value, treecomp.InvalidArtifactError)


def test_an_export_keeps_the_files_mode_and_writes_through_a_symlink(tmp_path: Any) -> None:
    """Written whole, the file still gets what a plain write gives it: the mode of the file
    it replaces (else the umask's), and a symlink keeps pointing at the new bytes."""
    import os
    import stat

    cm = treecomp.convert(small_forest(small_tree()), backend="numpy")
    fresh, shared = tmp_path / "fresh.tc", tmp_path / "shared.tc"
    cm.save(fresh)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    shared.write_bytes(b"old")
    shared.chmod(0o640)
    cm.save(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    link = tmp_path / "link.tc"
    link.symlink_to(shared)
    cm.save(link)
    assert link.is_symlink() and treecomp.load(link).forest == cm.forest
    with pytest.raises(FileNotFoundError, match="no folder"):
        cm.save(tmp_path / "absent" / "model.tc")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        cm.save(tmp_path)
