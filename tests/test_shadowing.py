"""No module of ours may shadow an installed distribution or the standard library.

Python puts one folder of ours first on `sys.path` for each way we run code:
- the repository root, for `python -m bench.NAME`, `python -m spanbert_train`, pytest (rootdir insertion: `tests/`
  is a package) and `bench/gpu_check.sh` (PYTHONPATH);
- the script's own folder, for `python examples/NAME.py`, and for anyone who runs a bench or test file by its path.
A module there named like an installed package wins over it: `bench/kernels.py` once hid the PyPI package `kernels`,
which `transformers` imports, and broke the GPU check's Hugging Face row. So every importable name in those folders
is checked against the top-level import names of every installed distribution and of the standard library.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTION = "spanbert"
# folders whose files run (or could run) as `python FOLDER/NAME.py`
SCRIPT_FOLDERS = ["bench", "examples", "tests", *sorted(f"tests/{p.name}" for p in (REPO / "tests").iterdir()
                                                        if (p / "__init__.py").exists())]  # fmt: skip


def tracked_files() -> list[Path]:
    """The repository's files as git sees them (tracked or new and not ignored); every file outside a checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return [REPO / line for line in out.splitlines() if (REPO / line).exists()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]


def importable_names(folder: Path, files: list[Path]) -> dict[str, Path]:
    """Top-level names that `import NAME` finds when `folder` is on sys.path: modules, packages, namespace folders."""
    names: dict[str, Path] = {}
    for path in files:
        try:
            rel = path.relative_to(folder)
        except ValueError:
            continue
        first = rel.parts[0]
        if len(rel.parts) == 1 and rel.suffix == ".py":
            name = rel.stem
        elif len(rel.parts) == 1 and rel.suffix in (".so", ".pyd"):
            name = rel.name.split(".")[0]
        elif len(rel.parts) > 1 and not first.startswith("."):
            name = first  # a folder: a package, or a namespace package when it has no __init__.py
        else:
            continue
        if name.isidentifier():
            names.setdefault(name, folder / first)
    return names


def reachable_names() -> dict[str, Path]:
    files = tracked_files()
    names = importable_names(REPO, files)
    for folder in SCRIPT_FOLDERS:
        for name, path in importable_names(REPO / folder, files).items():
            names.setdefault(name, path)
    return names


def installed_names() -> dict[str, str]:
    """Top-level import name → what provides it (distributions other than ours, and the standard library)."""
    found = {name: ", ".join(dists) for name, dists in importlib.metadata.packages_distributions().items()
             if set(dists) != {OWN_DISTRIBUTION}}  # fmt: skip
    for name in sys.stdlib_module_names:
        found.setdefault(name, "the standard library")
    return found


def shadowing(names: dict[str, Path], installed: dict[str, str]) -> list[str]:
    return [f"{path.relative_to(REPO)} shadows `{name}` ({installed[name]})"
            for name, path in sorted(names.items()) if name in installed]  # fmt: skip


def test_no_module_of_ours_shadows_an_installed_package():
    names = reachable_names()
    assert {"bench", "spanbert_data", "spanbert_train", "tests", "common", "make_prose_corpus"} <= set(names)
    clashes = shadowing(names, installed_names())
    assert not clashes, "rename these modules: " + "; ".join(clashes)


def test_the_check_sees_a_module_named_like_an_installed_package(tmp_path):
    """The check itself can fail: `bench/kernels.py` (the module that hid the `kernels` package) is caught."""
    files = tracked_files() + [REPO / "bench" / "kernels.py", REPO / "examples" / "json.py"]
    names = importable_names(REPO / "bench", files) | importable_names(REPO / "examples", files)
    clashes = shadowing(names, {"kernels": "kernels", "json": "the standard library"})
    assert sorted(clashes) == ["bench/kernels.py shadows `kernels` (kernels)",
                               "examples/json.py shadows `json` (the standard library)"]  # fmt: skip
