"""Hugging Face interop: export a trained checkpoint, load it with transformers, and start from HF checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from spanbert_data.build import build_dataset  # noqa: E402
from spanbert_data.config import BuildConfig  # noqa: E402
from spanbert_train.config import DataConfig, ModelSpec, TrainConfig  # noqa: E402
from spanbert_train.errors import ExportError  # noqa: E402
from spanbert_train.export import (  # noqa: E402
    export_command,
    export_model,
    load_hf_weights,
    load_sbo_head,
    model_config_from_hf,
)
from spanbert_train.model import ModelConfig, SpanBertForPreTraining  # noqa: E402
from spanbert_train.qa.finetune import encode_padded  # noqa: E402
from spanbert_train.qa.squad import load_squad, plain_tokenizer  # noqa: E402
from spanbert_train.train import Trainer  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER = ASSETS / "bert-uncased-tokenizer.json"
TINY = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64)
TEXTS = ["the harbour town of eldmere lies on the northern coast of the island.",
         "a ferry connects eldmere with the port of calloway three times a day."]  # fmt: skip


def _corpus(path: Path) -> Path:
    """One sentence per line, blank line between documents, from the QA fixture's paragraphs."""
    docs = {ex.context for name in ("train.json", "dev.json") for ex in load_squad(ASSETS / "squad_tiny" / name)}
    path.write_text("\n\n".join("\n".join(s.strip() + "." for s in d.split(". ")) for d in sorted(docs)) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real dataset (bert-uncased WordPiece) and a run trained for a few steps, with its checkpoint."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    build_dataset(BuildConfig(corpus=_corpus(root / "corpus.txt"), out=data, tokenizer=TOKENIZER, max_seq_len=64,
                              valid_fraction=0.0, workers=1), log=lambda m: None)  # fmt: skip
    cfg = TrainConfig(out=str(root / "run"), max_steps=4, save_every=0, eval_every=0, log_every=1, kernels="reference",
                      data=DataConfig(path=str(data), global_batch_size=4, micro_batch=4),
                      model=ModelSpec(preset="tiny", overrides=dict(TINY)))  # fmt: skip
    Trainer(cfg).run()
    return root / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "model"
    result = CliRunner().invoke(export_command, [str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _ours(hf_dir: Path) -> SpanBertForPreTraining:
    model = SpanBertForPreTraining(model_config_from_hf(hf_dir), attention="sdpa")
    load_hf_weights(model, hf_dir)
    return model.eval()


def _batch(hf_dir: Path):
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_export_loads_in_transformers_with_equal_mlm_logits(exported):
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json", "sbo_head.safetensors"} <= {p.name for p in exported.iterdir()}  # fmt: skip
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    hf, info = transformers.BertForMaskedLM.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ids, mask = _batch(exported)
    assert (mask == 0).any()  # the two texts differ in length, so padding is exercised
    ours = _ours(exported)
    with torch.no_grad():
        hidden = encode_padded(ours.bert, ids, mask).flatten(0, 1)
        logits = ours.cls.predictions.logits(hidden, torch.arange(hidden.shape[0])).view(*ids.shape, -1)
        want = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], want[real], atol=1e-5, rtol=0)


def test_export_is_the_checkpoint(run, exported):
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    trained = load_file(str(ckpt / "model.safetensors"))
    out = load_file(str(exported / "model.safetensors"))
    for key, value in out.items():
        assert torch.equal(value, trained[key]), key
    sbo = load_file(str(exported / "sbo_head.safetensors"))
    assert sbo and all(k.startswith("cls.sbo.") and torch.equal(v, trained[k]) for k, v in sbo.items())


def test_tokenizer_round_trips_through_auto_tokenizer(exported):
    ours = plain_tokenizer(TOKENIZER)
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    text = "Eldmere's lighthouse, painted red-and-white, is visible from 20 km!"
    assert theirs(text)["input_ids"] == ours.encode(text).ids
    assert json.loads((exported / "tokenizer_config.json").read_text())["do_lower_case"] is True
    vocab = (exported / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab == (ASSETS / "bert-uncased-vocab.txt").read_text().split("\n")[: len(vocab)] and len(vocab) == 30522


def test_fill_mask_pipeline_gives_tokens(exported):
    fill = transformers.pipeline("fill-mask", model=str(exported), device="cpu")
    out = fill("the ferry connects the town with the [MASK] of calloway.", top_k=5)
    vocab = (exported / "vocab.txt").read_text().split("\n")
    assert len(out) == 5
    for o in out:  # each prediction is a vocabulary token, placed where [MASK] was
        assert vocab[o["token"]] == o["token_str"].replace(" ", "")
        assert o["sequence"] == f"the ferry connects the town with the {o['token_str']} of calloway."
    scores = [o["score"] for o in out]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6


def test_sbo_head_loader_matches_the_model(exported):
    ours = _ours(exported)
    ids, mask = _batch(exported)
    left, right, offsets = torch.tensor([0, 2, 3]), torch.tensor([4, 5, 9]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        hidden = encode_padded(ours.bert, ids, mask).flatten(0, 1)
        want = ours.cls.sbo.logits(hidden, left, right, offsets, ours.bert.embeddings.word_embeddings.weight)
        head = load_sbo_head(exported)
        torch.testing.assert_close(head(hidden, left, right, offsets), want, atol=1e-6, rtol=0)
        hf = transformers.BertForMaskedLM.from_pretrained(exported)
        shared = load_sbo_head(exported, hf.bert.embeddings.word_embeddings.weight)
        assert shared.word_embeddings is hf.bert.embeddings.word_embeddings.weight
        torch.testing.assert_close(shared(hidden, left, right, offsets), want, atol=1e-6, rtol=0)


def test_export_init_from_export_round_trips(exported, tmp_path):
    torch.manual_seed(123)  # a different fresh initialisation, fully overwritten by the load
    model = SpanBertForPreTraining(model_config_from_hf(exported))
    report = load_hf_weights(model, exported, expected_vocab_size=30522)
    assert report.mlm_head == "loaded" and report.sbo_head == "loaded"
    again = export_model(model, exported / "tokenizer.json", tmp_path / "again")
    for name in ("model.safetensors", "sbo_head.safetensors"):
        a, b = load_file(str(exported / name)), load_file(str(again / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (exported / name).read_text() == (again / name).read_text()


def test_export_refuses_foreign_directory_and_replaces_previous_export(exported, tmp_path):
    model = _ours(exported)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a previous export"):
        export_model(model, exported / "tokenizer.json", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    target = tmp_path / "target"
    export_model(model, exported / "tokenizer.json", target)
    (target / "stale.txt").write_text("from the first export")
    export_model(model, exported / "tokenizer.json", target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "target"]  # no temp or old dirs left


def _hf_random(cls, vocab_size=30522):
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(7)
    return cls(cfg).eval()


@pytest.mark.parametrize("layout", ["BertForPreTraining-bin", "BertModel-safetensors"])
def test_init_from_hf_layouts(layout, tmp_path):
    cls = transformers.BertForPreTraining if layout.startswith("BertForPreTraining") else transformers.BertModel
    hf = _hf_random(cls)
    hf.save_pretrained(tmp_path)
    if layout.endswith("bin"):  # the older format: a pickled state dict, read with weights_only=True
        (tmp_path / "model.safetensors").unlink()
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = SpanBertForPreTraining(model_config_from_hf(tmp_path), attention="sdpa").eval()
    fresh_mlm = model.cls.predictions.transform.dense.weight.clone()
    report = load_hf_weights(model, tmp_path, expected_vocab_size=30522)
    bert = hf.bert if cls is transformers.BertForPreTraining else hf
    ids = torch.tensor([[101, 7592, 2088, 2003, 102, 0], [101, 2023, 2003, 1037, 3231, 102]])
    mask = (torch.arange(6) < torch.tensor([[5], [6]])).long()
    types = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = encode_padded(model.bert, ids, mask, types)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=0)
    assert report.sbo_head == "initialised"
    if cls is transformers.BertForPreTraining:
        assert report.mlm_head == "loaded"
        assert torch.equal(model.cls.predictions.transform.dense.weight, hf.cls.predictions.transform.dense.weight)
        assert any(k.startswith("cls.seq_relationship") for k in report.ignored)
        assert any(k.startswith("bert.pooler") for k in report.ignored)
    else:
        assert report.mlm_head == "initialised"
        assert torch.equal(model.cls.predictions.transform.dense.weight, fresh_mlm)
    # tying survives the in-place load
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_init_from_errors_are_clear(tmp_path):
    hf = _hf_random(transformers.BertForMaskedLM, vocab_size=120)
    hf.save_pretrained(tmp_path)
    model = SpanBertForPreTraining(model_config_from_hf(tmp_path))
    with pytest.raises(ExportError, match="vocab_size 120 but the dataset's manifest says 28996"):
        load_hf_weights(model, tmp_path, expected_vocab_size=28996)
    deeper = SpanBertForPreTraining(ModelConfig(**{**model.config.to_dict(), "num_layers": 3}))
    with pytest.raises(ExportError, match="missing encoder tensors"):
        load_hf_weights(deeper, tmp_path)
    with pytest.raises(ExportError, match="config.json: missing"):
        load_hf_weights(model, tmp_path / "nowhere")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu_new"}))
    with pytest.raises(ExportError, match="hidden_act"):
        model_config_from_hf(tmp_path)


def test_cased_tokenizer_exports_without_lower_casing(exported, tmp_path):
    spec = json.loads(TOKENIZER.read_text())
    spec["normalizer"]["lowercase"] = False
    cased = tmp_path / "cased.json"
    cased.write_text(json.dumps(spec))
    out = export_model(_ours(exported), cased, tmp_path / "cased-export")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello World, the Harbour"
    assert theirs(text)["input_ids"] == plain_tokenizer(cased).encode(text).ids
    assert theirs(text)["input_ids"] != plain_tokenizer(TOKENIZER).encode(text).ids  # case really matters here
