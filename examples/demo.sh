#!/usr/bin/env bash
# `make demo`: build the bundled Wikipedia sample into training shards, then pre-train the `tiny`
# SpanBERT on it for a few hundred steps on CPU (a few minutes) and plot the loss.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-300}

echo "== 1/4 build the dataset (vocab trained on the corpus, 2 mask epochs)"
$BIN/spanbert-data build --corpus examples/wiki/enwiki-sample.jsonl --out "$OUT/data" --vocab-size 8000 --workers 2 --mask-epochs 2

echo "== 2/4 what is in it"
$BIN/spanbert-data inspect "$OUT/data" --examples 2

echo "== 3/4 pre-train the tiny model for $STEPS steps on CPU"
$BIN/spanbert-train --data "$OUT/data" --out "$OUT/run" --model tiny --max-steps "$STEPS" \
    --global-batch-size 16 --micro-batch 8 --lr 1e-3 --warmup-steps 30 --eval-every 100 --save-every 100 \
    --resume  # a second `make demo` finds the finished run and has nothing left to do

echo "== 4/4 plot the loss curves"
$BIN/spanbert-train plot "$OUT/run"

cat <<MSG

Done. Everything is under $OUT/:
  $OUT/data/            the dataset: manifest.json, tokenizer.json, epoch-*/ and valid/ shards (docs/FORMAT.md)
  $OUT/run/config.json  the resolved training configuration
  $OUT/run/metrics.jsonl  one JSON line per logged step (loss, loss_mlm, loss_sbo, accuracies, lr, tokens/s)
  $OUT/run/checkpoints/ the checkpoints (resume with --resume)
  $OUT/run/loss.png     the loss curves
MSG
