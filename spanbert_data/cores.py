"""How many cores this process may really use: the default of `--workers` (build and vocab).

`os.cpu_count()` is the machine's count, not ours: a job started under `taskset`, a Slurm or Kubernetes
allocation, or a container with a CPU quota gets fewer. Two limits apply, and the smaller one counts:

- the CPU affinity mask (`os.sched_getaffinity`: `taskset`, cpusets);
- the CFS bandwidth quota of the process's cgroup and of every cgroup above it (v2: `cpu.max`,
  "QUOTA PERIOD" or "max PERIOD"; v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us`, -1 for none), rounded
  down: a quota of 1.5 cores is 1 worker, because a second one would only be throttled.

Never less than 1. Unreadable or absent files mean "no limit" (macOS, Windows, no cgroup mounted).
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The cores this process may use: its affinity mask, capped by its cgroup's CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota (in cores) on the path from this process's cgroup to the root, or None for none."""
    try:
        entries = [line.split(":", 2) for line in proc_cgroup.read_text().splitlines() if line.count(":") >= 2]
    except OSError:
        return None
    quotas = []
    for _, controllers, rel in entries:
        if controllers == "":  # cgroup v2: the unified hierarchy, alone or beside v1 ("hybrid", under unified/)
            quotas += _along(cgroup_root, rel, _v2_quota) + _along(cgroup_root / "unified", rel, _v2_quota)
        elif "cpu" in controllers.split(","):  # cgroup v1, mounted as cpu,cpuacct or cpu
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += _along(mount, rel, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _along(mount: Path, rel: str, read) -> list[float]:
    """The quotas of the cgroup `rel` under `mount` and of its ancestors. Inside a container the process's
    cgroup is often the mount point itself (a cgroup namespace), so the mount's own files count too."""
    found = []
    parts = [p for p in rel.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        quota = read(mount.joinpath(*parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
