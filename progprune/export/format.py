"""The export file: a pruned model's params, masks and batch statistics, stored compactly.

On-disk layout, version 1. The file is one MessagePack map written by
``flax.serialization.msgpack_serialize`` (arrays use flax's ndarray extension type: shape,
dtype name, row-major bytes; ``flax.serialization.msgpack_restore`` reads it back)::

    {"format": "progprune.export",       # always the first key: says what the file is
     "version": 1,
     "sha256": "<hex digest of body>",   # a truncated or altered file fails this check
     "body": <bytes>}                    # zlib stream (RFC 1950) of msgpack_serialize(BODY)

    BODY = {"metadata": "<JSON text>",   # free-form: model name, config, step, ...
            "structure": "<JSON text>",  # the containers of params, masks and batch_stats
            "params": {"<path>": LEAF, ...},
            "batch_stats": {"<path>": LEAF, ...}}

    LEAF = {"encoding": "dense" | "bitmask" | "gaps",
            "shape": [d0, d1, ...],
            "values": ndarray,           # 1-D, the leaf's dtype
            "index": ndarray}            # absent for "dense"

``<path>`` is the '/'-joined key path of a leaf (``fc1/kernel``; list entries by position).
Encodings, one per leaf, the cheapest for that leaf's density:

- ``dense``: ``values`` is the whole leaf (its mask is all True: biases, norm parameters,
  batch statistics, unpruned layers).
- ``bitmask``: ``values`` holds the kept entries in row-major order; ``index`` is the mask
  packed by ``numpy.packbits`` (big bit order): ``ceil(n / 8)`` bytes.
- ``gaps``: ``values`` as for ``bitmask``; ``index[i]`` is the number of pruned entries just
  before kept entry ``i`` (after kept entry ``i - 1``), in the smallest unsigned integer dtype
  that holds the largest gap. Used when smaller than the bitmask, i.e. below a density of
  about 1/8 (uint8 gaps) or 1/16 (uint16 gaps).

Pruned entries are not stored: they must be exactly ``+0.0`` in the params (``progprune.masked``
guarantees it for every trained weight) and are restored as ``+0.0``, so a reload is
bit-identical. ``structure`` describes each tree as nested JSON nodes: ``{"dict": {key: node}}``,
``{"frozendict": {key: node}}``, ``{"list": [node, ...]}``, ``{"tuple": [node, ...]}``,
``"none"`` or ``"leaf"``; the masks have their own entry, so their containers come back as they
were saved even where they differ from the params'.

The body is compressed with zlib (level 1): it shrinks the indices (most bytes of uint16 gaps
are 0), the paths and, a little, the float exponents; the SHA-256 covers the compressed bytes,
so damage is found before anything is decompressed. A file is written to a temporary name in the
target directory and renamed over the target only once complete: a failed save leaves any
earlier file untouched. A MessagePack object is limited to 4 GiB, which bounds the compressed
body (not the dense model).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np
from flax.core import FrozenDict
from flax.serialization import msgpack_restore, msgpack_serialize

PyTree = Any
FORMAT = "progprune.export"
VERSION = 1
# Every file starts with a fixmap byte, then these: how a non-export is told from a damaged one.
_MAGIC = msgpack.packb("format") + msgpack.packb(FORMAT)
_GAP_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
# Level 1: on float weights the higher levels save under 2% more and take 2-3x longer.
_ZLIB_LEVEL = 1
_WRITER = "progprune.export.save or python -m progprune.export --workdir=RUN --out=FILE"
_FIX = f"write it again ({_WRITER})"

__all__ = [
    "CorruptExportError",
    "Export",
    "ExportError",
    "MaskMismatchError",
    "NotAnExportError",
    "decode_leaf",
    "encode_leaf",
    "load",
    "load_export",
    "read_body",
    "save",
]


class ExportError(ValueError):
    """Something an export cannot store or a file that cannot be read as one."""


class NotAnExportError(ExportError):
    """The file was not written by `save` (its first bytes say so)."""


class CorruptExportError(ExportError):
    """An export that is truncated or altered: its checksum or its structure does not hold."""


class MaskMismatchError(ExportError):
    """Masks whose paths or shapes differ from the params'."""


class Export(NamedTuple):
    """Everything an export file holds (`load_export`).

    Attributes:
      params: the params, in the containers they were saved in; leaves are numpy arrays.
      masks: bool numpy arrays, True = kept, in the masks' own containers.
      batch_stats: BatchNorm statistics as saved (``None`` if none were passed).
      metadata: the JSON-able dict passed to `save` (``{}`` if none).
    """

    params: PyTree
    masks: PyTree
    batch_stats: PyTree
    metadata: dict[str, Any]


# -- trees: containers as JSON, leaves by path ---------------------------------------------


def _describe(tree: PyTree, path: str, leaves: dict[str, Any]) -> Any:
    """The JSON node of `tree`; fills `leaves` with ``path -> leaf``."""
    kinds = {dict: "dict", FrozenDict: "frozendict", list: "list", tuple: "tuple"}
    kind = kinds.get(type(tree))
    if kind in ("dict", "frozendict"):
        for key in tree:
            if not isinstance(key, str):
                raise ExportError(f"key {key!r} at {path or 'the root'!r} is not a string.")
        return {kind: {k: _describe(v, _join(path, k), leaves) for k, v in tree.items()}}
    if kind is not None:
        return {kind: [_describe(v, _join(path, str(i)), leaves) for i, v in enumerate(tree)]}
    if tree is None:
        return "none"
    if not (hasattr(tree, "shape") and hasattr(tree, "dtype")) and not isinstance(
        tree, int | float | bool
    ):
        raise ExportError(
            f"cannot export a {type(tree).__name__} at {path or 'the root'!r}: trees of "
            "dict, FrozenDict, list and tuple with array leaves only (an nnx.State converts "
            "with .to_pure_dict(), other pytrees with flax.serialization.to_state_dict)."
        )
    if path in leaves:
        raise ExportError(f"two leaves share the path {path!r}; rename one of the keys.")
    leaves[path] = tree
    return "leaf"


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _build(node: Any, path: str, leaves: dict[str, Any]) -> PyTree:
    """Inverse of `_describe`: the tree of `node` with leaves from ``leaves[path]``."""
    if node == "leaf":
        return leaves[path]
    if node == "none":
        return None
    ((kind, items),) = node.items()
    if kind in ("dict", "frozendict"):
        d = {k: _build(v, _join(path, k), leaves) for k, v in items.items()}
        return FrozenDict(d) if kind == "frozendict" else d
    seq = [_build(v, _join(path, str(i)), leaves) for i, v in enumerate(items)]
    return tuple(seq) if kind == "tuple" else seq


# -- leaves: kept values plus the cheapest index -------------------------------------------


def _gap_dtype(largest: int) -> np.dtype:
    return np.dtype(next(d for d in _GAP_DTYPES if largest <= np.iinfo(d).max))


def encode_leaf(path: str, value: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """The LEAF record of one array (see the module docstring); `mask` None means all kept.

    >>> w = np.zeros(16, np.float32)
    >>> w[9] = 2.0  # one kept entry: a 1-byte gap (9 pruned before it) beats a 2-byte bitmask
    >>> rec = encode_leaf("w", w, w != 0)
    >>> rec["encoding"], rec["values"].tolist(), rec["index"].tolist()
    ('gaps', [2.0], [9])
    """
    flat = value.reshape(-1)
    shape = list(value.shape)
    if mask is None or mask.all():
        return {"encoding": "dense", "shape": shape, "values": flat}
    keep = mask.reshape(-1)
    pruned = flat[~keep].view(np.uint8).reshape(-1, flat.itemsize).any(axis=1)
    if pruned.any():
        raise ExportError(
            f"params leaf {path!r} is not 0.0 at {int(pruned.sum())} pruned positions (mask "
            "False); an export drops pruned weights, so they must be exactly +0.0. Zero them "
            "first: params = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, masks)."
        )
    positions = np.flatnonzero(keep)
    gaps = np.diff(positions, prepend=-1) - 1
    gap_dtype = _gap_dtype(int(gaps.max()) if gaps.size else 0)
    record = {"shape": shape, "values": flat[keep]}
    if gaps.size * gap_dtype.itemsize < math.ceil(flat.size / 8):
        return {"encoding": "gaps", **record, "index": gaps.astype(gap_dtype)}
    return {"encoding": "bitmask", **record, "index": np.packbits(keep)}


def decode_leaf(path: str, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(value, mask)`` of a LEAF record; the inverse of `encode_leaf`.

    >>> rec = encode_leaf("w", np.array([[0.0, 2.0], [3.0, 0.0]], np.float32),
    ...                   np.array([[False, True], [True, False]]))
    >>> value, mask = decode_leaf("w", rec)
    >>> value.tolist(), mask.tolist()
    ([[0.0, 2.0], [3.0, 0.0]], [[False, True], [True, False]])
    """
    try:
        shape, values, encoding = tuple(record["shape"]), record["values"], record["encoding"]
        n = math.prod(shape)
        if encoding == "dense":
            return np.array(values).reshape(shape), np.ones(shape, bool)
        if encoding == "bitmask":
            keep = np.unpackbits(record["index"], count=n).astype(bool)
        elif encoding == "gaps":
            keep = np.zeros(n, bool)
            keep[np.cumsum(record["index"].astype(np.int64) + 1) - 1] = True
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        flat = np.zeros(n, values.dtype)
        flat[keep] = values
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CorruptExportError(f"leaf {path!r} cannot be decoded ({e}); {_FIX}.") from None
    return flat.reshape(shape), keep.reshape(shape)


# -- the file ------------------------------------------------------------------------------


def _flatten_checked(params: PyTree, masks: PyTree) -> tuple[Any, Any, dict, dict]:
    """Structures and ``path -> leaf`` of params and masks, after checking they pair up."""
    p_leaves: dict[str, Any] = {}
    m_leaves: dict[str, Any] = {}
    p_node = _describe(params, "", p_leaves)
    m_node = _describe(masks, "", m_leaves)
    if set(p_leaves) != set(m_leaves):
        missing = sorted(set(p_leaves) - set(m_leaves))[:3]
        extra = sorted(set(m_leaves) - set(p_leaves))[:3]
        raise MaskMismatchError(
            f"masks must have the params' structure: missing {missing}, extra {extra}; pass "
            "the masks of these params (progprune.get_masks(opt_state))."
        )
    for path, p in p_leaves.items():
        if np.shape(m_leaves[path]) != np.shape(p):
            raise MaskMismatchError(
                f"mask {path!r} has shape {np.shape(m_leaves[path])} but the param has "
                f"{np.shape(p)}; pass the masks of these params (progprune.get_masks(opt_state))."
            )
    return p_node, m_node, p_leaves, m_leaves


def save(
    path: str | os.PathLike,
    params: PyTree,
    masks: PyTree,
    *,
    batch_stats: PyTree = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Writes params, masks (and batch statistics) to `path`, storing only kept weights.

    Args:
      path: the file to write (its directory is created); replaced only once complete.
      params: pytree of dicts, FrozenDicts, lists and tuples with array leaves (any dtype,
        bfloat16 included). Weights whose mask is False must be exactly 0.0.
      masks: bool pytree with the params' paths and shapes (True = kept).
      batch_stats: optional BatchNorm statistics, stored as they are.
      metadata: optional JSON-able dict (model name, config, ...) returned by `load_export`.

    Raises:
      MaskMismatchError: if masks and params do not pair up leaf by leaf.
      ExportError: for a non-zero pruned weight or a tree that cannot be stored.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.0, 2.0], [0.0, 0.0]])}
      >>> path = Path(tempfile.mkdtemp()) / "model.ppx"
      >>> save(path, params, {"w": params["w"] != 0})
      >>> load(path)[0]["w"].tolist()
      [[0.0, 2.0], [0.0, 0.0]]
    """
    p_node, m_node, p_leaves, m_leaves = _flatten_checked(params, masks)
    b_leaves: dict[str, Any] = {}
    b_node = _describe(batch_stats, "", b_leaves)
    try:
        meta_text = json.dumps(metadata or {})
    except TypeError as e:
        raise ExportError(f"metadata must be JSON-able ({e}).") from None
    body = {
        "metadata": meta_text,
        "structure": json.dumps(
            {"params": p_node, "masks": m_node, "batch_stats": b_node}, separators=(",", ":")
        ),
        "params": {
            k: encode_leaf(k, np.asarray(v), np.asarray(m_leaves[k], bool))
            for k, v in p_leaves.items()
        },
        "batch_stats": {k: encode_leaf(k, np.asarray(v), None) for k, v in b_leaves.items()},
    }
    body_bytes = zlib.compress(msgpack_serialize(body, in_place=True), _ZLIB_LEVEL)
    digest = hashlib.sha256(body_bytes).hexdigest()
    header = {"format": FORMAT, "version": VERSION, "sha256": digest, "body": body_bytes}
    _write_atomically(Path(path), msgpack_serialize(header, in_place=True))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_body(path: str | os.PathLike) -> dict[str, Any]:
    """The checked body of an export (encoded leaves; see the module docstring).

    Raises:
      FileNotFoundError: if `path` does not exist.
      NotAnExportError: if `path` is not an export file.
      CorruptExportError: if it is truncated or altered.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no export file at {str(path)!r}; write one with {_WRITER}.")
    if path.is_dir():
        raise NotAnExportError(f"{str(path)!r} is a directory; pass a file written by {_WRITER}.")
    data = path.read_bytes()
    if not (data[:1] and 0x80 <= data[0] <= 0x8F and data[1 : 1 + len(_MAGIC)] == _MAGIC):
        raise NotAnExportError(
            f"{str(path)!r} is not a progprune export; pass a file written by {_WRITER}."
        )
    try:
        header = msgpack_restore(data)
        body_bytes = header["body"]
        version = header["version"]
        intact = hashlib.sha256(body_bytes).hexdigest() == header["sha256"]
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise CorruptExportError(
            f"{str(path)!r} is truncated or corrupt ({type(e).__name__}); {_FIX}."
        ) from None
    if not intact:
        raise CorruptExportError(f"{str(path)!r} is corrupt (checksum mismatch); {_FIX}.")
    if version != VERSION:
        raise NotAnExportError(
            f"{str(path)!r} is export version {version}; this progprune reads version "
            f"{VERSION}. Use the progprune that wrote it, or export the run again."
        )
    try:
        return msgpack_restore(zlib.decompress(body_bytes))
    except Exception as e:  # noqa: BLE001 - the checksum held, so the writer was at fault
        raise CorruptExportError(f"{str(path)!r} has an unreadable body ({e}); {_FIX}.") from None


def load_export(path: str | os.PathLike) -> Export:
    """Reads everything an export holds: params, masks, batch statistics and metadata.

    Example:
      >>> export = load_export("model.ppx")  # doctest: +SKIP
      >>> export.metadata["model"]  # doctest: +SKIP
      'lenet300_100'
    """
    body = read_body(path)
    structure = json.loads(body["structure"])
    values, masks = {}, {}
    for key, record in body["params"].items():
        values[key], masks[key] = decode_leaf(key, record)
    stats = {key: decode_leaf(key, rec)[0] for key, rec in body["batch_stats"].items()}
    try:
        return Export(
            params=_build(structure["params"], "", values),
            masks=_build(structure["masks"], "", masks),
            batch_stats=_build(structure["batch_stats"], "", stats),
            metadata=json.loads(body["metadata"]),
        )
    except (KeyError, ValueError, AttributeError) as e:
        raise CorruptExportError(f"{str(path)!r} has an inconsistent structure ({e}).") from None


def load(path: str | os.PathLike) -> tuple[PyTree, PyTree]:
    """Reads ``(params, masks)`` from an export; bit-identical to what `save` was given.

    Leaves come back as numpy arrays of the saved dtypes, in the saved containers.

    Raises:
      FileNotFoundError, NotAnExportError, CorruptExportError: see `read_body`.

    Example:
      >>> params, masks = load("model.ppx")  # doctest: +SKIP
      >>> variables = {"params": params}  # ready for model.apply  # doctest: +SKIP
    """
    export = load_export(path)
    return export.params, export.masks
