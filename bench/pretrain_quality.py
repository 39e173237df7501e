"""The paper's masking ablation in miniature: does span masking (+ SBO) learn what the baselines learn?

    python -m bench.pretrain_quality                 # CPU: the tiny model, ≤ 45 min on 2 cores
    python -m bench.pretrain_quality --scale gpu     # one GPU: the base model, ≤ 5 min
    python -m bench.pretrain_quality --corpus FILE   # use an existing corpus (e.g. carried to a machine offline)

Four models, identical in everything but the masking: the same corpus, vocabulary, held-out documents,
model size, seed, learning-rate schedule and number of training tokens:

  subword      BERT's token masking           (spanbert-data build --scheme subword)
  whole-word   whole-word masking             (--scheme whole-word)
  span         geometric span masking, MLM only (--scheme span, spanbert-train --sbo-weight 0)
  span+sbo     SpanBERT: span masking + SBO   (--scheme span, --sbo-weight 1, the default)

Each is then scored with `spanbert-train evaluate` (spanbert_train.evaluate) on the held-out documents,
masked two ways: as it was trained (its own scheme), and with span masking, the common yardstick whose
targets come in merged spans of 1 … ≥ 10 words (MLM accuracy by span length shows what each learned).
The reference is the unigram line: the cross-entropy a model that ignores the context cannot beat (the
entropy of the corpus's token distribution; also reported: the held-out targets' cross-entropy under it).

The corpus is real English prose made by examples/make_prose_corpus.py (Wikipedia excerpt + the Python,
Linux, PostgreSQL, Django and Debian documentation; ~30 MB, ~7M tokens), so the CPU run sees each token
about once and the held-out loss measures what carries over, not what was memorised (the bundled 2.6 MB
sample is memorised by the tiny model before its held-out loss leaves the plateau).

Everything lands under --out (cached: a re-run reuses the corpus, vocabulary, datasets and finished runs,
and resumes an interrupted training run), then bench/results/pretrain_quality[_gpu].json and a .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
RUNS = {"subword": ("subword", 1.0), "whole-word": ("whole-word", 1.0), "span": ("span", 0.0),
        "span+sbo": ("span", 1.0)}  # name -> (masking scheme, SBO weight)  # fmt: skip

# The settings of each scale; the same for all four runs (the schemes are never tuned separately).
# Chosen by measurement (README, "Evidence that it learns"): on the unigram plateau the number of updates
# counts more than their size, so small batches of short rows; no dropout, because each token is seen about
# once (nothing to regularise) and dropout slowed the escape from the plateau; a peak lr of 1e-3 with a
# linear decay to 0.
SCALES = {
    # tiny (2 layers, H 128) on 128-slot rows: ≈ 19k slots/s (0.22 s per update) on 2 cores. 1,400 updates of
    # 32 rows = 5.7M slots, less than the corpus holds (no token is seen twice), ≈ 5 min per run.
    "cpu": dict(model="tiny", vocab=8000, seq=128, valid_fraction=0.01, mask_epochs=1, steps=1400, batch=32,
                micro=32, lr=1e-3, warmup=140, eval_every=200, eval_rows=0, dropout=0.0),
    # base (12 layers, H 768) in bf16 on one GPU: 400 updates of 256 × 128 slots ≈ 13M slots (two passes over
    # the corpus, so two mask epochs). Peak lr 3e-4, below the base recipe's 5e-4, which belongs to 8× larger
    # batches. Not yet measured on a GPU (estimate: ≈ 30 s per run on an H100/H200).
    "gpu": dict(model="base", vocab=8000, seq=128, valid_fraction=0.01, mask_epochs=2, steps=400, batch=256,
                micro=128, lr=3e-4, warmup=60, eval_every=100, eval_rows=0, dropout=0.0),
}  # fmt: skip


BUCKETS_SHOWN = ("1", "2", "3", "4", "5", ">=10")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


ENV = dict(os.environ)  # the subprocesses' environment (--threads sets OMP_NUM_THREADS here)


def run(cmd: list[str], logfile: Path | None = None) -> None:
    """Run a command; its output goes to `logfile` (appended) or through; a failure stops the bench."""
    log("$ " + " ".join(str(c) for c in cmd))
    if logfile is None:
        subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, env=ENV)
        return
    with open(logfile, "a") as f:
        done = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    if done.returncode:
        tail = logfile.read_text().splitlines()[-15:]
        sys.exit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}\n" + "\n".join(tail))


def prepare_data(args, s: dict, out: Path) -> dict[str, Path]:
    """Corpus → one shared vocabulary → one dataset per masking scheme (each step skipped when done)."""
    corpus = Path(args.corpus) if args.corpus else out / "corpus" / "corpus.jsonl"
    if not corpus.is_file():
        if args.corpus:
            sys.exit(f"{corpus}: no such corpus file")
        run([sys.executable, REPO / "examples" / "make_prose_corpus.py", "--out", corpus.parent,
             "--cache", out / "package-cache"])  # fmt: skip
    tokenizer = out / f"tokenizer-{s['vocab']}.json"
    bin_dir = Path(sys.executable).parent
    if not tokenizer.is_file():
        run([bin_dir / "spanbert-data", "vocab", "--corpus", corpus, "--vocab-size", s["vocab"], "--out", tokenizer])
    datasets = {}
    for scheme in sorted({scheme for scheme, _ in RUNS.values()}):
        ds = out / f"data-{scheme}"
        if not (ds / "manifest.json").is_file():
            run([bin_dir / "spanbert-data", "build", "--corpus", corpus, "--out", ds, "--tokenizer", tokenizer,
                 "--scheme", scheme, "--max-seq-len", s["seq"], "--valid-fraction", s["valid_fraction"],
                 "--mask-epochs", s["mask_epochs"], "--workers", args.workers],
                out / f"build-{scheme}.log")  # fmt: skip
        datasets[scheme] = ds
    return datasets


def unigram_line(dataset: Path) -> dict:
    """The corpus's unigram entropy, and the held-out MLM targets' cross-entropy under that distribution."""
    from spanbert_train.data import Dataset
    from spanbert_train.evaluate import heldout_unigram_cross_entropy, unigram_entropy

    ds = Dataset(dataset)
    return {"unigram_entropy": unigram_entropy(ds.manifest),
            "heldout_targets_unigram_ce": heldout_unigram_cross_entropy(ds)}


def train(name: str, scheme: str, sbo_weight: float, data: Path, s: dict, out: Path, seed: int) -> dict:
    """Train one model (resumed if interrupted, skipped if finished); returns its wall time and step times."""
    run_dir = out / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "trained.json"
    if done.is_file():
        return json.loads(done.read_text())
    tic = time.perf_counter()
    run([sys.executable, "-m", "spanbert_train", "--data", data, "--out", run_dir, "--model", s["model"],
         "--model-set", f"max_position_embeddings={s['seq']}", "--model-set", f"hidden_dropout={s['dropout']}",
         "--model-set", f"attention_dropout={s['dropout']}", "--max-steps", s["steps"],
         "--global-batch-size", s["batch"], "--micro-batch", s["micro"], "--lr", s["lr"],
         "--warmup-steps", s["warmup"], "--seed", seed, "--sbo-weight", sbo_weight,
         "--eval-every", s["eval_every"], "--eval-rows", s["eval_rows"], "--save-every", s["eval_every"],
         "--log-every", 10, "--resume"], run_dir / "train.log")  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # the first includes start-up
    median = float(np.median(rates)) if rates else None
    info = {"wall_s_this_invocation": time.perf_counter() - tic, "median_tokens_per_s": median,  # slots/s, 1 step
            "steps_s_at_median": s["steps"] * s["batch"] * s["seq"] / median if median else None,
            "load_after": os.getloadavg()[0]}  # fmt: skip
    done.write_text(json.dumps(info) + "\n")
    return info


def evaluate(name: str, data: Path, out: Path) -> dict:
    """`spanbert-train evaluate` of the run's final checkpoint on `data`'s held-out split (cached per dataset)."""
    cache = out / "runs" / name / f"eval-{data.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    done = subprocess.run([sys.executable, "-m", "spanbert_train", "evaluate", out / "runs" / name, "--data", data,
                           "--micro-batch", "32"], capture_output=True, text=True, cwd=REPO, env=ENV)  # fmt: skip
    if done.returncode:
        sys.exit(f"evaluate {name} on {data} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cache.write_text(json.dumps(result) + "\n")
    return result


def curves(run_dir: Path, tokens_per_step: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    valid_rows = [r for r in rows if r.get("split") == "valid"]
    return {
        "train": [{"step": r["step"], "tokens": r["step"] * tokens_per_step, "loss_mlm": r["loss_mlm"],
                   "loss_sbo": r["loss_sbo"]} for r in train_rows],
        "valid": [{"step": r["step"], "tokens": r["step"] * tokens_per_step, "loss_mlm": r["loss_mlm"],
                   "acc_mlm": r["acc_mlm"], "loss_sbo": r["loss_sbo"]} for r in valid_rows],
    }  # fmt: skip


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"subword": "tab:gray", "whole-word": "tab:green", "span": "tab:blue", "span+sbo": "tab:red"}
    for name, r in result["runs"].items():
        c = r["curves"]
        ax.plot([x["tokens"] / 1e6 for x in c["train"]], [x["loss_mlm"] for x in c["train"]], color=colors[name],
                lw=0.6, alpha=0.35)  # fmt: skip
        ax.plot([x["tokens"] / 1e6 for x in c["valid"]], [x["loss_mlm"] for x in c["valid"]], "o-",
                color=colors[name], ms=3, label=f"{name}: held-out MLM (own masking)")  # fmt: skip
    line = result["unigram"]["span"]["unigram_entropy"]
    ax.axhline(line, color="black", ls="--", lw=1, label=f"unigram entropy {line:.2f} nats")
    ax.set_xlabel("training slots (M; 128 per row, ~12% of them padding)")
    ax.set_ylabel("MLM cross-entropy (nats)")
    ax.set_ylim(top=line + 1.5)
    ax.set_title(f"{result['scale']}: {result['settings']['model']} model, faint = training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for name, r in result["runs"].items():
        acc = r["eval_span_masked"]["acc_mlm_by_span_words"]
        keys = [k for k in acc if acc[k] is not None]
        ax_acc.plot(keys, [acc[k] for k in keys], "o-", color=colors[name], ms=3,
                    label=f"{name}: {r['eval_span_masked']['acc_mlm']:.3f} overall")  # fmt: skip
    ax_acc.set_xlabel("merged span length (words)")
    ax_acc.set_ylabel("held-out MLM accuracy")
    ax_acc.set_title("held-out text, span-masked (the SpanBERT task)")
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="work folder [bench/.cache/pretrain_quality-SCALE]")
    parser.add_argument("--corpus", default=None, help="an existing corpus [examples/make_prose_corpus.py makes it]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="build workers")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per training process (0 = torch's default: all cores); 1 is faster "
                             "when other work loads the machine")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="which of the four runs to train now (comma-separated; the table shows all finished ones)")
    parser.add_argument("--steps", type=int, default=None, help="override the scale's updates (a quick look)")
    parser.add_argument("--note", default="", help="a remark stored in the result (e.g. how the machine was loaded)")
    args = parser.parse_args(argv)
    s = dict(SCALES[args.scale])
    if args.steps:
        s.update(steps=args.steps, warmup=max(1, args.steps // 10), eval_every=max(1, args.steps // 7))
    out = (args.out or REPO / "bench" / ".cache" / f"pretrain_quality-{args.scale}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
    start, load_start = time.perf_counter(), os.getloadavg()
    log(f"work folder {out}; load average {load_start[0]:.2f}")

    datasets = prepare_data(args, s, out)
    prep_s = time.perf_counter() - start
    log(f"data ready in {prep_s:.0f} s")
    tokens_per_step = s["batch"] * s["seq"]
    runs = {}
    wanted = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        sys.exit(f"--runs: unknown {unknown}; choose from {', '.join(RUNS)}")
    for name, (scheme, sbo_weight) in RUNS.items():
        if name not in wanted and not (out / "runs" / name / "trained.json").is_file():
            continue
        info = train(name, scheme, sbo_weight, datasets[scheme], s, out, args.seed)
        log(f"{name}: trained ({info['median_tokens_per_s'] or 0:.0f} slots/s, median of single steps)")
        own = evaluate(name, datasets[scheme], out)
        span = evaluate(name, datasets["span"], out)
        runs[name] = {"scheme": scheme, "sbo_weight": sbo_weight, "train": info, "eval_own_masking": own,
                      "eval_span_masked": span, "curves": curves(out / "runs" / name, tokens_per_step)}  # fmt: skip
    unigram = {scheme: unigram_line(ds) for scheme, ds in datasets.items()}
    total_s = time.perf_counter() - start
    line = unigram["span"]["unigram_entropy"]
    for r in runs.values():
        r["below_unigram_entropy_nats"] = line - r["eval_own_masking"]["loss_mlm"]
    sources = (Path(args.corpus).parent if args.corpus else out / "corpus") / "SOURCES.json"
    result = {"scale": args.scale, "settings": s, "seed": args.seed, "threads": args.threads or "default",
              "note": args.note,
              "tokens_per_run": s["steps"] * tokens_per_step,
              "unigram": unigram, "runs": runs, "prep_s": prep_s, "total_s": total_s,
              "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0],
              "corpus": json.loads(sources.read_text()) if sources.is_file() else None,
              "machine": machine_info()}  # fmt: skip
    name = "pretrain_quality" if args.scale == "cpu" else f"pretrain_quality_{args.scale}"
    path = write_result(name, result)
    plot(result, RESULTS / f"{name}.png")

    print(f"\n{args.scale}: {s['model']} model, {result['tokens_per_run'] / 1e6:.1f}M training tokens per run, "
          f"unigram entropy {line:.3f} nats (held-out span targets under the unigram: "
          f"{unigram['span']['heldout_targets_unigram_ce']:.3f})")  # fmt: skip
    header = f"{'run':<11} {'own: MLM loss':>13} {'acc':>6} {'span-masked: loss':>18} {'acc':>6} " + " ".join(
        f"{k:>5}" for k in BUCKETS_SHOWN) + "  (acc by span words)"
    print(header)
    for n, r in runs.items():
        own, span = r["eval_own_masking"], r["eval_span_masked"]
        by = span["acc_mlm_by_span_words"]
        cells = " ".join(f"{by[k]:5.3f}" if by.get(k) is not None else "    -" for k in BUCKETS_SHOWN)
        print(f"{n:<11} {own['loss_mlm']:13.3f} {own['acc_mlm']:6.3f} {span['loss_mlm']:18.3f} {span['acc_mlm']:6.3f} "
              f"{cells}")  # fmt: skip
    print(f"total {total_s / 60:.1f} min (data {prep_s / 60:.1f} min); load average {load_start[0]:.1f} -> "
          f"{result['load_average_end']:.1f}; wrote {path} and {RESULTS / (name + '.png')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
