"""The last lines of `make demo`: did the model learn something that carries over to text it never saw?

    python examples/demo_report.py RUN_DIR DATA_DIR [--seconds N]

Prints the held-out MLM loss of the run's last evaluation (metrics.jsonl) beside the unigram line that
loss.png draws (the corpus's unigram entropy, from RUN_DIR/config.json), and the held-out targets'
cross-entropy under the unigram distribution (what a model that ignores the context scores on exactly
those targets), and how far below both the model ended.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spanbert_train.data import Dataset
from spanbert_train.evaluate import heldout_unigram_cross_entropy
from spanbert_train.metrics import METRICS, read_metrics

MARGIN = 0.1  # nats below the line that count as "visibly learning" (issue 24)


def below(gap: float) -> str:
    return f"{gap:.2f} nats below it" if gap >= 0 else f"{-gap:.2f} nats above it"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--seconds", type=float, default=None, help="how long the demo took (printed)")
    args = parser.parse_args(argv)
    valid = [r for r in read_metrics(args.run / METRICS) if r.get("split") == "valid"]
    config = json.loads((args.run / "config.json").read_text())
    line = config.get("dataset_unigram_entropy")
    if not valid or line is None:
        print(f"no held-out evaluation in {args.run / METRICS}; nothing to report", file=sys.stderr)
        return 1
    last = valid[-1]
    dataset = Dataset(args.data)
    targets = heldout_unigram_cross_entropy(dataset)
    loss = last["loss_mlm"]
    slots = last["step"] * config["data"]["global_batch_size"] * dataset.manifest["max_seq_len"] / 1e6
    print(f"held-out MLM loss {loss:.3f} nats at step {last['step']} ({slots:.1f}M training slots), "
          f"accuracy {100 * last['acc_mlm']:.1f}%")  # fmt: skip
    print(f"unigram line {line:.3f} nats (the corpus's unigram entropy, the red dotted line in loss.png): "
          f"{below(line - loss)}")  # fmt: skip
    gaps = [line - loss]
    if targets is not None:
        print(f"the same held-out targets scored by their unigram frequencies alone: {targets:.3f} nats: "
              f"{below(targets - loss)}")  # fmt: skip
        gaps.append(targets - loss)
    if min(gaps) >= MARGIN:
        print(f"-> at least {min(gaps):.2f} nats below both: the model predicts masked words of text it never "
              "trained on better than word frequencies alone do")  # fmt: skip
    else:
        print(f"-> {below(min(gaps))} at best: not visibly learning yet (README, Quick start: too little text or "
              "too few steps)")  # fmt: skip
    took = f" (the demo took {args.seconds // 60:.0f} min {args.seconds % 60:.0f} s)" if args.seconds else ""
    print(f"loss curves: {args.run / 'loss.png'}{took}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
