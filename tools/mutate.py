"""Mutation testing: plant one small bug at a time in a module and check that the tests see it.

Each mutant changes one place of the module's syntax tree: an arithmetic, bitwise, comparison or
boolean operator swapped for a neighbour (``<`` -> ``<=``, ``+`` -> ``-``, ``and`` -> ``or``), a
numeric constant moved by one, ``True``/``False`` swapped, a ``not``/``~``/unary minus dropped,
``minimum``/``maximum`` (and the like) swapped, an ``if`` condition negated, a ``for`` loop over
``range(...)`` cut to one round, or a statement (a call, an assignment, a ``raise``) replaced by
``pass``. Docstrings, strings, annotations and lines marked ``# no mutate`` are left alone.

For every mutant the chosen tests run with ``pytest -x`` and a timeout in a scratch copy of the
last commit (``git archive HEAD``: never in the working tree, and uncommitted edits are not
part of the run). A mutant is *killed* when the tests fail, *survived* when they pass,
*timeout* when they run past the limit twice (4 x the unmutated run + 2 min, then twice that:
an endless loop, counted as caught), and *invalid* when the mutated module does not compile
(not run, not counted).

Usage (CPU heavy: one pytest process per mutant; pin it where it disturbs nothing)::

    nice -n 10 taskset -c 0 python tools/mutate.py progprune/select.py \
        --out experiments/results/mutation/select.json

    python tools/mutate.py progprune/select.py --list          # the mutants, without running
    python tools/mutate.py --summary experiments/results/mutation/*.json   # a table
    python tools/mutate.py progprune/select.py --ids 12 40 \
        --out experiments/results/mutation/select.json        # rerun a few, merged in

The tests default to the module's entry in ``SUITES`` (``--tests`` chooses others);
``--every N`` runs a deterministic sample (the mutants whose id is a multiple of N).

The JSON report holds the commit that was mutated, the tests, each mutant's status and the
totals; it is rewritten after every mutant, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

# One replacement per operator: the neighbour a slip of the pen would produce.
BINOP_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
    ast.MatMult: ast.Mult,
}
COMPARE_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
NAME_SWAP = {
    "minimum": "maximum",
    "maximum": "minimum",
    "min": "max",
    "max": "min",
    "any": "all",
    "all": "any",
    "floor": "ceil",
    "ceil": "floor",
    "argmin": "argmax",
    "argmax": "argmin",
}
SKIP_MARK = "# no mutate"

# The fast tests that specify each core module: what a mutant of it must fail (first tests
# first: pytest -x stops at the first failure, so the quickest discriminating tests lead).
SUITES = {
    "progprune/select.py": ["tests/test_select.py", "tests/test_masks.py"],
    "progprune/masks.py": [
        "tests/test_masks.py",
        "tests/test_core_doctests.py::test_docstring_examples[progprune.masks]",
        "tests/test_errors.py",
        "tests/test_pruning_faults.py",
    ],
    "progprune/optimizer.py": [
        "tests/test_optimizer.py",
        "tests/test_core_doctests.py::test_docstring_examples[progprune.optimizer]",
        "tests/test_errors.py",
        "tests/test_pruning_faults.py",
    ],
    "progprune/schedules.py": [
        "tests/test_schedules.py",
        "tests/test_core_doctests.py::test_docstring_examples[progprune.schedules]",
        "tests/test_errors.py",
        "tests/test_pruning_faults.py",
    ],
    "progprune/distributions.py": [
        "tests/test_distributions.py",
        "tests/test_masks.py::test_exact_uniform_small_tree",
        "tests/test_masks.py::test_all_equal_weights_uniform_prunes_leading_entries",
        "tests/test_masks.py::test_only_empty_prunable_leaves_select_nothing",
        "tests/test_masks.py::test_erk_properties",
        "tests/test_masks.py::test_erk_dense_layer_capped_and_rest_resolved",
        "tests/test_masks.py::test_erk_masks_follow_densities_and_magnitudes",
        "tests/test_masks.py::test_multi_row_leaves_erk_prunes_each_layer_as_its_density_asks",
        "tests/test_masks.py::test_matches_numpy_reference",
        "tests/test_core_doctests.py::test_docstring_examples[progprune.distributions]",
        "tests/test_errors.py",
    ],
    "progprune/train/checkpoint.py": [
        "tests/test_checkpoint.py",
        "tests/test_workdir.py",
        "tests/test_train.py::test_nan_stops_with_message_and_keeps_last_good_checkpoint",
    ],
}


class Mutant(NamedTuple):
    id: int
    line: int
    col: int
    kind: str
    description: str


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and isinstance(parent, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    )


def _targets_all(node: ast.Assign) -> bool:
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def _walk(tree: ast.AST):
    """Nodes that may be mutated, in a fixed order, with their parent; skips annotations,
    docstrings, f-strings and the messages of raised errors."""
    stack: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        children = []
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment", "decorator_list"):
                continue
            if isinstance(node, ast.Raise) and field in ("exc", "cause"):
                continue  # the error's message and type; raising at all is still mutated
            if isinstance(node, ast.keyword) and node.arg == "strict":
                continue  # zip(..., strict=True) only adds a check
            if isinstance(node, ast.Assign) and _targets_all(node):
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, ast.AST) and not isinstance(item, ast.JoinedStr):
                    children.append(item)
        stack.extend((c, node) for c in reversed(children))


def _is_range(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (node.func.id == "range")
    )


def _mutations(node: ast.AST, parent: ast.AST | None) -> list[tuple[str, str]]:
    """(kind, description) of every mutation this node offers."""
    out = []
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in BINOP_SWAP:
        new = BINOP_SWAP[type(node.op)]
        out.append(("binop", f"{type(node.op).__name__} -> {new.__name__}"))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAP:
                out.append(
                    ("compare", f"{i}:{type(op).__name__} -> {COMPARE_SWAP[type(op)].__name__}")
                )
    elif isinstance(node, ast.BoolOp):
        new = "Or" if isinstance(node.op, ast.And) else "And"
        out.append(("boolop", f"{type(node.op).__name__} -> {new}"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert | ast.USub):
        out.append(("unary", f"drop {type(node.op).__name__}"))
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            out.append(("constant", f"{node.value} -> {not node.value}"))
        elif isinstance(node.value, int | float) and not isinstance(parent, ast.Expr):
            out.append(("constant", f"{node.value!r} -> {node.value + 1!r}"))
    elif isinstance(node, ast.Attribute | ast.Name):
        name = node.attr if isinstance(node, ast.Attribute) else node.id
        if name in NAME_SWAP and isinstance(node.ctx, ast.Load):
            out.append(("name", f"{name} -> {NAME_SWAP[name]}"))
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        out.append(("condition", "negate condition"))
    if isinstance(node, ast.For) and _is_range(node.iter):
        out.append(("loop", "range(...) -> range(1)"))
    statement = isinstance(node, ast.Expr | ast.Assign | ast.AugAssign | ast.Raise | ast.AnnAssign)
    exported = isinstance(node, ast.Assign) and _targets_all(node)
    if statement and not exported and not _is_docstring(node, parent):
        out.append(("delete", f"{type(node).__name__} -> pass"))
    return out


def _apply(node: ast.AST, kind: str, description: str) -> ast.AST:
    """Mutates ``node`` in place (or returns its replacement)."""
    if kind == "binop":
        node.op = BINOP_SWAP[type(node.op)]()
    elif kind == "compare":
        i = int(description.split(":")[0])
        node.ops[i] = COMPARE_SWAP[type(node.ops[i])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "unary":
        return node.operand
    elif kind == "constant":
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    elif kind == "name":
        if isinstance(node, ast.Attribute):
            node.attr = NAME_SWAP[node.attr]
        else:
            node.id = NAME_SWAP[node.id]
    elif kind == "condition":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind == "loop":
        node.iter = ast.Call(ast.Name("range", ast.Load()), [ast.Constant(1)], [])
    elif kind == "delete":
        return ast.Pass()
    return node


def enumerate_mutants(source: str) -> list[Mutant]:
    """Every mutant of a module's source, numbered in a fixed order."""
    lines = source.splitlines()
    out = []
    for node, parent in _walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if line and SKIP_MARK in lines[line - 1]:
            continue
        for kind, description in _mutations(node, parent):
            out.append(Mutant(len(out), line, getattr(node, "col_offset", 0), kind, description))
    return out


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, kind: str, description: str):
        self.target, self.kind, self.description = target, kind, description

    def generic_visit(self, node):
        if node is self.target:
            return _apply(node, self.kind, self.description)
        return super().generic_visit(node)


def mutant_source(source: str, mutant: Mutant) -> str:
    """The module's source with ``mutant`` applied (re-enumerated the same way)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    count = 0
    for node, parent in _walk(tree):
        line = getattr(node, "lineno", 0)
        if line and SKIP_MARK in lines[line - 1]:
            continue
        for kind, description in _mutations(node, parent):
            if count == mutant.id:
                tree = _Replace(node, kind, description).visit(copy.copy(tree))
                return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
            count += 1
    raise IndexError(f"no mutant {mutant.id}")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def scratch_copy(commit: str) -> Path:
    """The files of ``commit``, outside the repository: edits made meanwhile change nothing."""
    dest = Path(tempfile.mkdtemp(prefix="progprune-mutate-"))
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# Unchanged functions compile once for all mutants (read by jax when it is imported).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mutate-jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def preload() -> None:
    """Imports the heavy third-party libraries once, before any fork: each pytest run is a fork
    of this process and starts without paying ~3 s of imports. Nothing of progprune is imported
    here, and jax's backend is not started (each child starts its own, after conftest.py)."""
    import flax.linen  # noqa: F401
    import hypothesis  # noqa: F401
    import jax.numpy  # noqa: F401
    import ml_collections  # noqa: F401
    import optax  # noqa: F401
    import orbax.checkpoint  # noqa: F401
    import pytest  # noqa: F401


def _child(workdir: Path, tests: list[str], log: Path) -> None:
    """In the forked child: pytest on ``tests`` in ``workdir``; never returns."""
    code = 3
    try:
        os.setpgrp()  # its own process group: a timeout kills what the tests started too
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))  # the scratch copy's progprune, as `python -m` would
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests]))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """(status, seconds, last output lines) of one pytest run, in a forked child."""
    log = workdir.parent / f"{workdir.name}.log"
    start = time.time()
    pid = os.fork()
    if pid == 0:
        _child(workdir, tests, log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() - start > timeout:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.time() - start, ""
        time.sleep(0.05)
    seconds = time.time() - start
    tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    code = os.waitstatus_to_exitcode(status)
    # Failures (1), collection errors and crashes alike: the tests saw the mutant.
    return ("survived" if code == 0 else "killed"), seconds, tail


def _write(path: Path, report: dict, results: list[dict]) -> None:
    """Writes the report with ``results`` merged into its mutants (by id) and totals redone."""
    by_id = {r["id"]: r for r in report.get("mutants", [])}
    by_id.update({r["id"]: r for r in results})
    report["mutants"] = [by_id[i] for i in sorted(by_id)]
    counted = [r for r in report["mutants"] if r["status"] != "invalid"]
    report["run"] = len(report["mutants"])  # of report["enumerated"]
    for status in ("killed", "survived", "timeout", "invalid"):
        report[status] = sum(r["status"] == status for r in report["mutants"])
    report["caught_fraction"] = round(
        sum(r["status"] != "survived" for r in counted) / max(len(counted), 1), 4
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def run_mutants(module: str, mutants: list[Mutant], tests: list[str], timeout: float, out):
    """Runs each mutant in a scratch copy of the commit; yields one result dict per mutant."""
    work = scratch_copy(out["run_commit"])
    target = work / module
    source = target.read_text()
    lines = source.splitlines()
    try:
        status, baseline, tail = run_tests(work, tests, timeout=1800)
        if status != "survived":
            sys.exit(f"the tests fail without any mutant:\n{tail}")
        timeout = timeout or 4 * baseline + 120
        print(f"{len(mutants)} mutants; baseline {baseline:.1f} s; timeout {timeout:.0f} s")
        out.update(baseline_seconds=round(baseline, 1), timeout_seconds=round(timeout, 1))
        for m in mutants:
            mutated = mutant_source(source, m)
            snippet = lines[m.line - 1].strip()
            result = {**m._asdict(), "source": snippet, "commit": out["run_commit"]}
            try:
                compile(mutated, module, "exec")
            except SyntaxError:
                yield {**result, "status": "invalid", "seconds": 0.0}
                continue
            target.write_text(mutated)
            status, seconds, tail = run_tests(work, tests, timeout)
            if status == "timeout":  # a loaded machine, or really an endless loop: once more
                status, seconds, tail = run_tests(work, tests, 2 * timeout)
            target.write_text(source)
            print(
                f"{m.id:4d} {status:8s} {seconds:6.1f}s {module}:{m.line} "
                f"{m.description:28s} {snippet[:60]}",
                flush=True,
            )
            yield {**result, "status": status, "seconds": round(seconds, 1), "tail": tail}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(paths: list[str]) -> str:
    """A markdown table of reports: per module, mutants run / killed / survived / timed out."""
    lines = [
        "| module | commit | mutants (of enumerated) | killed | survived | timeout | caught |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        r = json.loads(Path(path).read_text())
        commits = sorted({m["commit"][:7] for m in r["mutants"]})
        lines.append(
            f"| `{r['module']}` | {', '.join(commits)} | {len(r['mutants'])} "
            f"(of {r.get('enumerated', '?')}) | "
            f"{r['killed']} | {r['survived']} | {r['timeout']} | {r['caught_fraction']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "module", nargs="?", help="path of the module to mutate, e.g. progprune/select.py"
    )
    parser.add_argument("--summary", nargs="+", help="print a table of these JSON reports")
    parser.add_argument(
        "--tests", nargs="+", help="pytest arguments (default: the module's entry in SUITES)"
    )
    parser.add_argument("--timeout", type=float, default=0, help="seconds per mutant (0: auto)")
    parser.add_argument("--ids", type=int, nargs="*", help="run only these mutants")
    parser.add_argument(
        "--every", type=int, default=1, help="run a sample: the mutants whose id is a multiple"
    )
    parser.add_argument("--out", help="JSON report; with --ids, the rerun mutants are merged in")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if not args.module:
        parser.error("a module to mutate is required (or --summary)")

    commit = _git("rev-parse", "HEAD")
    source = _git("show", f"{commit}:{args.module}") + "\n"
    mutants = enumerate_mutants(source)
    if args.list:
        lines = source.splitlines()
        for m in mutants:
            print(
                f"{m.id:4d} {args.module}:{m.line} {m.kind:9s} {m.description:28s} "
                f"{lines[m.line - 1].strip()[:70]}"
            )
        print(f"{len(mutants)} mutants")
        return
    tests = args.tests or SUITES.get(args.module)
    if not tests:
        parser.error(f"--tests is required: {args.module} has no entry in SUITES")
    chosen = [m for m in mutants if (m.id in args.ids if args.ids else m.id % args.every == 0)]
    preload()
    out = Path(args.out) if args.out else None
    report = {"module": args.module, "commit": commit, "tests": tests, "every": args.every}
    if out and args.ids is not None and out.exists():  # a rerun of a few: keep the rest
        report = json.loads(out.read_text())
        report.setdefault("reruns", []).append({"commit": commit, "ids": args.ids, "tests": tests})
    report["enumerated"] = len(mutants)
    report["run_commit"] = commit
    results = []
    for result in run_mutants(args.module, chosen, tests, args.timeout, report):
        results.append(result)
        if out:  # after every mutant, so an interrupted run keeps what it measured
            _write(out, report, results)
    totals = {s: sum(r["status"] == s for r in results) for s in ("killed", "survived", "timeout")}
    print(f"{len(results)} mutants run: {totals}")
    for r in results:
        if r["status"] == "survived":
            print(f"survived {r['id']:4d} line {r['line']}: {r['description']}: {r['source']}")


if __name__ == "__main__":
    main()
