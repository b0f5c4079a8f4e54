"""Every notebook in notebooks/ runs from top to bottom, every cell, with no error anywhere.

The kernel runs with ``allow_errors=True`` so that every cell runs and every error is collected
and reported (nbclient would otherwise stop at the first one); a notebook's own ``assert``s
count as errors. Each notebook runs at its smoke size (``PROGPRUNE_NB_SIZE=small``, which a
notebook may read to shorten its training) against this checkout's progprune. The committed
outputs are the reference for what kind of output each cell shows: a cell that showed a plot
or printed something must still do so.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


def _env() -> dict:
    env = dict(os.environ)
    # Plots go through the kernel's inline backend (no display needed), so they show as outputs.
    env.pop("MPLBACKEND", None)
    # One host device is enough here; the suite's 8-device flag would only slow the kernel.
    env["XLA_FLAGS"] = ""
    # Each notebook's smoke size (a fraction of an epoch per run); the committed outputs are
    # from PROGPRUNE_NB_SIZE=full.
    env["PROGPRUNE_NB_SIZE"] = "small"
    # The kernel imports the progprune under test (this checkout), not another install.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _kinds(cell) -> set[str]:
    """What a cell shows: stream, image, text result... (not the values, which vary)."""
    kinds = set()
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            kinds.add(f"stream:{out.name}")
        elif out.output_type in ("display_data", "execute_result"):
            kinds.add("image" if any(k.startswith("image/") for k in out.data) else "result")
    return kinds - {"stream:stderr"}  # warnings come and go with library versions


def _errors(nb) -> list[str]:
    return [
        f"cell {i}: {out.ename}: {out.evalue}\n{cell.source[:300]}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_every_cell_without_error(path, tmp_path):
    committed = nbformat.read(path, as_version=4)
    assert not _errors(committed), f"{path.name} was committed with errors"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # nothing carried over from the committed run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=_env())
    errors = _errors(nb)
    assert not errors, "\n\n".join(errors)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code, f"{path.name} has no code"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    before = [c for c in committed.cells if c.cell_type == "code" and c.source.strip()]
    for i, (old, new) in enumerate(zip(before, code, strict=True)):
        missing = _kinds(old) - _kinds(new)
        assert not missing, f"{path.name}, code cell {i}: no {missing} output any more"
