"""Checks of untrusted XGBoost and LightGBM model files, before their C++ parsers see them.

Both libraries' parsers trust their input. Seen with XGBoost 3.2 and LightGBM 4.7, on files
cut short or with a byte or a number changed:

* XGBoost: a UBJSON file cut inside an array's count made it allocate 20 GB; JSON nested
  100,000 deep overflowed its stack; a tree's ``parents``, ``id``, ``size_leaf_vector`` or
  ``categories_nodes`` out of range, or a vector-leaf tree without ``loss_changes``, crashed
  it (SIGSEGV, SIGABRT).
* LightGBM: a file cut inside a tree or after ``Tree=0`` aborted the process (an error
  raised inside its parallel tree parse is rethrown from a destructor); a tree line without
  '=' is scanned for one past the end of the buffer; ``tree_sizes`` offsets, child indices,
  split features and categorical thresholds index memory unchecked; a parameter line
  without ':' or an empty objective indexes past a vector; ``num_tree_per_iteration=0``
  divides by zero (SIGFPE). Numbers it cannot read become 0 without a word.

So :func:`check_xgboost` (in :mod:`.xgboost`) decodes the document in Python,
bounds-checked, and checks what XGBoost's loader follows; :func:`check_lightgbm` (in
:mod:`.lightgbm`) parses the text as LightGBM does and checks every field LightGBM indexes
with. Each raises :class:`FileCheckError` saying what is wrong; a file that passes reaches
the library whole and consistent. The fuzzing that found these (truncation at every offset,
byte flips, numbers swapped for extreme values, lines deleted or repeated, keys renamed)
runs clean against both checks.
"""

from __future__ import annotations

from treecomp.file_checks.errors import FileCheckError, first_line
from treecomp.file_checks.lightgbm import check_lightgbm
from treecomp.file_checks.xgboost import check_xgboost

__all__ = ["FileCheckError", "check_lightgbm", "check_xgboost", "first_line"]
