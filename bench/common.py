"""Shared by the bench scripts: machine description, device peaks and result files (bench/results/NAME.json)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Datasheet figures, first match on the CUDA device name wins (docs/PERFORMANCE.md §1). Dense (no 2:4 sparsity)
# bf16 tensor-core FLOP/s, and HBM bytes/s.
PEAK_BF16 = (("H100", "PCIe", 756e12), ("H100", "NVL", 835e12), ("H100", "", 989e12), ("H200", "", 989e12),
             ("A100", "", 312e12))  # fmt: skip
PEAK_HBM = (("H100", "PCIe", 2.0e12), ("H100", "NVL", 3.9e12), ("H100", "", 3.35e12), ("H200", "", 4.8e12),
            ("A100", "40GB", 1.555e12), ("A100", "80GB PCIe", 1.935e12), ("A100", "", 2.039e12))  # fmt: skip


def _lookup(table, name: str) -> float | None:
    return next((peak for chip, variant, peak in table if chip in name and variant in name), None)


def peak_flops(name: str) -> float | None:
    """Dense bf16 FLOP/s of the named CUDA device, or None when unknown (then no MFU is reported)."""
    return _lookup(PEAK_BF16, name)


def peak_bandwidth(name: str) -> float | None:
    """HBM bytes/s of the named CUDA device from its datasheet, or None when unknown."""
    return _lookup(PEAK_HBM, name)


def measure_ceilings(repeats: int = 10) -> dict:
    """What this CUDA device really reaches: a 2 GiB device-to-device copy (bytes read + written per second)
    and an 8192^3 bf16 matrix product on random data (FLOP/s), medians after warm-up; ~1 s."""
    import torch

    def median_seconds(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return sorted(times)[len(times) // 2]

    def copy_seconds() -> float:
        src = torch.randn(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
        dst = torch.empty_like(src)
        return median_seconds(lambda: dst.copy_(src))

    def matmul_seconds(n: int) -> float:
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        return median_seconds(lambda: a @ b)

    n = 8192
    copy_s, mm_s = copy_seconds(), matmul_seconds(n)
    torch.cuda.empty_cache()
    return {"copy_bytes_per_s": 2 * 2**31 / copy_s, "bf16_matmul_flops": 2 * n**3 / mm_s,
            "how": "median of 10 after 3 warm-ups: 2 GiB fp32 copy (read + write), 8192^3 bf16 matmul, random data"}


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count()}  # fmt: skip
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)  # fmt: skip
        info["git_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_revision"] = None
    return info


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as JSON atomically (temp file + rename), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def write_result(name: str, payload: dict, out_dir: str | Path | None = None) -> Path:
    """``out_dir``/NAME.json (default bench/results/), stamped with the bench name and date."""
    payload = {"bench": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    return write_json((Path(out_dir) if out_dir else RESULTS) / f"{name}.json", payload)


@contextlib.contextmanager
def local_s3(bucket: str) -> Iterator:
    """A real S3 server on 127.0.0.1 for the length of the block (moto's ThreadedMotoServer, in this process), the AWS
    variables of this process pointing at it, and `bucket` made; yields an s3fs client. Needs the test extra."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir(bucket)
        yield fs
    finally:
        server.stop()
