"""One optimizer step of our trainer vs Hugging Face `BertForPreTraining` (same size, batch, rows; eager).

Ours: SpanBertForPreTraining on packed rows (attention per example, MLM/SBO logits only at targets),
AdamW. Peer: transformers' BertForPreTraining on the same (B, T) rows with a padding mask, MLM labels at the
same targets (-100 elsewhere), its NSP head fed label 0, full B×T×V logits, AdamW. Both fp32 on CPU; bf16
autocast on CUDA (with MFU from the model's FLOP estimate). Goal on CPU: ours ≥ 2× HF tokens/s.

    python bench/train_step.py [--model tiny] [--batch 8] [--seq-len 512] [--steps 5]

Writes bench/results/train_step_<device>_<model>.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_info, write_result  # noqa: E402
from bench.loader import _spread, build_example  # noqa: E402
from spanbert_train.config import OptimConfig  # noqa: E402
from spanbert_train.data import Dataset, RowSource, to_batch  # noqa: E402
from spanbert_train.model import ModelConfig, SpanBertForPreTraining  # noqa: E402
from spanbert_train.optim import build_optimizer  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, for MFU


def time_steps(step, steps: int, device: torch.device) -> list[float]:
    step()  # warm-up (allocator, autotuning)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "base", "large"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--data", type=Path, help="a dataset with rows of --seq-len slots (default: build examples/wiki)")
    args = ap.parse_args()
    from transformers import BertConfig, BertForPreTraining

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or build_example(Path(tmp) / "wiki")
        ds = Dataset(data)
        cols = RowSource(ds.epochs[0]).gather(np.arange(args.batch, dtype=np.int64))
    batch = to_batch(cols)
    tokens = batch.num_tokens

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(args.model, vocab_size=ds.vocab_size)
    ours = SpanBertForPreTraining(cfg, kernels="triton" if device.type == "cuda" else "reference").to(device)
    opt = build_optimizer(ours, OptimConfig(), device)
    on_device = batch.to(device)

    def our_step():
        with autocast or torch.autocast("cpu", enabled=False):
            parts = ours(on_device)
        parts.objective(parts.mlm_count.item(), parts.sbo_count.item()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    hf_cfg = BertConfig(**{k: v for k, v in cfg.to_hf_config().items() if k not in ("architectures",)})
    hf = BertForPreTraining(hf_cfg).to(device)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = batch.input_ids.to(device)
    mask = (batch.input_ids != 0).long().to(device)
    labels = torch.full_like(batch.input_ids, -100).view(-1)
    labels[batch.mlm_index] = batch.mlm_labels
    labels = labels.view_as(batch.input_ids).to(device)
    nsp = torch.zeros(args.batch, dtype=torch.long, device=device)

    def hf_step():
        with autocast or torch.autocast("cpu", enabled=False):
            out = hf(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
        out.loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    t_ours = time_steps(our_step, args.steps, device)
    t_hf = time_steps(hf_step, args.steps, device)
    r_ours, r_hf = tokens / statistics.median(t_ours), tokens / statistics.median(t_hf)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    mfu = None
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak:
        mfu = r_ours * ours.estimate_flops_per_token() / peak
    print(f"train step, {args.model} ({ours.num_parameters() / 1e6:.1f}M), batch {args.batch} x {ds.max_seq_len}, "
          f"{tokens} tokens, {device} ({name}), threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'implementation':34s} {'tokens/s':>12s} {'ms/step':>10s}")
    print(f"{'ours (packed, logits at targets)':34s} {r_ours:12,.0f} {statistics.median(t_ours) * 1e3:10.1f}")
    print(f"{'HF BertForPreTraining (eager)':34s} {r_hf:12,.0f} {statistics.median(t_hf) * 1e3:10.1f}")
    print(f"speed-up ours/HF: {r_ours / r_hf:.2f}x" + (f"; MFU {mfu:.1%}" if mfu is not None else ""))
    import transformers

    result = {
        "machine": machine_info(), "device": name, "device_type": device.type, "threads": torch.get_num_threads(),
        "transformers": transformers.__version__, "model": args.model, "parameters": ours.num_parameters(),
        "batch": args.batch,
        "seq_len": ds.max_seq_len, "tokens_per_step": tokens, "steps": args.steps,
        "ours_tokens_per_s": r_ours, "ours_ms_p20_p50_p80": _spread(t_ours),
        "hf_tokens_per_s": r_hf, "hf_ms_p20_p50_p80": _spread(t_hf), "speedup": r_ours / r_hf, "mfu": mfu,
    }  # fmt: skip
    print(f"wrote {write_result(f'train_step_{device.type}_{args.model}', result)}")


if __name__ == "__main__":
    main()
