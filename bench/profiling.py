"""Where a training step's time goes: a torch-profiler summary of the top kernels, grouped by kind.

Used by ``bench/train_step.py --profile MODEL:IMPL``. On CUDA it counts device time per kernel (self time of
each CUDA kernel event); on CPU, self CPU time per operator. Kernels are put in coarse groups (GEMM, flash
attention, our Triton kernels, optimizer, elementwise, ...) so that the next optimisation is obvious.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# (group, substrings of the kernel name, lower-cased); first match wins
GROUPS = (
    ("flash attention", ("flash",)),  # before ours: flash's names contain "_fwd_kernel" too
    ("triton (ours)", ("_bias_gelu_", "_fwd_kernel", "_bwd_kernel", "_ce_rows_kernel", "_mask_kernel")),
    ("triton (other)", ("triton",)),
    ("gemm", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "sm90_", "sm80_", "ampere_", "hopper", "mm_",
              "::mm", "::bmm", "::addmm", "::baddbmm")),  # the last four: CPU operator names
    ("optimizer", ("multi_tensor", "fused_adam", "adam")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("embedding / indexing", ("embedding", "index", "scatter", "gather")),
    ("reduction", ("reduce",)),
    ("copy / cast / fill", ("copy", "memcpy", "memset", "fill")),
    ("elementwise", ("elementwise", "dropout", "gelu", "bernoulli", "::mul", "::add", "::div", "::sqrt", "::where")),
)


def group_of(name: str) -> str:
    low = name.lower()
    return next((group for group, keys in GROUPS if any(k in low for k in keys)), "other")


def profile_step(step: Callable[[], None], steps: int, device: torch.device, top: int = 25) -> dict:
    """Run ``step`` ``steps`` times under the profiler (call it after warm-up) and summarise per step."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_s = (time.perf_counter() - t0) / steps
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    rows = []
    for evt in prof.key_averages():
        if evt.device_type != kind:
            continue
        us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        if us > 0:
            rows.append({"name": evt.key, "group": group_of(evt.key), "calls_per_step": evt.count / steps,
                         "ms_per_step": us / 1e3 / steps})  # fmt: skip
    total_ms = sum(r["ms_per_step"] for r in rows)
    rows.sort(key=lambda r: -r["ms_per_step"])
    for r in rows:
        r["share"] = r["ms_per_step"] / total_ms if total_ms else 0.0
    groups: dict[str, float] = {}
    for r in rows:
        groups[r["group"]] = groups.get(r["group"], 0.0) + r["ms_per_step"]
    return {
        "what": "CUDA kernel self time" if cuda else "CPU operator self time",
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3,
        "busy_ms_per_step": total_ms,
        "groups": [{"group": g, "ms_per_step": ms, "share": ms / total_ms if total_ms else 0.0}
                   for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])],  # fmt: skip
        "top": rows[:top],
        "kernels_seen": len(rows),
    }


def format_profile(summary: dict, title: str) -> str:
    """A plain-text table of a :func:`profile_step` summary."""
    lines = [f"{title}: {summary['what']}, per step (mean of {summary['steps']} profiled steps)",
             f"wall {summary['wall_ms_per_step']:.1f} ms, busy {summary['busy_ms_per_step']:.1f} ms "
             f"({summary['busy_ms_per_step'] / max(summary['wall_ms_per_step'], 1e-9):.0%} of wall)", "",
             f"{'group':26s} {'ms/step':>9s} {'share':>6s}"]  # fmt: skip
    lines += [f"{g['group']:26s} {g['ms_per_step']:9.2f} {g['share']:6.1%}" for g in summary["groups"]]
    lines += ["", f"{'ms/step':>9s} {'share':>6s} {'calls':>6s}  {'group':22s} kernel"]
    for r in summary["top"]:
        lines.append(f"{r['ms_per_step']:9.3f} {r['share']:6.1%} {r['calls_per_step']:6.0f}  {r['group']:22s} "
                     f"{r['name'][:110]}")  # fmt: skip
    return "\n".join(lines)
