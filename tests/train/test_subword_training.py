"""Training, evaluation, export and `fill-mask` with a byte-level BPE, a Unigram/Metaspace and a converted
SentencePiece tokenizer (issue 22): 20 steps on a real build, the special ids from the manifest, `<mask>` in
`transformers`' pipeline, and `--init-from` the export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")

from bench.subword_tokenizers import family_tokenizer, sample_documents, write_corpus  # noqa: E402
from spanbert_data.build import build_dataset  # noqa: E402
from spanbert_data.config import BuildConfig  # noqa: E402
from spanbert_train.config import DataConfig, ModelSpec, TrainConfig  # noqa: E402
from spanbert_train.data import Dataset  # noqa: E402
from spanbert_train.evaluate import span_words  # noqa: E402
from spanbert_train.export import export_command, load_hf_weights, model_config_from_hf  # noqa: E402
from spanbert_train.model import SpanBertForPreTraining  # noqa: E402
from spanbert_train.shard import RowSource  # noqa: E402
from spanbert_train.train import Trainer  # noqa: E402

TINY = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=128)


def train_and_export(family: str, root: Path) -> tuple[Path, Path, dict]:
    docs = sample_documents(6)
    corpus = write_corpus(root / "corpus.txt", docs)
    tokenizer = family_tokenizer(family, [line for d in docs for line in d], root)
    data = root / "data"
    manifest = build_dataset(BuildConfig(corpus=corpus, out=data, tokenizer=tokenizer, max_seq_len=128,
                                         valid_fraction=0.2), log=lambda _m: None)  # fmt: skip
    cfg = TrainConfig(out=str(root / "run"), max_steps=20, save_every=0, eval_every=20, log_every=5,
                      kernels="reference", data=DataConfig(path=str(data), global_batch_size=4, micro_batch=4),
                      model=ModelSpec(preset="tiny", overrides=dict(TINY)))  # fmt: skip
    Trainer(cfg).run()
    out = root / "hf"
    result = CliRunner().invoke(export_command, [str(root / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return data, out, manifest


@pytest.mark.parametrize("family", ["bpe", "unigram", "sentencepiece"])
def test_train_evaluate_export_fill_mask(family, tmp_path):
    data, hf_dir, manifest = train_and_export(family, tmp_path)
    roles = manifest["tokenizer"]["special_ids"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss_mlm" in m and m.get("split") is None]
    assert steps and all(np.isfinite(m["loss_mlm"]) for m in steps)
    evals = [m for m in metrics if "acc_mlm_by_span_words" in json.dumps(m)]
    assert evals, "the run evaluated on held-out rows"

    # evaluation counts span words from the shards' own word starts (not a ## table)
    ds = Dataset(data)
    cols = RowSource(ds.valid).gather(np.arange(sum(s.rows for s in ds.valid)))
    words = span_words(*cols["mlm_positions"], cols["mlm_word_starts"][1].astype(bool))
    assert words.max() > 1 and words.min() >= 1
    ds.close()

    config = json.loads((hf_dir / "config.json").read_text())
    assert config["pad_token_id"] == roles["pad"] and config["vocab_size"] == manifest["tokenizer"]["vocab_size"]
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert (tok.mask_token_id, tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (
        roles["mask"], roles["pad"], roles["cls"], roles["sep"])
    text = "The family moved to <mask> in 1816."
    enc = tok(text)["input_ids"]
    assert enc[0] == roles["cls"] and enc[-1] == roles["sep"] and enc.count(roles["mask"]) == 1
    # the space before <mask> goes with it, as the space of a masked word did in training
    assert tok.convert_ids_to_tokens(enc[enc.index(roles["mask"]) - 1]) not in ("Ġ", "\u2581")
    fill = transformers.pipeline("fill-mask", model=str(hf_dir), device="cpu")
    out = fill(text, top_k=5)
    assert len(out) == 5
    for o in out:  # each prediction is a vocabulary token, put where <mask> was
        assert o["sequence"].startswith("The family moved to") and o["sequence"].endswith("in 1816.")
        assert o["token"] < config["vocab_size"]
    scores = [o["score"] for o in out]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6

    # --init-from the export: the same weights back, for a dataset of this tokenizer
    model = SpanBertForPreTraining(model_config_from_hf(hf_dir))
    report = load_hf_weights(model, hf_dir, expected_vocab_size=manifest["tokenizer"]["vocab_size"])
    assert report.mlm_head == "loaded" and report.sbo_head == "loaded"
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir)
    assert torch.equal(hf.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
