"""Fused kernels against their plain-PyTorch references and torch.compile of those references.

For each op, forward and forward+backward are timed (median, p20, p80 over repeats, after warm-up) for
  triton     the fused Triton kernel (spanbert_train.kernels.get_ops("triton")); CUDA only
  reference  the plain-PyTorch reference, eager
  compile    torch.compile(reference)
at BERT-large shapes (SPEC §5): 16k tokens x H 1024 / FFN 4096 for the elementwise ops, 10k targets x the
28,996-entry vocab for the decoder cross-entropy, bf16 on CUDA. The throughput column uses one work model
per op for every implementation: bytes a fused pass must move (GB/s) or GEMM FLOPs (TFLOP/s).

On CUDA each throughput is also given as a fraction of the device's datasheet peak (HBM bandwidth for GB/s,
dense bf16 for TFLOP/s) and of the ceilings measured in the same run (a large copy, an 8192^3 bf16 matmul).

    .venv/bin/python -m bench.fused_kernels            # full shapes (meant for a GPU)
    .venv/bin/python -m bench.fused_kernels --quick    # small shapes, fp32; the only mode to run on a shared CPU

Prints a table and writes bench/results/kernels.json (--out-dir elsewhere), rewritten after every row so that
a run stopped half-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import machine_info, measure_ceilings, peak_bandwidth, peak_flops, write_result
from spanbert_train.kernels import get_ops

FULL = {"tokens": 16384, "hidden": 1024, "ffn": 4096, "targets": 10240, "vocab": 28996}
QUICK = {"tokens": 512, "hidden": 256, "ffn": 1024, "targets": 512, "vocab": 4096}
P_DROP, EPS = 0.1, 1e-12  # BERT hidden dropout and LayerNorm epsilon (SPEC §5)


def make_cases(s: dict, dtype: torch.dtype, device: str) -> dict[str, tuple[list[torch.Tensor], dict, float, str]]:
    """op name -> (differentiable inputs, fixed kwargs, work per forward+backward, unit)."""

    def t(*shape, scale=1.0):
        return (scale * torch.randn(shape, device=device)).to(dtype).requires_grad_()

    n, h, f, m, v = s["tokens"], s["hidden"], s["ffn"], s["targets"], s["vocab"]
    e = torch.tensor([], dtype=dtype).element_size()
    labels = torch.randint(0, v, (m,), device=device)
    return {
        # fwd reads x, writes y; bwd reads x, dy, writes dx: 5 passes over (N, F)
        "bias_gelu": ([t(n, f), t(f)], {}, 5 * n * f * e, "GB/s"),
        # fwd reads x, residual, writes y, s; bwd reads dy, s, writes dx, dresidual: 8 passes over (N, H)
        "residual_dropout_layernorm": (
            [t(n, h), t(h), t(n, h), t(h), t(h)],
            {"p": P_DROP, "eps": EPS, "training": True},
            8 * n * h * e,
            "GB/s",
        ),
        # logits GEMM + two gradient GEMMs
        "linear_cross_entropy": ([t(m, h), t(v, h, scale=0.02), t(v)], {"labels": labels}, 6 * m * v * h, "TFLOP/s"),
    }


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    if device == "cuda":

        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3

        return measure

    def measure(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return measure


def first_output(out):
    return out[0] if isinstance(out, tuple) else out


def bench_one(fn, inputs, kwargs, repeats: int, warmup: int, device: str) -> dict:
    measure = timer(device)
    grads = None

    def forward():
        with torch.no_grad():
            fn(*inputs, **kwargs)

    def step():
        out = first_output(fn(*inputs, **kwargs))
        nonlocal grads
        grads = torch.autograd.grad(out, inputs, torch.ones_like(out))

    result = {}
    for name, call in (("fwd", forward), ("fwd_bwd", step)):
        for _ in range(warmup):
            call()
        times = sorted(measure(call) for _ in range(repeats))
        q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
        result[name] = {"median_s": statistics.median(times), "p20_s": q[0], "p80_s": q[3]}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (CPU-friendly)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 20, quick 5)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--out-dir", type=Path, help="where kernels.json goes (default bench/results)")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = QUICK if args.quick else FULL
    dtype = torch.bfloat16 if device == "cuda" and not args.quick else torch.float32
    repeats = args.repeats or (5 if args.quick else 20)
    warmup = 2 if args.quick else 5
    torch.manual_seed(0)

    impls: dict[str, object] = {"reference": get_ops("reference")}
    skipped = {}
    if device == "cuda":
        impls["triton"] = get_ops("triton")
    else:
        skipped["triton"] = "skipped: no CUDA"
    cases = make_cases(shapes, dtype, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peaks = {"GB/s": peak_bandwidth(name), "TFLOP/s": peak_flops(name)} if device == "cuda" else {}
    measured = measure_ceilings() if device == "cuda" else None
    ceilings = {"GB/s": measured["copy_bytes_per_s"], "TFLOP/s": measured["bf16_matmul_flops"]} if measured else {}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    rows = []

    def save() -> Path:
        return write_result(
            "kernels",
            {
                "machine": {**machine_info(), "device_name": name},
                "triton": triton_version,
                "quick": args.quick,
                "dtype": str(dtype),
                "shapes": shapes,
                "repeats": repeats,
                "datasheet_peaks": {"hbm_bytes_per_s": peaks.get("GB/s"), "bf16_flops": peaks.get("TFLOP/s")},
                "measured_ceilings": measured,
                "rows": rows,
            },
            args.out_dir,
        )

    print(f"device={name} dtype={str(dtype).removeprefix('torch.')} shapes={shapes}")
    if measured:
        print(f"measured ceilings: copy {measured['copy_bytes_per_s'] / 1e9:,.0f} GB/s, "
              f"bf16 matmul {measured['bf16_matmul_flops'] / 1e12:,.0f} TFLOP/s")  # fmt: skip
    print(f"{'op':28s} {'impl':10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'p20-p80 ms':>15s} {'throughput':>18s} "
          f"{'of peak':>8s} {'of measured':>11s}")  # fmt: skip
    base: dict[str, float] = {}

    def measure(op: str, impl: str, fn) -> None:
        inputs, kwargs, work, unit = cases[op]
        try:
            res = bench_one(fn, inputs, kwargs, repeats, warmup, device)
        except Exception as err:  # a failing peer (e.g. no C++ compiler for inductor) is reported, not fatal
            rows.append({"op": op, "impl": impl, "error": f"{type(err).__name__}: {err}"[:300]})
            print(f"{op:28s} {impl:10s} failed: {rows[-1]['error'][:80]}")
            save()
            return
        med = res["fwd_bwd"]["median_s"]
        scale = 1e9 if unit == "GB/s" else 1e12
        if impl == "reference":
            base[op] = med
        row = {"op": op, "impl": impl, **res, "throughput": work / med / scale, "unit": unit}
        row["speedup_vs_reference"] = base[op] / med if op in base else None
        row["fraction_of_peak"] = work / med / peaks[unit] if peaks.get(unit) else None
        row["fraction_of_measured"] = work / med / ceilings[unit] if ceilings.get(unit) else None
        rows.append(row)
        save()
        spread = f"{res['fwd_bwd']['p20_s'] * 1e3:.3f}-{res['fwd_bwd']['p80_s'] * 1e3:.3f}"
        of_peak = f"{row['fraction_of_peak']:.0%}" if row["fraction_of_peak"] is not None else "-"
        of_measured = f"{row['fraction_of_measured']:.0%}" if row["fraction_of_measured"] is not None else "-"
        print(
            f"{op:28s} {impl:10s} {res['fwd']['median_s'] * 1e3:9.3f} {med * 1e3:11.3f} {spread:>15s} "
            f"{row['throughput']:10.2f} {unit:7s} {of_peak:>8s} {of_measured:>11s}"
        )

    for op in cases:
        for impl, ops in impls.items():
            measure(op, impl, getattr(ops, op))
        for impl, why in skipped.items():
            rows.append({"op": op, "impl": impl, "skipped": why})
            print(f"{op:28s} {impl:10s} {why}")
    if not args.no_compile:  # last: compiling is the slow part, and a run cut short keeps the rows above
        for op in cases:
            measure(op, "compile", torch.compile(getattr(impls["reference"], op), dynamic=False))
    print(f"wrote {save()}")


if __name__ == "__main__":
    main()
