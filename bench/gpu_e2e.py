"""Part 4 of `make gpu-check`: pre-train as a user would, for a fixed time, then stop the job with SIGTERM.

Runs `torchrun --standalone --nproc-per-node 1 --no-python spanbert-train --data D --out RUN --model base ...`,
lets it train for --seconds after its first logged step (start-up: imports, model, kernel compilation, at most
--startup seconds), sends SIGTERM to the whole job (torchrun and its worker, as a scheduler would), and gives it
--grace seconds to finish the step, save a checkpoint and exit. Then reads RUN/metrics.jsonl.

Passes when at least 3 steps were logged, every logged loss is finite, the loss fell (mean of the last three
logged steps below the mean of the first three by --min-drop nats) and a checkpoint of the last step exists.
Writes --out (JSON): the command, steps, losses, tokens/s (median over logged steps after the first two),
approximate MFU, exit status, and why it failed if it did. Exit status 1 when it did not pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from bench.common import peak_flops, write_json  # noqa: E402


def launcher() -> list[str]:
    """torchrun from this Python's environment, else the module it runs."""
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if "loss" in row and "split" not in row:
            rows.append(row)
    return rows


def flops_per_token(model: str, data: Path) -> float | None:
    """Training FLOPs per token of the preset at full-length examples (an approximation for MFU)."""
    try:
        import torch

        from spanbert_train.data import Dataset
        from spanbert_train.model import ModelConfig, SpanBertForPreTraining

        with torch.device("meta"):
            meta = SpanBertForPreTraining(ModelConfig.from_preset(model, vocab_size=Dataset(data).vocab_size))
        return meta.estimate_flops_per_token()
    except Exception:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="the run directory (must not hold checkpoints)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON summary to write")
    ap.add_argument("--seconds", type=float, default=120.0, help="training time from the first logged step to SIGTERM")
    ap.add_argument("--startup", type=float, default=60.0, help="seconds allowed until the first logged step")
    ap.add_argument("--grace", type=float, default=30.0, help="seconds allowed after SIGTERM to save and exit")
    ap.add_argument("--model", default="base")
    ap.add_argument("--global-batch-size", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--min-drop", type=float, default=0.1, help="nats the loss must fall by")
    args = ap.parse_args()

    cmd = [*launcher(), "--standalone", "--nproc-per-node", "1", "--no-python", "spanbert-train",
           "--data", str(args.data), "--out", str(args.run), "--model", args.model, "--max-steps", "100000",
           "--global-batch-size", str(args.global_batch_size), "--micro-batch", str(args.micro_batch),
           "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps), "--log-every", str(args.log_every),
           "--save-every", "0", "--eval-every", "0"]  # fmt: skip
    if shutil.which("spanbert-train") is None:
        sys.exit("gpu_e2e: spanbert-train is not on PATH (install the project, or let gpu_check.sh make its shim)")
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own process group: SIGTERM reaches every process
    first_step_at = None
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if first_step_at is None and read_metrics(args.run):
            first_step_at = now
        if now > (first_step_at + args.seconds if first_step_at is not None else args.startup):
            break
        time.sleep(0.5)
    rc = proc.poll()
    if rc is not None:
        stopped_by = "exited by itself"
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        stopped_by = "SIGTERM"
        try:
            rc = proc.wait(timeout=args.grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, stopped_by = proc.wait(), f"SIGKILL after SIGTERM and {args.grace:.0f} s"
    wall = time.perf_counter() - t0

    rows = read_metrics(args.run)
    losses = [r["loss"] for r in rows]
    from spanbert_train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(args.run)
    last_ckpt = int(ckpts[-1].name.split("-")[1]) if ckpts else None
    speeds = [r["tokens_per_s"] for r in rows[2:]] or [r["tokens_per_s"] for r in rows]
    tps = statistics.median(speeds) if speeds else None
    fpt = flops_per_token(args.model, args.data)
    device = None
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    peak = peak_flops(device) if device and device != "cpu" else None
    why = []
    if first_step_at is None:
        why.append(f"no step logged within {args.startup:.0f} s of the launch")
    if len(rows) < 3:
        why.append(f"only {len(rows)} logged steps")
    if not all(math.isfinite(x) for x in losses):
        why.append("a non-finite loss")
    first, last = (statistics.mean(losses[:3]), statistics.mean(losses[-3:])) if len(losses) >= 3 else (None, None)
    if first is not None and not last < first - args.min_drop:
        why.append(f"loss did not fall by {args.min_drop} nats ({first:.3f} -> {last:.3f})")
    last_step = rows[-1]["step"] if rows else None
    if last_ckpt is None or (last_step is not None and last_ckpt < last_step):
        why.append(f"no checkpoint of the last logged step {last_step} (latest: {last_ckpt})")
    result = {
        "passed": not why, "why": why, "command": cmd, "model": args.model, "device": device,
        "global_batch_size": args.global_batch_size, "micro_batch": args.micro_batch, "lr": args.lr,
        "train_seconds": args.seconds, "startup_s": first_step_at, "wall_s": wall, "stopped_by": stopped_by,
        "exit_status": rc,
        "logged_steps": len(rows), "last_step": last_step, "latest_checkpoint": last_ckpt,
        "loss_first3_mean": first, "loss_last3_mean": last,
        "loss_curve": [[r["step"], r["loss"]] for r in rows], "tokens_per_s_median": tps,
        "flops_per_token": fpt, "peak_flops": peak,
        "mfu_approx": tps * fpt / peak if tps and fpt and peak else None,
    }  # fmt: skip
    write_json(args.out, result)
    loss = f"{first:.3f} -> {last:.3f}" if first is not None else "-"
    summary = (f"{len(rows)} logged steps to step {last_step}, loss (first 3 -> last 3) {loss}, "
               f"{tps or 0:,.0f} tokens/s, stopped by {stopped_by}, exit {rc}, checkpoint {last_ckpt}")  # fmt: skip
    print(("PASS " if not why else "FAIL ") + summary + ("" if not why else " | " + "; ".join(why)))
    sys.exit(0 if not why else 1)


if __name__ == "__main__":
    main()
