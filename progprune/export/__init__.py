"""Export a pruned model to a compact file, reload it bit-identically, check its accuracy.

A progprune run ends with dense arrays full of exact zeros. An export stores, per pruned
layer, only the kept weights and the cheapest index of where they sit (a bitmask, or the gaps
between kept positions for very sparse layers); everything else (biases, norm parameters,
BatchNorm statistics) as it is. The file is MessagePack written by ``flax.serialization`` with a
SHA-256 checksum; ``progprune.export.format`` documents the layout.

    >>> import progprune.export as ppx                         # doctest: +SKIP
    >>> ppx.save("model.ppx", params, masks)                   # doctest: +SKIP
    >>> params, masks = ppx.load("model.ppx")                  # doctest: +SKIP
    >>> print(ppx.size_report("model.ppx"))                    # doctest: +SKIP

From a training run (the latest checkpoint: params, batch statistics, masks, the model name and
the run's config), and back to its test accuracy::

    python -m progprune.export --workdir=runs/quickstart --out=quickstart.ppx
    python -m progprune.export --check=quickstart.ppx

The same from Python: ``progprune.export.runs.export_run`` and ``evaluate_export`` (they import
the trainer, so they are not imported here).

Sparse inference: for batched inference of a fully connected stack (LeNet-300-100) at 90-99%
sparsity, ``to_sparse_mlp`` + ``sparse_mlp_apply`` (BCSR kernels) measured 1.6-5x faster than
the dense forward at batch 128 on a CPU, and 1.5-11x slower at batch 1
(``progprune.export.sparse`` has the numbers; everywhere else the dense model is the faster).
"""

from progprune.export.format import (
    CorruptExportError,
    Export,
    ExportError,
    MaskMismatchError,
    NotAnExportError,
    load,
    load_export,
    save,
)
from progprune.export.report import LayerSize, SizeReport, size_report
from progprune.export.sparse import SparseLinear, SparseMLP, sparse_mlp_apply, to_sparse_mlp

__all__ = [
    "CorruptExportError",
    "Export",
    "ExportError",
    "LayerSize",
    "MaskMismatchError",
    "NotAnExportError",
    "SizeReport",
    "SparseLinear",
    "SparseMLP",
    "load",
    "load_export",
    "save",
    "size_report",
    "sparse_mlp_apply",
    "to_sparse_mlp",
]
