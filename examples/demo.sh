#!/usr/bin/env bash
# `make demo`: build the bundled Wikipedia sample into training shards, then pre-train the `tiny`
# SpanBERT on it for ~4 minutes on 2 CPU cores and plot the loss against the unigram-entropy line.
#
# The settings are the ones that leave the unigram plateau soonest on CPU (measured for
# bench/pretrain_quality.py): 128-slot rows, 32 rows per update, no dropout, peak lr 1e-3. 5% of the
# articles are held out so the held-out curve is not one article's. The 2.6 MB sample is small: in
# 4 minutes the model passes over it ~5 times, and its held-out loss only reaches the unigram line
# (README, "Quick start"); bench/pretrain_quality.py shows it going clearly below on 30 MB of prose.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-800}

echo "== 1/4 build the dataset (vocab trained on the corpus, 128-slot rows, 4 mask epochs)"
$BIN/spanbert-data build --corpus examples/wiki/enwiki-sample.jsonl --out "$OUT/data" --vocab-size 8000 --workers 2 \
    --max-seq-len 128 --valid-fraction 0.05 --mask-epochs 4

echo "== 2/4 what is in it"
$BIN/spanbert-data inspect "$OUT/data" --examples 2

echo "== 3/4 pre-train the tiny model for $STEPS steps on CPU"
$BIN/spanbert-train --data "$OUT/data" --out "$OUT/run" --model tiny --model-set max_position_embeddings=128 \
    --model-set hidden_dropout=0 --model-set attention_dropout=0 --max-steps "$STEPS" --global-batch-size 32 \
    --micro-batch 32 --lr 1e-3 --warmup-steps $((STEPS / 10)) --eval-every 100 --eval-rows 0 --save-every 100 \
    --resume  # a second `make demo` finds the finished run and has nothing left to do

echo "== 4/4 plot the loss curves"
$BIN/spanbert-train plot "$OUT/run"

cat <<MSG

Done. Everything is under $OUT/:
  $OUT/data/            the dataset: manifest.json, tokenizer.json, epoch-*/ and valid/ shards (docs/FORMAT.md)
  $OUT/run/config.json  the resolved training configuration
  $OUT/run/metrics.jsonl  one JSON line per logged step (loss, loss_mlm, loss_sbo, accuracies, lr, tokens/s)
  $OUT/run/checkpoints/ the checkpoints (resume with --resume)
  $OUT/run/loss.png     the loss curves, with the unigram-entropy line
  $BIN/spanbert-train evaluate $OUT/run   prints held-out loss and accuracy, by span length (one JSON line)
MSG
