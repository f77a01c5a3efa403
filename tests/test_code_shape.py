"""The code's shape: no module over 450 lines and no function over 80 in `src/` and `flows/`.

Past those sizes a module holds several concerns and a function several steps; both are split
before they grow (the split names each piece, which is most of what makes them readable).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80
SOURCES = sorted(
    path.relative_to(REPO)
    for folder in ("src/digits", "flows")
    for path in (REPO / folder).rglob("*.py")
)


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than the limit, decorators excluded."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append((node.name, lines))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=str)
def test_module_and_function_sizes(path: Path) -> None:
    source = (REPO / path).read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path}: over {MAX_MODULE_LINES} lines"
    assert long_functions(source) == []


def test_the_size_check_finds_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]
