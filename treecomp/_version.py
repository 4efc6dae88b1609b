"""The version of treecomp: one source, read by the package, its artifacts and its build."""

__version__ = "0.1.0"
