"""The tilesparse IR: a small graph of named nodes with explicit shapes and dtypes."""

from tilesparse.ir.graph import Graph, Node, Op, TensorType

__all__ = ["Graph", "Node", "Op", "TensorType"]
