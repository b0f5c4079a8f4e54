"""What every benchmark does last: write its JSON result and say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(out: str | Path, result: dict[str, Any], indent: int = 2) -> None:
    """Writes `result` as JSON to `out` (creating its folder) and prints the path.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "r" / "x.json"
    >>> write_result(out, {"commit": "abc"})  # doctest: +ELLIPSIS
    wrote .../r/x.json
    >>> json.loads(out.read_text())
    {'commit': 'abc'}
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent) + "\n")
    print(f"wrote {out}")
