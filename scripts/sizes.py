"""Count source functions over 50 lines and modules over 500 lines (the limits of ../shared/STYLE.md).

    python scripts/sizes.py [--max-function 50] [--max-module 500] [--json] [PATH ...]

Defaults to the project's source: device_agent, toolchain, fleet, models, scripts and bench
(tests are measured with --tests). Alembic migrations are left out: a migration is a frozen
snapshot of the schema, not code to split. A function's length runs from its ``def`` line (or
first decorator) to its last line, docstring included; a module's is its line count. Exits 1 when
anything is over a limit, so `make test` can run it.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ("device_agent", "toolchain", "fleet", "models", "scripts", "bench")
EXCLUDED_PARTS = {"migrations", ".venv", "__pycache__"}


@dataclass(frozen=True)
class Oversize:
    path: str
    name: str
    lines: int


def python_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        candidates = [p] if p.is_file() else sorted(p.rglob("*.py"))
        files += [f for f in candidates if not EXCLUDED_PARTS.intersection(f.relative_to(ROOT).parts)]
    return files


def function_sizes(path: Path) -> list[tuple[str, int]]:
    """Every function and method in ``path`` as (qualified name, lines)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    sizes: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                end = child.end_lineno or child.lineno
                sizes.append((f"{prefix}{child.name}", end - start + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return sizes


def measure(files: list[Path], max_function: int, max_module: int) -> dict[str, object]:
    functions: list[Oversize] = []
    modules: list[Oversize] = []
    n_functions = 0
    for f in files:
        rel = str(f.relative_to(ROOT))
        n_lines = len(f.read_text(encoding="utf-8").splitlines())
        if n_lines > max_module:
            modules.append(Oversize(rel, "<module>", n_lines))
        for name, lines in function_sizes(f):
            n_functions += 1
            if lines > max_function:
                functions.append(Oversize(rel, name, lines))
    return {
        "modules": len(files),
        "functions": n_functions,
        "max_function_lines": max_function,
        "max_module_lines": max_module,
        "functions_over": [asdict(o) for o in sorted(functions, key=lambda o: -o.lines)],
        "modules_over": [asdict(o) for o in sorted(modules, key=lambda o: -o.lines)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--max-function", type=int, default=50)
    parser.add_argument("--max-module", type=int, default=500)
    parser.add_argument("--tests", action="store_true", help="measure tests/ too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    roots = [p.resolve() for p in args.paths] or [ROOT / s for s in SOURCE] + ([ROOT / "tests"] if args.tests else [])
    report = measure(python_files(roots), args.max_function, args.max_module)
    over_f = report["functions_over"]
    over_m = report["modules_over"]
    assert isinstance(over_f, list) and isinstance(over_m, list)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for o in over_m:
            print(f"module   {o['path']}: {o['lines']} lines > {args.max_module}")
        for o in over_f:
            print(f"function {o['path']}:{o['name']}: {o['lines']} lines > {args.max_function}")
        print(
            f"{report['modules']} modules, {report['functions']} functions: {len(over_m)} modules over "
            f"{args.max_module} lines, {len(over_f)} functions over {args.max_function} lines"
        )
    return 1 if over_f or over_m else 0


if __name__ == "__main__":
    sys.exit(main())
