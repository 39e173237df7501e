"""The locked test environment (Makefile `install`, `lock`, `test-latest`) is what the README says it is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / ".ci" / "locks"


def pins(text: str) -> dict[str, str]:
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.M)}


def test_readme_names_the_versions_the_lock_holds():
    section = REPO.joinpath("README.md").read_text().split("**A locked test environment.**")[1].split("\n\n")[0]
    lock_name = re.search(r"\.ci/locks/(\S+\.txt)", section)[1]
    locked = pins((LOCKS / lock_name).read_text())
    stated = dict(re.findall(r"([a-z][a-z0-9_\-]*)==([0-9][\w.]*)", section))
    assert stated and {name: locked.get(name) for name in stated} == stated
    assert f"among {len(locked)} packages" in section


def test_the_lock_leaves_torch_to_the_makefile_pin():
    """A locked torch (or CUDA wheels pulled in by one) would download gigabytes on a CPU machine."""
    for lock in LOCKS.glob("*.txt"):
        names = pins(lock.read_text())
        assert "torch" not in names and not any(n.startswith("nvidia-") for n in names), lock
        assert {"setuptools", "transformers", "tokenizers", "numpy", "pytest"} <= set(names), lock


def test_make_installs_from_the_lock_of_this_python_and_machine():
    """`make -n install` on a fresh venv path names the lock file that matches the running interpreter."""
    dry = subprocess.run(["make", "-n", "install", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert f".ci/locks/test-{tag}-" in dry and "-c .ci/locks/" in dry and "--no-build-isolation" in dry
