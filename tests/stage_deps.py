"""Which first-party source files a DVC stage runs, and which of them its `deps` leave out.

A stage whose `deps` miss a module it imports goes stale silently: edit the module and `dvc repro`
says everything is up to date. This module finds every first-party file a stage's command can
execute by reading the code (no imports are run), so a test (tests/test_dvc_stages.py) can hold
`dvc.yaml` to it. It is a check on the repository, not part of the package:

    python -m tests.stage_deps     # per stage, the source files its deps do not cover

The walk is static and deliberately generous: every `import` in a file counts, those inside
functions (lazy imports) and under `if TYPE_CHECKING:` included, because a stage that reruns once
too often costs minutes while one that never reruns costs a wrong result. First-party means the
packages under `src/` and the top-level packages of the repository (`flows/`), plus, for a script,
the modules beside it (Python puts a script's folder first on `sys.path`). Everything else
(stdlib, third-party) is not followed. Names are resolved to files directly rather than with
`importlib.util.find_spec`, which imports the parent packages of a dotted name to find it.

A dep may be a file or a folder; a folder covers every file under it, so a package listed by its
folder (`src/digits/studies/convexity`) needs no new dep when a module is added to it.
"""

from __future__ import annotations

import ast
import shlex
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PYTHONS = {"python", "python3", f"python3.{sys.version_info.minor}"}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


class StageDepsError(ValueError):
    """A stage command or an import that cannot be resolved to first-party files."""


@dataclass(frozen=True)
class Stage:
    """One DVC stage after `foreach` expansion; paths and params as written in dvc.yaml."""

    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]  # keys in params.yaml; keys of other files as "file:key"


# ----------------------------------------------------------------------------- dvc.yaml


def _expand(value: Any, key: str, item: Any) -> Any:
    """Substitute `${item}`, `${item.field}` and `${key}` in every string of `value`."""
    if isinstance(value, str):
        if isinstance(item, Mapping):
            for field, field_value in item.items():
                value = value.replace(f"${{item.{field}}}", str(field_value))
        else:
            value = value.replace("${item}", str(item))
        return value.replace("${key}", key)
    if isinstance(value, list):
        return [_expand(v, key, item) for v in value]
    if isinstance(value, dict):
        return {_expand(k, key, item): _expand(v, key, item) for k, v in value.items()}
    return value


def _entries(section: list[Any] | None) -> Iterator[str]:
    """Paths from a deps/outs list, whose items are `path` or `{path: {options}}`."""
    for entry in section or []:
        yield from ([entry] if isinstance(entry, str) else entry)


def _params(section: list[Any] | None) -> Iterator[str]:
    """Keys from a params list: `key` (params.yaml) or `{file: [keys]}` (given as "file:key")."""
    for entry in section or []:
        if isinstance(entry, str):
            yield entry
            continue
        for file, keys in entry.items():
            for key in keys or []:
                yield key if file == "params.yaml" else f"{file}:{key}"


def load_stages(dvc_yaml: Path) -> dict[str, Stage]:
    """Every stage of `dvc_yaml`, `foreach` expanded into `name@item` (or `name@key` for a dict).

    Raises:
        StageDepsError: a stage uses a form this reader does not expand (`matrix`).
    """
    document = yaml.safe_load(dvc_yaml.read_text()) or {}
    stages: dict[str, Stage] = {}
    for name, spec in (document.get("stages") or {}).items():
        if "matrix" in spec:
            raise StageDepsError(f"{dvc_yaml}: stage {name!r} uses `matrix`, not expanded here")
        if "foreach" in spec:
            foreach = spec["foreach"]
            items = foreach.items() if isinstance(foreach, dict) else ((x, x) for x in foreach)
            expanded = {f"{name}@{key}": _expand(spec["do"], str(key), item) for key, item in items}
        else:
            expanded = {name: spec}
        for stage_name, body in expanded.items():
            cmd = body["cmd"]
            stages[stage_name] = Stage(
                cmd=" && ".join(cmd) if isinstance(cmd, list) else cmd,
                deps=tuple(_entries(body.get("deps"))),
                params=tuple(_params(body.get("params"))),
            )
    return stages


def stage_commands(dvc_yaml: Path) -> dict[str, str]:
    """Stage name (`name@item` for `foreach` stages) to its command, `${item}` substituted."""
    return {name: stage.cmd for name, stage in load_stages(dvc_yaml).items()}


# ----------------------------------------------------------------------------- import walk


@dataclass(frozen=True)
class _Layout:
    """Where first-party modules live: top-level name to the folder that holds it."""

    root: Path
    homes: Mapping[str, Path]
    script_dir: Path | None = None

    @classmethod
    def of(cls, root: Path, script_dir: Path | None = None) -> _Layout:
        homes: dict[str, Path] = {}
        for base in (root, root / "src"):  # src/ second: src layout wins a name clash
            if not base.is_dir():
                continue
            for child in base.iterdir():
                if (child / "__init__.py").is_file() and not child.name.startswith("."):
                    homes[child.name] = base
                elif base != root and child.suffix == ".py":
                    homes[child.stem] = base
        return cls(root, homes, script_dir)

    def files_of(self, module: str) -> list[Path] | None:
        """Files that run when `module` is imported: each package `__init__.py`, then the module.

        None when `module` is not first-party. Raises StageDepsError when it looks first-party
        but no file exists (a stale import the stage would crash on).
        """
        parts = module.split(".")
        bases = [self.script_dir] if self.script_dir else []
        if parts[0] in self.homes:
            bases.append(self.homes[parts[0]])
        for base in bases:
            if (found := _module_files(base, parts)) is not None:
                return found
        if parts[0] in self.homes:
            raise StageDepsError(f"import of {module!r}: no such module under {self.root}")
        return None

    def module_name(self, path: Path) -> str:
        """Dotted name of a first-party file (`src/digits/a/b.py` -> `digits.a.b`)."""
        base = next(
            (b for b in (self.root / "src", self.root) if path.is_relative_to(b)), path.parent
        )
        parts = list(path.relative_to(base).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_files(base: Path, parts: list[str]) -> list[Path] | None:
    files = []
    for depth in range(1, len(parts) + 1):
        here = base.joinpath(*parts[:depth])
        if (here / "__init__.py").is_file():
            files.append(here / "__init__.py")
        elif depth == len(parts) and here.with_suffix(".py").is_file():
            files.append(here.with_suffix(".py"))
        else:
            return None
    return files


@dataclass(frozen=True)
class _Import:
    module: str
    line: int
    maybe: bool = False  # `b` of `from a import b`: a submodule or just a name defined in `a`


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[_Import]:
    """Every import anywhere in `tree`, function bodies included.

    `from a import b` yields `a` and, as `maybe`, `a.b`; `importlib.import_module("literal")`
    counts as an import.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..x import y` climbs level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if node.module:
                yield _Import(base, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    yield _Import(f"{base}.{alias.name}".lstrip("."), node.lineno, maybe=True)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield _Import(node.args[0].value, node.lineno)


def _walk(start: Iterable[Path], layout: _Layout) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for found in _imports(tree, layout.module_name(path), path.name == "__init__.py"):
            try:
                files = layout.files_of(found.module)
            except StageDepsError as error:
                if found.maybe:  # `from pkg import name`: a name defined in pkg, not a module
                    continue
                raise StageDepsError(f"{path}:{found.line}: {error}") from None
            todo.extend(f for f in files or [] if f not in seen)
    return seen


def _console_scripts(root: Path) -> dict[str, str]:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return {name: target.partition(":")[0] for name, target in project.get("scripts", {}).items()}


def _entries_of_command(command: str, root: Path) -> Iterator[tuple[str, str]]:
    """("script", path) or ("module", name) for each program a shell command line runs."""
    tokens = shlex.split(command)
    programs: list[list[str]] = [[]]
    for token in tokens:
        if token in SHELL_SEPARATORS:
            programs.append([])
        else:
            programs[-1].append(token)
    scripts = _console_scripts(root)
    for argv in filter(None, programs):
        while argv and "=" in argv[0] and not argv[0].startswith("-"):  # VAR=value prefix
            argv = argv[1:]
        program = Path(argv[0]).name if argv else ""
        if program in scripts:
            yield "module", scripts[program]
        elif program in PYTHONS and len(argv) > 2 and argv[1] == "-m":
            yield "module", argv[2]
        elif program in PYTHONS and len(argv) > 1 and argv[1].endswith(".py"):
            yield "script", argv[1]
        elif argv[0].endswith(".py"):
            yield "script", argv[0]
        else:
            raise StageDepsError(
                f"cannot tell which Python code {command!r} runs; expected `python FILE.py`, "
                f"`python -m MODULE` or one of the console scripts {sorted(scripts)}"
            )


def source_modules(entry: str | Path, root: Path) -> set[Path]:
    """Every first-party source file that running `entry` can execute, repo-relative.

    Args:
        entry: a stage command (`python flows/tune_mnist.py`, `digits pull mnist`,
            `python -m digits.x`; console scripts are looked up in pyproject's
            `[project.scripts]`) or the path of a script.
        root: the repository root.

    Returns:
        Paths relative to `root`: the entry file, every module it imports transitively (imports
        inside functions included) and the `__init__.py` of every package on the way.

    Raises:
        StageDepsError: the command is not one of the forms above, or a first-party import names
            a module that does not exist.
    """
    root = root.resolve()
    is_script = isinstance(entry, Path) or (root / entry).is_file()
    entries = [("script", str(entry))] if is_script else list(_entries_of_command(str(entry), root))
    found: set[Path] = set()
    for kind, target in entries:
        if kind == "script":
            script = (root / target).resolve()
            if not script.is_file():
                raise StageDepsError(f"{target}: no such script under {root}")
            found |= _walk([script], _Layout.of(root, script_dir=script.parent))
        else:
            layout = _Layout.of(root)
            files = layout.files_of(target)
            if not files:
                raise StageDepsError(f"{target}: not a first-party module under {root}")
            found |= _walk(files, layout)
    return {path.relative_to(root) for path in found}


def missing_deps(stage_cmd: str, deps: Iterable[str], root: Path) -> list[Path]:
    """Source files `stage_cmd` runs that no entry of `deps` covers, sorted.

    A dep covers a file when it is the file or a folder above it (`src/digits/data` covers
    `src/digits/data/prepare.py` and any module added there later).
    """
    covering = [Path(dep.rstrip("/")) for dep in deps]
    return sorted(
        path
        for path in source_modules(stage_cmd, root)
        if not any(path == dep or path.is_relative_to(dep) for dep in covering)
    )


def unused_source_deps(stage_cmd: str, deps: Iterable[str], root: Path) -> list[str]:
    """Deps under `src/` or `flows/` that cover no file `stage_cmd` runs (needless reruns)."""
    used = source_modules(stage_cmd, root)
    return [
        dep
        for dep in deps
        if dep.startswith(("src/", "flows/"))
        and not any(path.is_relative_to(dep.rstrip("/")) for path in used)
    ]


def main(argv: list[str] | None = None) -> int:
    """Print, per stage of dvc.yaml, the source files its deps miss; exit 1 when any are missing.

    Also names source deps the command no longer imports (they only cause needless reruns).
    """
    args = sys.argv[1:] if argv is None else argv
    dvc_yaml = Path(args[0]) if args else Path("dvc.yaml")
    root = dvc_yaml.resolve().parent
    status = 0
    for name, stage in load_stages(dvc_yaml).items():
        try:
            missing = missing_deps(stage.cmd, stage.deps, root)
        except StageDepsError as error:
            print(f"{name}: error: {error}")
            status = 1
            continue
        print(f"{name}: {'ok' if not missing else 'deps miss:'}")
        for path in missing:
            print(f"    - {path.as_posix()}")
        for dep in unused_source_deps(stage.cmd, stage.deps, root):
            print(f"    (not imported, could go: {dep})")
        status |= bool(missing)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
