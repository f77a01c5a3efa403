"""dvc.yaml cannot go stale: each stage depends on the code it runs and on the params it reads.

A stage whose deps miss a module it imports keeps its old results after that module changes;
`dvc repro` would call them up to date. The walker in `tests/stage_deps.py` reads the imports
(lazy ones included), and these tests hold every stage of dvc.yaml to it, new stages included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.stage_deps import (
    StageDepsError,
    load_stages,
    missing_deps,
    source_modules,
    stage_commands,
    unused_source_deps,
)

ROOT = Path(__file__).resolve().parents[1]
STAGES = load_stages(ROOT / "dvc.yaml")
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# Where work runs and where results are recorded; neither changes a result.
NOT_RESULT_PARAMS = {"compute", "tracking"}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _lookup(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf under `tree` (`{"a": {"b": 1}}` -> `["a.b"]`)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix]
    return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else k)]


def _unprofiled(key: str) -> str:
    """`profiles.quick.mnist.folds` -> `mnist.folds`; other keys unchanged."""
    parts = key.split(".")
    return ".".join(parts[2:]) if parts[0] == "profiles" else key


def _covers(key: str, leaf: str) -> bool:
    return leaf == key or leaf.startswith(f"{key}.")


# ----------------------------------------------------------------------------- the real dvc.yaml


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_every_source_file_its_command_imports(stage: str) -> None:
    missing = missing_deps(STAGES[stage].cmd, STAGES[stage].deps, ROOT)
    assert not missing, (
        f"dvc.yaml stage {stage!r} ({STAGES[stage].cmd}) imports files its deps miss: "
        f"{[p.as_posix() for p in missing]}; add them (or their folder) to its deps "
        "(python -m tests.stage_deps lists them all)"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_stage_source_deps_exist(stage: str) -> None:
    # A moved module leaves its old path behind in deps, which DVC reports only at repro.
    gone = [
        dep
        for dep in STAGES[stage].deps
        if dep.startswith(("src/", "flows/")) and not (ROOT / dep).exists()
    ]
    assert not gone, f"dvc.yaml stage {stage!r} depends on source paths that do not exist: {gone}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_leave_out_compute_and_tracking(stage: str) -> None:
    listed = [k for k in STAGES[stage].params if _unprofiled(k).split(".")[0] in NOT_RESULT_PARAMS]
    assert not listed, f"dvc.yaml stage {stage!r} lists {listed} in params; they change no result"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_exist_in_params_yaml(stage: str) -> None:
    unknown = [k for k in STAGES[stage].params if ":" in k or not _lookup(PARAMS, k)]
    assert not unknown, f"dvc.yaml stage {stage!r} lists params not in params.yaml: {unknown}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_include_profile_overrides_of_what_it_reads(stage: str) -> None:
    # `profile: quick` changes the keys under profiles.quick, so a stage reading `mnist` must
    # also list `profiles.quick.mnist` (and `profile`), or a quick run would not rerun it.
    declared = STAGES[stage].params
    reads = [k for k in declared if k != "profile" and not k.startswith("profiles.")]
    needed = {
        f"profiles.{name}.{leaf}"
        for name, overrides in (PARAMS.get("profiles") or {}).items()
        for leaf in _leaves(overrides)
        if any(_covers(key, leaf) or _covers(leaf, key) for key in reads)
    }
    uncovered = sorted(
        override for override in needed if not any(_covers(key, override) for key in declared)
    )
    assert not uncovered, f"dvc.yaml stage {stage!r} misses profile overrides: {uncovered}"
    assert not needed or "profile" in declared, f"dvc.yaml stage {stage!r} misses `profile`"


# ----------------------------------------------------------------------------- the walker


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A src-layout package `pkg`, a script in flows/ and a console script `pkg`."""
    _write(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "pkg"\n[project.scripts]\npkg = "pkg.cli:main"\n',
            "src/pkg/__init__.py": "",
            "src/pkg/cli.py": (
                "import argparse\n"
                "from pkg.core import run\n\n"
                "def main():\n"
                "    from pkg.lazy import heavy  # only when the command runs\n"
                "    heavy()\n"
            ),
            "src/pkg/core.py": "import json\nfrom . import helpers\n\ndef run(): ...\n",
            "src/pkg/helpers.py": "X = 1\n",
            "src/pkg/lazy.py": "from .helpers import X\n\ndef heavy(): ...\n",
            "src/pkg/plots/__init__.py": "",
            "src/pkg/plots/figure.py": "import numpy\n",
            "src/pkg/unused.py": "import pkg.lazy\n",
            "flows/__init__.py": "",
            "flows/_common.py": "from pkg.core import run\n",
            "flows/study.py": (
                "from pkg import plots\n"
                "from pkg.plots import figure\n"
                "import _common  # beside the script: on sys.path when run as a script\n\n"
                "def later():\n"
                "    import pkg.lazy\n"
            ),
        },
    )
    return tmp_path


def test_walker_follows_function_level_imports(fake_repo: Path) -> None:
    files = source_modules("pkg build", fake_repo)

    assert files == {
        Path("src/pkg/__init__.py"),
        Path("src/pkg/cli.py"),
        Path("src/pkg/core.py"),
        Path("src/pkg/helpers.py"),
        Path("src/pkg/lazy.py"),  # imported only inside main()
    }


def test_walker_follows_from_package_import_submodule(fake_repo: Path) -> None:
    files = source_modules("python flows/study.py --fast", fake_repo)

    assert Path("src/pkg/plots/figure.py") in files  # `from pkg.plots import figure`
    assert Path("src/pkg/plots/__init__.py") in files  # `from pkg import plots`
    assert Path("flows/_common.py") in files  # `import _common`, found beside the script
    assert Path("src/pkg/lazy.py") in files  # inside later()
    assert Path("src/pkg/unused.py") not in files  # nothing imports it
    assert Path("flows/__init__.py") not in files  # a script is not imported as flows.study
    assert source_modules("flows/study.py", fake_repo) == files


def test_missing_deps_lists_files_no_dep_covers_and_folders_cover_new_modules(
    fake_repo: Path,
) -> None:
    deps = ["data/prepared", "flows/study.py", "flows/_common.py", "src/pkg/plots", "src/pkg/"]
    assert missing_deps("python flows/study.py", deps, fake_repo) == []

    missing = missing_deps("python flows/study.py", deps[:-1], fake_repo)
    assert Path("src/pkg/lazy.py") in missing
    assert not any(p.is_relative_to("src/pkg/plots") for p in missing)

    # A new module in a listed folder needs no new dep; one outside it does.
    _write(fake_repo, {"src/pkg/plots/extra.py": "", "src/pkg/extra.py": ""})
    _write(fake_repo, {"src/pkg/lazy.py": "def heavy():\n    from pkg import extra, plots\n"})
    (fake_repo / "src/pkg/plots/figure.py").write_text("from . import extra\n")
    missing = missing_deps("python flows/study.py", deps[:-1], fake_repo)
    assert Path("src/pkg/extra.py") in missing
    assert Path("src/pkg/plots/extra.py") not in missing


def test_a_module_turned_package_is_covered_by_its_folder_not_its_old_file(
    fake_repo: Path,
) -> None:
    (fake_repo / "src/pkg/helpers.py").unlink()
    _write(
        fake_repo,
        {
            "src/pkg/helpers/__init__.py": "from .values import X\n",  # re-exports a name
            "src/pkg/helpers/values.py": "from pkg.helpers.consts import Y\n\nX = Y\n",
            "src/pkg/helpers/consts.py": "Y = 1\n",
        },
    )
    package = [
        Path("src/pkg/helpers/__init__.py"),
        Path("src/pkg/helpers/consts.py"),
        Path("src/pkg/helpers/values.py"),
    ]
    rest = ["src/pkg/__init__.py", "src/pkg/cli.py", "src/pkg/core.py", "src/pkg/lazy.py"]

    assert set(package) <= source_modules("pkg build", fake_repo)
    assert missing_deps("pkg build", [*rest, "src/pkg/helpers"], fake_repo) == []
    assert missing_deps("pkg build", [*rest, "src/pkg/helpers/"], fake_repo) == []
    # The module's old file, or a folder whose name only starts the same, covers none of it.
    assert missing_deps("pkg build", [*rest, "src/pkg/helpers.py"], fake_repo) == package
    assert missing_deps("pkg build", [*rest, "src/pkg/help"], fake_repo) == package
    old = [*rest, "src/pkg/helpers.py"]
    assert unused_source_deps("pkg build", old, fake_repo) == ["src/pkg/helpers.py"]


def test_walker_fails_on_an_import_of_a_missing_first_party_module(fake_repo: Path) -> None:
    (fake_repo / "src/pkg/helpers.py").write_text("def f():\n    from pkg.moved import g\n")

    with pytest.raises(StageDepsError, match=r"helpers\.py:2: .*'pkg\.moved'"):
        source_modules("pkg build", fake_repo)


def test_walker_fails_on_a_command_it_cannot_read(fake_repo: Path) -> None:
    with pytest.raises(StageDepsError, match="cannot tell which Python code"):
        source_modules("Rscript analysis.R", fake_repo)


def test_stage_commands_expand_foreach_lists_and_dicts(tmp_path: Path) -> None:
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        "stages:\n"
        "  pull:\n"
        "    foreach: [mnist, svhn]\n"
        "    do:\n"
        "      cmd: digits pull ${item}\n"
        "      deps:\n"
        "        - data/raw/${item}\n"
        "  fit:\n"
        "    foreach:\n"
        "      small: {width: 32}\n"
        "      large: {width: 256}\n"
        "    do:\n"
        "      cmd: python fit.py --name ${key} --width ${item.width}\n"
        "  report:\n"
        "    cmd: python report.py\n"
        "    params: [seed, {other.yaml: [lr]}]\n"
    )

    assert stage_commands(dvc_yaml) == {
        "pull@mnist": "digits pull mnist",
        "pull@svhn": "digits pull svhn",
        "fit@small": "python fit.py --name small --width 32",
        "fit@large": "python fit.py --name large --width 256",
        "report": "python report.py",
    }
    stages = load_stages(dvc_yaml)
    assert stages["pull@svhn"].deps == ("data/raw/svhn",)
    assert stages["report"].params == ("seed", "other.yaml:lr")
