"""Leaving the process group frees it and joins its threads before the interpreter exits (spanbert_train.dist).

A gloo group kept alive until interpreter finalisation let one of its worker threads die in `pthread_exit` while
destroying a finished collective: the rank aborted (SIGABRT) after printing its one-line error. The group was kept
alive by `torch.distributed.nn.functional`'s `group=group.WORLD` defaults when DDP first imported that module after
`init_process_group`. Each case runs in a fresh process, as torchrun would start a rank.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, socket, sys
    import torch
    import torch.distributed as dist
    from spanbert_train.dist import setup_distributed, shutdown_distributed

    def threads():
        return len(os.listdir("/proc/self/task"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    before = threads()
    dist.init_process_group("gloo")
    {after_init}
    import spanbert_train.dist as d
    import weakref
    d._group = weakref.ref(dist.group.WORLD)  # what setup_distributed records when WORLD_SIZE > 1
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    model(torch.ones(2, 4)).sum().backward()
    found = [None]
    dist.all_gather_object(found, ("bad shard", 1))  # the collective that reports bad data to every rank
    during = threads()
    model = None
    print(shutdown_distributed(), during > before, threads() == before)
""")


def run(after_init: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(after_init=after_init)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_leaving_frees_the_group_and_joins_its_threads():
    assert run(after_init="") == ["True", "True", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_the_check_sees_a_group_pinned_by_a_late_import():
    """The failure this guards against: torch.distributed.nn.functional imported only after the group exists (as
    DDP's first use did before spanbert_train.dist imported it) pins the group and its threads."""
    late = "sys.modules.pop('torch.distributed.nn.functional'); import torch.distributed.nn.functional"
    assert run(after_init=late) == ["False", "True", "False"]
