"""Per-layer sizes of an export file: dense bytes against stored bytes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from progprune.export.format import read_body

__all__ = ["LayerSize", "SizeReport", "size_report"]


class LayerSize(NamedTuple):
    """One stored leaf.

    Attributes:
      name: ``params/<path>`` or ``batch_stats/<path>``.
      shape: the leaf's shape.
      dtype: its dtype name.
      encoding: ``dense``, ``bitmask`` or ``gaps`` (see ``progprune.export.format``).
      kept: entries stored (the kept weights).
      dense_bytes: the leaf as a dense array of its dtype.
      stored_bytes: kept values plus index before the body's zlib compression (headers excluded).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    kept: int
    dense_bytes: int
    stored_bytes: int


class SizeReport(NamedTuple):
    """The size table of one export file; ``str()`` prints it, `to_dict` gives JSON.

    Attributes:
      layers: one `LayerSize` per stored leaf.
      file_bytes: the whole file (headers, structure and metadata included).
    """

    layers: list[LayerSize]
    file_bytes: int

    @property
    def dense_bytes(self) -> int:
        """Bytes of every stored leaf as a dense array (what an unpruned file holds)."""
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def ratio(self) -> float:
        """File bytes over dense bytes."""
        return self.file_bytes / max(self.dense_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: totals and the per-layer rows."""
        return {
            "file_bytes": self.file_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "layers": [layer._asdict() for layer in self.layers],
        }

    def __str__(self) -> str:
        header = ("layer", "shape", "dtype", "kept", "index", "dense B", "stored B", "ratio")
        rows = [_row(layer) for layer in self.layers]
        total = ("file (with headers)", "", "", "", "", f"{self.dense_bytes:,}")
        rows.append((*total, f"{self.file_bytes:,}", f"{self.ratio:.3f}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            # Text columns left-aligned, numbers right-aligned.
            return "  ".join(
                c.ljust(w) if i < 5 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "-" * len(line(header))
        return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def _row(layer: LayerSize) -> tuple[str, ...]:
    return (
        layer.name,
        "x".join(map(str, layer.shape)) or "scalar",
        layer.dtype,
        f"{layer.kept / max(math.prod(layer.shape), 1):.2%}",
        layer.encoding,
        f"{layer.dense_bytes:,}",
        f"{layer.stored_bytes:,}",
        f"{layer.stored_bytes / max(layer.dense_bytes, 1):.3f}",
    )


def _layer(name: str, record: dict[str, Any]) -> LayerSize:
    values = record["values"]
    shape = tuple(record["shape"])
    index = record.get("index")
    return LayerSize(
        name=name,
        shape=shape,
        dtype=values.dtype.name,
        encoding=record["encoding"],
        kept=int(values.size),
        dense_bytes=math.prod(shape) * values.dtype.itemsize,
        stored_bytes=int(values.nbytes + (0 if index is None else np.asarray(index).nbytes)),
    )


def size_report(path: str | os.PathLike) -> SizeReport:
    """The per-layer size table of an export file.

    Example:
      >>> import tempfile
      >>> from progprune.export.format import save
      >>> w = np.zeros((100, 100), np.float32)
      >>> w[0, :5] = 1.0  # 5 of 10,000 weights kept
      >>> path = Path(tempfile.mkdtemp()) / "model.ppx"
      >>> b = np.ones(100, np.float32)
      >>> save(path, {"w": w, "b": b}, {"w": w != 0, "b": b != 0})
      >>> print(size_report(path))  # doctest: +NORMALIZE_WHITESPACE
      layer                shape    dtype    kept     index  dense B  stored B  ratio
      -------------------------------------------------------------------------------
      params/w             100x100  float32  0.05%    gaps    40,000        25  0.001
      params/b             100      float32  100.00%  dense      400       400  1.000
      -------------------------------------------------------------------------------
      file (with headers)                                     40,400       ...  0.0...
    """
    body = read_body(path)
    layers = [
        _layer(f"{group}/{key}", record)
        for group in ("params", "batch_stats")
        for key, record in body[group].items()
    ]
    return SizeReport(layers, Path(path).stat().st_size)
