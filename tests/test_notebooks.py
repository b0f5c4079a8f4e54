"""Every notebook in notebooks/ executes from top to bottom without error."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # Plots render to the Agg backend; the notebook's own asserts are part of the check.
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env={"MPLBACKEND": "Agg"} | _env())
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors


def _env() -> dict:
    import os

    env = dict(os.environ)
    # One host device is enough here; the suite's 8-device flag would only slow the kernel.
    env["XLA_FLAGS"] = ""
    # Each notebook's smoke size (a fraction of an epoch per run); the committed outputs are
    # from PROGPRUNE_NB_SIZE=full.
    env["PROGPRUNE_NB_SIZE"] = "small"
    # The kernel imports the progprune under test (this checkout), not another install.
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env
