"""Part 1 of `make gpu-check`: is the CUDA path right? Packed attention, the Triton kernels, the trainer.

Checks, each recorded with its numbers, pass/fail and time in --out (JSON, rewritten after every check):
  varlen_packed_vs_unpacked   attention over packed rows (flash varlen on CUDA) against attention run on each
                              example alone, forward and the three input gradients, both against float64
  varlen_dropout_replay       with attention dropout, backward must replay the forward's mask: the output is
                              linear in v, so <g, f(v + d) - f(v)> = <dL/dv, d> under one seed (another seed
                              breaks it, which is checked too, so the identity can fail)
  kernel_<op>_<dtype>         each Triton kernel against its plain-PyTorch reference at BERT-large shapes, in the
                              model's precision (bf16 autocast, fp32 parameters) and in fp32; both measured
                              against float64, forward and every gradient
  train_triton_vs_reference   20 steps of `small` with kernels triton vs reference, dropout off: same losses
  checkpoint_resume           6 steps with a checkpoint at step 3; a run resumed from it has the same weights,
                              optimizer state and RNG bit for bit, the same step-4 loss and steps 5-6 within
                              the nondeterminism of atomics in flash attention's backward

Errors are ||got - want|| / ||want|| (float64). A check passes when it is finite and within max(floor, k x the
error of the same-precision reference); floors: bf16 1e-2, fp32 1e-5 (attention) / 1e-4 (kernels).
--dry: CPU, tiny shapes, fp32; attention takes the block-diagonal SDPA path, the Triton kernels run in the
interpreter (TRITON_INTERPRET=1, set by gpu_check.sh), training runs `tiny` for 3 steps. Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

from bench.common import write_json  # noqa: E402
from spanbert_train.attention import build_layout, packed_attention, varlen_implementation  # noqa: E402
from spanbert_train.checkpoint import list_checkpoints  # noqa: E402
from spanbert_train.config import DataConfig, ModelSpec, OptimConfig, TrainConfig  # noqa: E402
from spanbert_train.kernels import get_ops  # noqa: E402
from spanbert_train.train import Trainer  # noqa: E402

FULL = {"rows": 16, "slots": 512, "heads": 16, "head_dim": 64, "tokens": 16384, "hidden": 1024, "ffn": 4096,
        "targets": 10240, "vocab": 28996, "model": "small", "steps": 20, "batch": 32, "micro": 16}  # fmt: skip
DRY = {"rows": 3, "slots": 64, "heads": 2, "head_dim": 16, "tokens": 96, "hidden": 32, "ffn": 128, "targets": 48,
       "vocab": 300, "model": "tiny", "steps": 3, "batch": 2, "micro": 2}  # fmt: skip
FLOOR = {"attention": {torch.bfloat16: 1e-2, torch.float32: 1e-5},
         "kernel": {torch.bfloat16: 1e-2, torch.float32: 1e-4}}  # fmt: skip
P_DROP, EPS = 0.1, 1e-12  # SPEC §5 dropout and LayerNorm epsilon


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in ts)


class Checks:
    """Runs named checks, records each one's result and rewrites the JSON after every check."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta, self.rows = path, meta, []

    def run(self, name: str, fn, *args) -> None:
        t0 = time.perf_counter()
        try:
            details = fn(*args)
            row = {"name": name, "passed": bool(details.pop("passed")), **details}
        except Exception as e:
            row = {"name": name, "passed": False, "error": f"{type(e).__name__}: {e}"[:600],
                   "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self.rows.append(row)
        self.save()
        extra = row.get("error") or row.get("summary", "")
        print(f"{'PASS' if row['passed'] else 'FAIL'} {name} ({row['seconds']:.1f} s) {extra}", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def save(self) -> None:
        passed = all(r["passed"] for r in self.rows)
        write_json(self.path, {**self.meta, "passed": passed, "checks": self.rows})


# ------------------------------------------------------------------------------------------- attention
def packed_rows(s: dict, gen: torch.Generator) -> list[int]:
    """Sequence lengths of the flattened stream: per row, examples then the padding tail (its own sequence)."""
    lengths = []
    for r in range(s["rows"]):
        fill, row = 0, []
        while fill < s["slots"]:
            if r == 0:  # one full-length example: the longest case
                length = s["slots"]
            elif row and torch.rand((), generator=gen) < 0.15:
                break  # a padding tail
            elif torch.rand((), generator=gen) < 0.3:
                length = int(torch.randint(s["slots"] // 2, s["slots"] + 1, (), generator=gen))
            else:
                length = int(torch.randint(1, max(2, s["slots"] // 4), (), generator=gen))
            row.append(min(length, s["slots"] - fill))
            fill += row[-1]
        if fill < s["slots"]:
            row.append(s["slots"] - fill)
        lengths += row
    return lengths


def attention_inputs(s, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = packed_rows(s, gen)
    B, T, nh, hd = s["rows"], s["slots"], s["heads"], s["head_dim"]
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
    example_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).view(B, T)
    q, k, v, g = (torch.randn(B, T, nh, hd, generator=gen).to(device) for _ in range(4))
    layout = build_layout("auto", example_ids.to(device), cu.to(device), max(lengths), dtype)
    return lengths, layout, [t.to(dtype).requires_grad_() for t in (q, k, v)], g.to(dtype)


def per_example(q, k, v, g, lengths, dtype):
    """Attention run on each sequence alone (no mask), in ``dtype``; returns output and (dq, dk, dv)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    B, T, nh, hd = q.shape
    flat = [t.reshape(B * T, nh, hd) for t in leaves]
    outs, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start : start + n].transpose(0, 1).unsqueeze(0) for t in flat)  # (1, nh, n, hd)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1))
        start += n
    out = torch.cat(outs).view(B, T, nh, hd)
    return out, torch.autograd.grad(out, leaves, g.to(dtype))


def check_varlen(s, dtype, device, seed) -> dict:
    lengths, layout, (q, k, v), g = attention_inputs(s, dtype, device, seed)
    out = packed_attention(q, k, v, layout, 0.0)
    got = [out, *torch.autograd.grad(out, (q, k, v), g)]
    want64 = per_example(q, k, v, g, lengths, torch.float64)
    yard = per_example(q, k, v, g, lengths, dtype)  # the same per-example attention in the packed path's dtype
    floor, res, ok = FLOOR["attention"][dtype], {}, finite(*got)
    for name, a, w, y in zip(("out", "dq", "dk", "dv"), got, [want64[0], *want64[1]], [yard[0], *yard[1]],
                             strict=True):  # fmt: skip
        err, yard_err = rel(a, w), rel(y, w)
        limit = max(floor, 3 * yard_err)
        res[name] = {"error": err, "per_example_same_dtype_error": yard_err, "limit": limit}
        ok &= err <= limit
    worst = max(res, key=lambda n: res[n]["error"] / res[n]["limit"])
    return {"passed": ok, "backend": layout.backend, "dtype": str(dtype), "sequences": len(lengths),
            "max_seqlen": layout.max_seqlen, "shape": [s["rows"], s["slots"], s["heads"], s["head_dim"]],
            "errors": res, "summary": f"{layout.backend}, worst {worst} {res[worst]['error']:.2e} "
                                      f"(limit {res[worst]['limit']:.1e})"}  # fmt: skip


def check_dropout_replay(s, dtype, device, seed) -> dict:
    _, layout, (q, k, v), g = attention_inputs(s, dtype, device, seed)

    def f(vv, draw):
        torch.manual_seed(draw)  # CPU and CUDA generators: the same Philox mask for the same draw
        return packed_attention(q, k, vv, layout, P_DROP)

    out1 = f(v, seed)
    (dv,) = torch.autograd.grad(out1, v, g)  # A^T g, if backward replays the forward mask A
    with torch.no_grad():
        v2 = (v + dv * (v.double().norm() / dv.double().norm()).to(dv.dtype)).detach()
        d = v2.double() - v.double()  # the step actually taken, after rounding
        rhs = float((dv.double() * d).sum())
        lhs = float((g.double() * (f(v2, seed).double() - out1.double())).sum())
        control = float((g.double() * (f(v2, seed + 1).double() - out1.double())).sum())
        no_drop = packed_attention(q, k, v, layout, 0.0)
    err, control_err = abs(lhs - rhs) / abs(rhs), abs(control - rhs) / abs(rhs)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    changed = rel(out1, no_drop)
    ok = finite(out1, dv) and err <= tol and control_err >= 2 * tol and changed > 1e-3
    return {"passed": ok, "backend": layout.backend, "p": P_DROP, "identity_error": err, "tolerance": tol,
            "other_seed_error": control_err, "dropout_changes_output_by": changed,
            "summary": f"identity {err:.1e} (tol {tol:.0e}), another seed {control_err:.2f}"}  # fmt: skip


# ------------------------------------------------------------------------------------------- kernels
def kernel_case(op: str, s: dict, device, gen):
    """(activation tensors, parameter tensors, kwargs, extra) of one op at the given shapes, in fp32."""

    def r(*shape, scale=1.0):
        return scale * torch.randn(shape, generator=gen, device=device)

    n, h, f, m, vocab = s["tokens"], s["hidden"], s["ffn"], s["targets"], s["vocab"]
    if op == "bias_gelu":
        return [r(n, f, scale=2.0)], [r(f)], {}, r(n, f)
    if op == "residual_dropout_layernorm":
        return [r(n, h), r(n, h)], [r(h), 1 + 0.1 * r(h), r(h)], {"p": P_DROP, "eps": EPS, "training": True}, r(n, h)
    hidden, weight, bias = r(m, h), r(vocab, h, scale=0.05), r(vocab, scale=0.1)
    labels = torch.randint(0, vocab, (m,), generator=gen, device=device)
    labels[1::3] = (hidden @ weight.T + bias).argmax(dim=1)[1::3]  # a third are right, so accuracy counts something
    labels[::20] = -100  # some ignored rows
    return [hidden], [weight, bias], {"labels": labels}, None


def call(op, ops, acts, params, kwargs, mask_seed):
    if op == "bias_gelu":
        return ops.bias_gelu(acts[0], params[0])
    if op == "residual_dropout_layernorm":
        x, res = acts
        bias, w, b = params
        if ops.kind == "triton":
            return ops.residual_dropout_layernorm(x, bias, res, w, b, seed=mask_seed[0], **kwargs)
        return ops.residual_dropout_layernorm(x, bias, res, w, b, keep_mask=mask_seed[1], **kwargs)
    return ops.linear_cross_entropy(acts[0], params[0], params[1], **kwargs)


def run_op(op, ops, acts, params, kwargs, dy, mask_seed, autocast_dtype, device):
    leaves = [t.detach().clone().requires_grad_() for t in acts + params]
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = call(op, ops, leaves[: len(acts)], leaves[len(acts) :], kwargs, mask_seed)
    main = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(main, leaves, None if dy is None else dy.to(main.dtype))
    extra = [int(out[1]), int(out[2])] if isinstance(out, tuple) else []
    return [main.detach(), *grads], extra


def check_kernel(op: str, dtype, s: dict, device, seed) -> dict:
    from spanbert_train.kernels.residual_dropout_layernorm import dropout_keep_mask

    gen = torch.Generator(device=device).manual_seed(seed)
    acts, params, kwargs, dy = kernel_case(op, s, device, gen)
    acts = [a.to(dtype) for a in acts]  # activations in the compute dtype, parameters fp32 as in the model
    dy = dy.to(dtype) if dy is not None else None
    mask = dropout_keep_mask(seed, tuple(acts[0].shape), P_DROP, device) if op.startswith("residual") else None
    autocast = torch.bfloat16 if dtype == torch.bfloat16 else None
    triton, ref = get_ops("triton"), get_ops("reference")
    got, got_extra = run_op(op, triton, acts, params, kwargs, dy, (seed, mask), autocast, device)
    same, same_extra = run_op(op, ref, acts, params, kwargs, dy, (seed, mask), autocast, device)
    acts64, params64 = [a.double() for a in acts], [p.double() for p in params]
    want, _ = run_op(op, ref, acts64, params64, kwargs, None if dy is None else dy.double(), (seed, mask), None, device)
    names = {"bias_gelu": ["y", "dx", "dbias"],
             "residual_dropout_layernorm": ["y", "dx", "dresidual", "dbias", "dln_weight", "dln_bias"],
             "linear_cross_entropy": ["loss", "dhidden", "dweight", "dbias"]}[op]  # fmt: skip
    floor, res, ok = FLOOR["kernel"][dtype], {}, finite(*got)
    for name, a, w, y in zip(names, got, want, same, strict=True):
        err, ref_err = rel(a, w), rel(y, w)
        limit = max(floor, 2 * ref_err)
        res[name] = {"error": err, "reference_error": ref_err, "limit": limit}
        ok &= err <= limit
    out = {"dtype": str(dtype), "shapes": {k: s[k] for k in ("tokens", "hidden", "ffn", "targets", "vocab")}}
    if got_extra:  # count must agree exactly; argmax may flip on near-tied logits
        out["count"], out["correct"], out["reference_correct"] = got_extra[0], got_extra[1], same_extra[1]
        ok &= got_extra[0] == same_extra[0] and abs(got_extra[1] - same_extra[1]) <= max(2, 1e-3 * got_extra[0])
    if mask is not None:  # dropped elements get no gradient: backward regenerated the forward's mask
        zero = bool((got[1][~mask] == 0).all())
        out["dropped_elements_have_zero_grad"] = zero
        ok &= zero
    worst = max(res, key=lambda n: res[n]["error"] / res[n]["limit"])
    return {"passed": bool(ok), **out, "errors": res,
            "summary": f"worst {worst} {res[worst]['error']:.2e} (limit {res[worst]['limit']:.1e})"}  # fmt: skip


# ------------------------------------------------------------------------------------------- training
def train_config(s, data: Path, out: Path, kernels: str, steps: int, **kw) -> TrainConfig:
    overrides = kw.pop("overrides", {})
    return TrainConfig(
        out=str(out), max_steps=steps, seed=kw.pop("seed", 1234), eval_every=0, eval_rows=4, log_every=1,
        kernels=kernels, data=DataConfig(path=str(data), global_batch_size=s["batch"], micro_batch=s["micro"]),
        model=ModelSpec(preset=s["model"], overrides=overrides), optim=OptimConfig(lr=1e-4), **kw,
    ).validate()  # fmt: skip


def train_losses(cfg: TrainConfig, on_step=None, before_run=None) -> dict[int, float]:
    trainer = Trainer(cfg, on_step)
    try:
        if before_run:
            before_run(trainer)
        rows = trainer.run()
    finally:
        trainer.close()
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


def check_train(s, data: Path, work: Path) -> dict:
    no_dropout = {"hidden_dropout": 0.0, "attention_dropout": 0.0}  # the two paths draw different masks
    losses = {k: train_losses(train_config(s, data, work / k, k, s["steps"], overrides=no_dropout))
              for k in ("triton", "reference")}  # fmt: skip
    steps = sorted(losses["reference"])
    diffs = [abs(losses["triton"][i] - losses["reference"][i]) / abs(losses["reference"][i]) for i in steps]
    ok = len(steps) == s["steps"] and diffs[0] <= 1e-2 and max(diffs) <= 2e-2 and finite(torch.tensor(diffs))
    return {"passed": ok, "model": s["model"], "steps": len(steps), "first_step_rel_diff": diffs[0],
            "max_rel_diff": max(diffs), "limits": {"first": 1e-2, "all": 2e-2},
            "loss_triton": [losses["triton"][i] for i in steps],
            "loss_reference": [losses["reference"][i] for i in steps],
            "summary": f"{len(steps)} steps, loss {losses['reference'][steps[0]]:.3f} -> "
                       f"{losses['reference'][steps[-1]]:.3f}, max rel diff {max(diffs):.1e}"}  # fmt: skip


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state |= {f"optim.{i}.{k}": v.detach().cpu().clone() for k, v in trainer.optimizer.state[p].items()}
    return state


def check_resume(s, data: Path, work: Path) -> dict:
    snap: dict = {}

    def keep(trainer, row):
        if trainer.step == 3:
            snap.update(state_of(trainer))

    first = train_losses(train_config(s, data, work / "a", "auto", 6, save_every=3), on_step=keep)
    shutil.copytree(work / "a", work / "b")
    for ckpt in list_checkpoints(work / "b"):
        if int(ckpt.name.split("-")[1]) > 3:
            shutil.rmtree(ckpt)
    restored: dict = {}
    resumed = train_losses(train_config(s, data, work / "b", "auto", 6, resume=True),
                           before_run=lambda t: restored.update(step=t.step, state=state_of(t)))  # fmt: skip
    state = restored["state"]
    same_state = state.keys() == snap.keys() and all(torch.equal(state[k], snap[k]) for k in snap)
    d4 = abs(resumed[4] - first[4]) / abs(first[4])
    later = max(abs(resumed[i] - first[i]) / abs(first[i]) for i in (5, 6))
    ok = restored["step"] == 3 and same_state and d4 <= 1e-6 and later <= 1e-3 and sorted(resumed) == [4, 5, 6]
    return {"passed": ok, "resumed_at": restored["step"], "weights_optimizer_equal": same_state,
            "tensors_compared": len(snap), "step4_rel_diff": d4, "steps5_6_max_rel_diff": later,
            "limits": {"step4": 1e-6, "steps5_6": 1e-3}, "loss_uninterrupted": [first[i] for i in (4, 5, 6)],
            "loss_resumed": [resumed[i] for i in (4, 5, 6)],
            "summary": f"state equal {same_state}, step 4 diff {d4:.1e}, steps 5-6 {later:.1e}"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a dataset built by spanbert-data (rows of 512 slots)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny shapes, fp32 (the dry run of gpu_check.sh)")
    ap.add_argument("--seed", type=int, help="input seed (default: drawn from the clock, recorded)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        sys.exit("gpu_correctness: no CUDA device; use --dry for the CPU dry run")
    device = torch.device("cuda" if cuda else "cpu")
    s = DRY if args.dry else FULL
    seed = args.seed if args.seed is not None else int(time.time()) % 2**31
    dtypes = [torch.float32] if args.dry else [torch.bfloat16, torch.float32]
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dry": args.dry, "seed": seed,
            "shapes": s, "attention_implementation": varlen_implementation() if cuda else "sdpa (CPU)"}  # fmt: skip
    checks = Checks(args.out, meta)
    attn_dtype = torch.bfloat16 if cuda else torch.float32  # flash runs in half precision only
    checks.run("varlen_packed_vs_unpacked", check_varlen, s, attn_dtype, device, seed)
    checks.run("varlen_dropout_replay", check_dropout_replay, s, attn_dtype, device, seed + 1)
    for op in ("bias_gelu", "residual_dropout_layernorm", "linear_cross_entropy"):
        for dtype in dtypes:
            checks.run(f"kernel_{op}_{str(dtype).removeprefix('torch.')}", check_kernel, op, dtype, s, device, seed)
    with tempfile.TemporaryDirectory(prefix="gpu-correctness-") as tmp:
        checks.run("train_triton_vs_reference", check_train, s, args.data, Path(tmp) / "train")
        checks.run("checkpoint_resume", check_resume, s, args.data, Path(tmp) / "resume")
    failed = [r["name"] for r in checks.rows if not r["passed"]]
    print(json.dumps({"passed": not failed, "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
