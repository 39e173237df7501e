"""Training-step throughput: our trainer (fused kernels on and off) vs Hugging Face `BertForPreTraining`, one run.

Rows timed for each model preset, on the same (B, 512) packed rows of the bundled Wikipedia sample:
  ours/triton     SpanBertForPreTraining, --kernels triton (CUDA only), varlen flash attention, logits at targets
  ours/reference  the same model with the plain-PyTorch reference ops (kernels off)
  hf              transformers' BertForPreTraining, eager (no torch.compile), its default attention
                  implementation (--hf-attn), padding mask, MLM labels at the same targets (-100 elsewhere), NSP
                  label 0, full B x T x V logits
A timed step is `--accum` forward/backward passes then one AdamW step (fused on CUDA) and zero_grad. CUDA: bf16
autocast, parameters fp32. CPU: fp32. Throughput counts non-padding tokens; sequences/s counts rows of T slots.
MFU = tokens/s x model FLOPs per token (SpanBertForPreTraining.estimate_flops_per_token with this batch's mean
attended length and target rates; the SAME useful FLOPs for the HF row) / the device's dense bf16 peak.
Goals (issue 5): ours/triton on `large` >= 55% MFU on one H100 and >= 2x the HF row.

    python -m bench.train_step                 # CUDA: base and large, triton + reference + HF (issue 5's run)
    python -m bench.train_step --quick         # CPU smoke run: tiny, batch 2, 2 steps
    python -m bench.train_step --models large --batch 16 --accum 2 --steps 20
    python -m bench.train_step --profile large:ours/triton   # + top CUDA kernels of that row (torch profiler)

Writes bench/results/train_step_<cpu|cuda>_<models>.json (device name, peak used, every row, speed-ups; --out-dir
elsewhere), rewritten after every row so that a run stopped half-way keeps what it measured. --profile adds a
profile_<model>_<impl>.txt table beside it and the summary to the JSON.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from bench.common import machine_info, peak_flops, write_result  # noqa: E402
from bench.loader import _spread, build_example  # noqa: E402
from bench.profiling import format_profile, profile_step  # noqa: E402
from spanbert_train.batch import Batch  # noqa: E402
from spanbert_train.config import OptimConfig  # noqa: E402
from spanbert_train.data import Dataset, to_batch  # noqa: E402
from spanbert_train.model import ModelConfig, SpanBertForPreTraining  # noqa: E402
from spanbert_train.optim import build_optimizer  # noqa: E402
from spanbert_train.shard import RowSource  # noqa: E402


def attended_length(batch: Batch, pad_id: int) -> float:
    """Mean over non-padding tokens of the length of the example each token attends over (Σ len² / Σ len)."""
    cu = batch.cu_seqlens.long()
    lens = (cu[1:] - cu[:-1]).double()
    real = batch.input_ids.reshape(-1)[cu[:-1]] != pad_id  # a padding tail is its own sequence, starting with [PAD]
    return float((lens[real] ** 2).sum() / lens[real].sum())


def time_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls (allocator, Triton compilation, cuBLAS heuristics)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def autocast(device: torch.device):
    """bf16 autocast on CUDA, as the trainer does; plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def ours_step(cfg: ModelConfig, kernels: str, batch: Batch, device: torch.device, accum: int):
    """A closure running one optimizer step of our trainer's arithmetic (train.Trainer.train_step without DDP)."""
    model = SpanBertForPreTraining(cfg, kernels=kernels).to(device).train()
    opt = build_optimizer(model, OptimConfig(lr=1e-4), device)  # SPEC §5 large recipe; speed does not depend on it
    on_device = batch.to(device)
    # the trainer takes global target counts from the loader (host ints): no device sync inside the step
    mlm_total, sbo_total = accum * batch.mlm_labels.numel(), accum * batch.sbo_labels.numel()

    def step():
        for _ in range(accum):
            with autocast(device):
                parts = model(on_device)
            parts.objective(mlm_total, sbo_total).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def hf_step(cfg: ModelConfig, batch: Batch, device: torch.device, accum: int, attn: str):
    from transformers import BertConfig, BertForPreTraining

    hf_cfg = BertConfig(**{k: v for k, v in cfg.to_hf_config().items() if k != "architectures"},
                        attn_implementation=attn)  # fmt: skip
    model = BertForPreTraining(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = batch.input_ids.to(device)
    mask = (batch.input_ids != cfg.pad_token_id).long().to(device)
    labels = torch.full_like(batch.input_ids, -100).view(-1)
    labels[batch.mlm_index] = batch.mlm_labels
    labels = labels.view_as(batch.input_ids).to(device)
    nsp = torch.zeros(batch.input_ids.shape[0], dtype=torch.long, device=device)

    def step():
        for _ in range(accum):
            with autocast(device):
                out = model(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
            (out.loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def run_row(impl: str, cfg: ModelConfig, batch: Batch, device: torch.device, args, profile: bool = False) -> dict:
    """Time one implementation (and profile it when asked); failures (OOM, a kernel that does not compile) become
    the row's `error`."""
    row = {"impl": impl}
    if impl == "ours/triton" and device.type != "cuda":
        return row | {"skipped": "no CUDA device (Triton runs on CPU only in the test interpreter)"}
    step = model = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if impl == "hf":
            step, model = hf_step(cfg, batch, device, args.accum, args.hf_attn)
            row["attn_implementation"] = model.config._attn_implementation
        else:
            step, model = ours_step(cfg, impl.split("/")[1], batch, device, args.accum)
            row["attention"] = "varlen flash" if device.type == "cuda" else "sdpa, block-diagonal mask"
        times = time_steps(step, args.steps, args.warmup, device)
        row["ms_p20_p50_p80"] = _spread(times)
        row["step_s"] = statistics.median(times)
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if profile:
            row["profile"] = profile_step(step, args.profile_steps, device)
    except Exception as e:
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        del step, model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated presets (default: base,large on CUDA, tiny on CPU)")
    ap.add_argument("--impls", default="ours/triton,ours/reference,hf", help="comma-separated rows to time")
    ap.add_argument("--batch", type=int, help="rows per forward pass (default: 32 on CUDA, 4 on CPU)")
    ap.add_argument("--accum", type=int, default=1, help="forward/backward passes per optimizer step")
    ap.add_argument("--steps", type=int, help="timed steps (default: 10 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    ap.add_argument("--peak-tflops", type=float, help="override the dense bf16 peak used for MFU")
    ap.add_argument("--data", type=Path, help="a dataset with rows of 512 slots (default: build examples/wiki)")
    ap.add_argument("--quick", action="store_true", help="tiny model, batch 2, 2 steps, 1 warm-up (smoke test)")
    ap.add_argument("--out-dir", type=Path, help="where the JSON (and profile tables) go (default bench/results)")
    ap.add_argument("--profile", action="append", default=[], metavar="MODEL:IMPL",
                    help="also profile this row after timing it, e.g. large:ours/triton (repeatable)")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps recorded by --profile")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.quick:
        args.models, args.batch, args.steps, args.warmup = args.models or "tiny", args.batch or 2, 2, 1
    models = (args.models or ("base,large" if cuda else "tiny")).split(",")
    impls = args.impls.split(",")
    args.batch, args.steps = args.batch or (32 if cuda else 4), args.steps or (10 if cuda else 3)
    if min(args.batch, args.accum, args.steps) < 1 or args.warmup < 0:
        ap.error("--batch, --accum and --steps must be >= 1 and --warmup >= 0")
    bad = sorted(set(impls) - {"ours/triton", "ours/reference", "hf"})
    if bad:
        ap.error(f"--impls: unknown {bad}; choose from ours/triton, ours/reference, hf")
    profiled = {tuple(p.split(":", 1)) for p in args.profile}
    if any(len(p) != 2 or p[0] not in models or p[1] not in impls for p in profiled):
        ap.error(f"--profile {args.profile}: each must be MODEL:IMPL with MODEL in {models} and IMPL in {impls}")

    with tempfile.TemporaryDirectory() as tmp:
        ds = Dataset(args.data or build_example(Path(tmp) / "wiki"))
        if ds.rows(0) < args.batch:
            ap.error(f"--batch {args.batch} exceeds the {ds.rows(0)} rows of {ds.root}")
        batch = to_batch(RowSource(ds.epochs[0]).gather(np.arange(args.batch, dtype=np.int64)))
    machine = machine_info()
    name = torch.cuda.get_device_name() if cuda else f"{machine['cpu']} ({machine['cores']} cores)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(name) if cuda else None)
    tokens, rows_per_step = batch.num_tokens * args.accum, args.batch * args.accum
    examples = int((batch.input_ids.reshape(-1)[batch.cu_seqlens[:-1].long()] != 0).sum()) * args.accum
    attn_len = attended_length(batch, pad_id=0)
    print(f"train step on {device} ({name}), batch {args.batch} x {ds.max_seq_len} x accum {args.accum}: "
          f"{tokens} tokens, {examples} examples, mean attended length {attn_len:.0f}; "
          f"peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s; threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'model':6s} {'implementation':15s} {'tokens/s':>11s} {'seq/s':>8s} {'ms/step':>9s} {'MFU':>6s} "
          f"{'GiB':>6s}")  # fmt: skip

    results, failed = [], False
    out_dir = args.out_dir
    import transformers

    def save() -> Path:
        result = {
            "machine": machine, "device": name, "device_type": device.type, "peak_flops": peak,
            "threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "precision": "bf16 autocast, fp32 parameters" if cuda else "fp32", "vocab_size": ds.vocab_size,
            "batch": args.batch, "accum": args.accum, "seq_len": ds.max_seq_len, "tokens_per_step": tokens,
            "examples_per_step": examples, "mean_attended_length": attn_len, "steps": args.steps,
            "warmup": args.warmup, "rows": results,
        }  # fmt: skip
        return write_result(f"train_step_{device.type}_" + "_".join(models), result, out_dir)

    for preset in models:
        cfg = ModelConfig.from_preset(preset, vocab_size=ds.vocab_size)
        with torch.device("meta"):
            meta = SpanBertForPreTraining(cfg)  # FLOP estimate and parameter count without allocating
        flops_tok = meta.estimate_flops_per_token(attn_len, batch.mlm_labels.numel() / batch.num_tokens,
                                                  batch.sbo_labels.numel() / batch.num_tokens)  # fmt: skip
        by_impl = {}
        for impl in impls:
            torch.manual_seed(0)
            row = {"model": preset, "parameters": meta.num_parameters(), "flops_per_token": flops_tok}
            row |= run_row(impl, cfg, batch, device, args, profile=(preset, impl) in profiled)
            if "step_s" in row:
                row["tokens_per_s"] = tokens / row["step_s"]
                row["sequences_per_s"] = rows_per_step / row["step_s"]
                row["examples_per_s"] = examples / row["step_s"]
                row["mfu"] = row["tokens_per_s"] * flops_tok / peak if peak else None
                by_impl[impl] = row["tokens_per_s"]
                mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
                gib = f"{row['peak_memory_gib']:.1f}" if "peak_memory_gib" in row else "-"
                print(f"{preset:6s} {impl:15s} {row['tokens_per_s']:11,.0f} {row['sequences_per_s']:8.1f} "
                      f"{row['step_s'] * 1e3:9.1f} {mfu:>6s} {gib:>6s}")  # fmt: skip
            else:
                failed |= "error" in row
                print(f"{preset:6s} {impl:15s} {row.get('skipped') or row.get('error')}")
            results.append(row)
            save()
            if "profile" in row:
                title = f"{preset} {impl}, batch {args.batch} x {ds.max_seq_len} x accum {args.accum}, {name}"
                table = format_profile(row["profile"], title)
                path = (out_dir or REPO / "bench" / "results") / f"profile_{preset}_{impl.replace('/', '_')}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(table + "\n")
                print(table)
        for impl in ("ours/triton", "ours/reference"):
            if impl in by_impl and "hf" in by_impl:
                print(f"{preset}: {impl} / hf = {by_impl[impl] / by_impl['hf']:.2f}x")
                results.append({"model": preset, "speedup": f"{impl} / hf", "ratio": by_impl[impl] / by_impl["hf"]})
        if "ours/triton" in by_impl and "ours/reference" in by_impl:
            ratio = by_impl["ours/triton"] / by_impl["ours/reference"]
            print(f"{preset}: ours/triton / ours/reference = {ratio:.2f}x")
            results.append({"model": preset, "speedup": "ours/triton / ours/reference", "ratio": ratio})

    print(f"wrote {save()}")
    if failed:
        sys.exit("some rows failed; their errors are in the table and the JSON")


if __name__ == "__main__":
    main()
