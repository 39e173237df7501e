"""What a run reports: RUN_DIR/metrics.jsonl, an optional TensorBoard log, the console, and `plot`.

Only rank 0 writes. metrics.jsonl has one JSON object per line: training rows carry
`step, loss, loss_mlm, loss_sbo, acc_mlm, acc_sbo, lr, grad_norm, tokens_per_s, skipped_nonfinite`
(losses in nats, SPEC §4); evaluation rows carry `step, split="valid"` and the same loss/accuracy keys. Every row
carries `rows_by_dataset` (each dataset's rows trained on so far, by its --data); with several datasets an
evaluation row's losses and accuracies are their weighted mean, and `datasets` holds each one's own figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from spanbert_data.files import atomic_write_bytes
from spanbert_train.config import ConfigError

METRICS = "metrics.jsonl"


class MetricsLogger:
    """Rank 0's sink for metric rows: JSON lines, TensorBoard (optional) and a progress bar or plain lines."""

    def __init__(self, run_dir: Path, max_steps: int, start_step: int, tensorboard: bool = False,
                 progress: bool | None = None):  # fmt: skip
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / METRICS
        truncate_after(self.path, start_step)  # a resumed run rewrites what followed its checkpoint
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.bar = None
        if progress if progress is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, row: dict, console: bool = True) -> None:
        """Append one row; show it on the console (progress bar postfix, or one plain line)."""
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            prefix = row.get("split", "train")
            for key, value in row.items():
                if isinstance(value, int | float) and key not in ("step", "split"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])
        if console:
            self.info(format_row(row), postfix=row)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def info(self, text: str, postfix: dict | None = None) -> None:
        if self.bar is not None and postfix is not None and postfix.get("split", "train") == "train":
            self.bar.set_postfix(loss=f"{postfix['loss']:.4f}", tok_s=f"{postfix.get('tokens_per_s', 0):.0f}")
        elif self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()


def format_row(row: dict) -> str:
    """A plain one-line rendering of a metrics row."""
    parts = [f"step {row['step']}"]
    if row.get("split") == "valid":
        parts.append("valid")
    for key in ("loss", "loss_mlm", "loss_sbo", "acc_mlm", "acc_sbo"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.3e}")
    if "grad_norm" in row:
        parts.append(f"gnorm {row['grad_norm']:.3f}")
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    if row.get("skipped_nonfinite"):
        parts.append(f"skipped {row['skipped_nonfinite']}")
    if isinstance(row.get("datasets"), dict):  # a blend's evaluation: each dataset's own loss beside the mean
        parts.append(", ".join(f"{name} {r['loss']:.4f}" for name, r in row["datasets"].items() if "loss" in r))
    return " | ".join(parts)


def read_metrics(path: Path) -> list[dict]:
    """All complete rows of a metrics.jsonl (a torn last line, from a killed run, is ignored)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_after(path: Path, step: int) -> None:
    """Drop the rows of steps after `step` (they belong to a run that is being resumed from `step`)."""
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    # Atomically: a kill during this rewrite must not lose the rows before `step` (no run re-logs them).
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the loss curves (total, MLM, SBO; training and validation) and the lr of a run into a PNG."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / METRICS)
    if not rows:
        raise ConfigError(f"{run_dir / METRICS}: no metrics to plot (is {run_dir} a run directory?)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plot needs matplotlib: pip install 'spanbert[plot]'") from None
    train = [r for r in rows if r.get("split", "train") == "train"]
    valid = [r for r in rows if r.get("split") == "valid"]
    fig, (ax_obj, ax_loss, ax_lr) = plt.subplots(3, 1, figsize=(9, 9), sharex=True, height_ratios=[3, 2, 1])
    entropy, sbo_weight = _unigram_entropy(run_dir)
    # Per objective, on a scale where the unigram line is readable: a model that ignores the context cannot beat
    # it, so held-out MLM below it is learning that carries over (the early, high steps are cut off at the top).
    for ax, keys in ((ax_obj, (("loss_mlm", "tab:blue"), ("loss_sbo", "tab:orange"))), (ax_loss, (("loss", "black"),))):
        for key, color in keys:
            ax.plot([r["step"] for r in train], [r[key] for r in train], color=color, lw=1, label=f"train {key}")
            if valid:
                ax.plot([r["step"] for r in valid], [r[key] for r in valid], "o--", color=color, ms=3,
                        label=f"valid {key}")  # fmt: skip
        ax.set_ylabel("cross-entropy (nats)")
        ax.grid(alpha=0.3)
    if entropy is not None:
        ax_obj.axhline(entropy, color="tab:red", ls=":", lw=1.2, label=f"unigram entropy {entropy:.2f}")
        shown = [r[k] for r in train + valid for k in ("loss_mlm", "loss_sbo")]
        ax_obj.set_ylim(min(shown + [entropy]) - 0.2, min(max(shown), entropy + 1.5))
        if sbo_weight == 1.0:  # the loss is MLM + SBO
            ax_loss.axhline(2 * entropy, color="tab:red", ls="--", lw=0.8, alpha=0.6, label="2 × unigram entropy")
    ax_obj.set_title(f"SpanBERT pre-training: {run_dir.name}, per objective")
    ax_obj.legend(fontsize=8)
    ax_loss.set_title("total loss (MLM + SBO × weight)", fontsize=9)
    ax_loss.legend(fontsize=8)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green", lw=1)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    out = Path(out) if out is not None else run_dir / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _unigram_entropy(run_dir: Path) -> tuple[float | None, float]:
    """The dataset's unigram entropy recorded in RUN_DIR/config.json at start (None for older runs), and the
    run's SBO weight."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        value, weight = config.get("dataset_unigram_entropy"), config.get("sbo_weight", 1.0)
    except (OSError, ValueError, AttributeError):
        return None, 1.0
    return (float(value) if isinstance(value, int | float) else None), weight


@click.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG path [RUN_DIR/loss.png]")
def plot_command(run_dir: Path, out: Path | None) -> None:
    """Plot the loss curves of RUN_DIR (metrics.jsonl) into a PNG."""
    click.echo(str(plot_run(run_dir, out)))
