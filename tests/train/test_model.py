"""The SpanBERT model: HF compatibility, packed == unpacked, heads, init, presets, the batch layout."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

from spanbert_train.batch import Batch, make_batch
from spanbert_train.model import PRESETS, ModelConfig, SpanBertForPreTraining

VOCAB = 300
ROW_SLOTS = 48
# Rows of examples (their lengths): several examples per row, a full row, a row with padding only after one.
PACKING = [[20, 15, 9], [48], [30]]


def _example(rng: np.random.Generator, length: int) -> dict:
    """One `[CLS] content [SEP]` example with MLM and SBO targets in example-relative slots."""
    ids = rng.integers(5, VOCAB, size=length)
    ids[0], ids[-1] = 1, 2
    content = np.arange(1, length - 1)
    mlm = np.sort(rng.choice(content, size=max(1, math.ceil(0.2 * content.size)), replace=False))
    sbo = mlm[(mlm >= 2) & (mlm <= length - 3)]
    return {
        "ids": ids,
        "mlm": mlm,
        "mlm_labels": rng.integers(5, VOCAB, size=mlm.size),
        "sbo": sbo,
        "left": np.array([rng.integers(0, s) for s in sbo], dtype=np.int64),
        "right": np.array([rng.integers(s + 1, length) for s in sbo], dtype=np.int64),
        "offsets": rng.integers(0, 15, size=sbo.size),
        "sbo_labels": rng.integers(5, VOCAB, size=sbo.size),
    }


def _batch(rows: list[list[dict]], slots: int) -> Batch:
    """Pack example dicts into rows of `slots` slots, as a shard would hold them, and make the Batch."""
    input_ids = np.zeros((len(rows), slots), dtype=np.uint16)
    columns = {k: [] for k in ("lengths", "mlm", "mlm_labels", "sbo", "left", "right", "offsets", "sbo_labels")}
    for r, row in enumerate(rows):
        start, per_row = 0, {k: [] for k in columns}
        for ex in row:
            input_ids[r, start:start + ex["ids"].size] = ex["ids"]
            per_row["lengths"].append([ex["ids"].size])
            for key in ("mlm", "sbo", "left", "right"):
                per_row[key].append(ex[key] + start)
            for key in ("mlm_labels", "offsets", "sbo_labels"):
                per_row[key].append(ex[key])
            start += ex["ids"].size
        for key in columns:
            columns[key].append(np.concatenate(per_row[key]) if per_row[key] else np.zeros(0, np.int64))

    def column(key):
        values = columns[key]
        offsets = np.concatenate([[0], np.cumsum([v.size for v in values])])
        return offsets.astype(np.int32), np.concatenate(values).astype(np.uint16)

    return make_batch(input_ids, column("lengths"), column("mlm"), column("mlm_labels"), column("sbo"),
                      column("left"), column("right"), column("offsets"), column("sbo_labels"))


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    return [[_example(rng, n) for n in row] for row in PACKING]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64)).eval()


def _hf_model(model: SpanBertForPreTraining) -> BertForMaskedLM:
    hf = BertForMaskedLM(BertConfig(**model.config.to_hf_config())).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("cls.sbo.")}
    hf.load_state_dict(state, strict=True)
    return hf


def test_state_dict_keys_are_bert_for_masked_lm_plus_sbo(model):
    hf = BertForMaskedLM(BertConfig(**model.config.to_hf_config()))
    ours = set(model.state_dict())
    assert {k for k in ours if not k.startswith("cls.sbo.")} == set(hf.state_dict())
    assert {k for k in ours if k.startswith("cls.sbo.")} == {
        "cls.sbo.position_embeddings.weight", "cls.sbo.bias", "cls.sbo.dense_1.weight", "cls.sbo.dense_1.bias",
        "cls.sbo.LayerNorm_1.weight", "cls.sbo.LayerNorm_1.bias", "cls.sbo.dense_2.weight", "cls.sbo.dense_2.bias",
        "cls.sbo.LayerNorm_2.weight", "cls.sbo.LayerNorm_2.bias",
    }
    assert not any("pooler" in k for k in ours)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def test_mlm_logits_equal_hf_bert_on_each_example(model, examples):
    ours = model.mlm_logits(_batch(examples, ROW_SLOTS))
    hf = _hf_model(model)
    expected = []
    with torch.no_grad():
        for ex in (ex for row in examples for ex in row):
            ids = torch.from_numpy(ex["ids"].astype(np.int64))[None]
            logits = hf(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0]
            expected.append(logits[torch.from_numpy(ex["mlm"])])
    torch.testing.assert_close(ours, torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_from_pretrained_loads_the_rename_free_save(model, examples, tmp_path):
    # Tied tensors are stored once; HF re-ties the decoder to the word embeddings on load.
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("cls.sbo.") and not k.startswith("cls.predictions.decoder.")}
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_hf_config()))
    hf, info = BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = _batch(examples[:1], ROW_SLOTS)
    ex = examples[0][0]
    ids = torch.from_numpy(ex["ids"].astype(np.int64))[None]
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids).logits[0, torch.from_numpy(ex["mlm"])]
    torch.testing.assert_close(model.mlm_logits(batch)[: ex["mlm"].size], expected, rtol=1e-5, atol=1e-5)


def test_packed_rows_equal_examples_run_one_by_one(model, examples):
    packed = _batch(examples, ROW_SLOTS)
    with torch.no_grad():
        hidden = model.encode(packed)
        parts = model(packed)
    singles = [(r, start, ex) for r, row in enumerate(examples)
               for start, ex in zip(np.cumsum([0] + [e["ids"].size for e in row])[:-1], row, strict=True)]
    totals = torch.zeros(6)
    for r, start, ex in singles:
        alone = _batch([[ex]], ex["ids"].size)  # unpadded: the row is exactly the example
        with torch.no_grad():
            torch.testing.assert_close(hidden[r, start:start + ex["ids"].size], model.encode(alone)[0],
                                       rtol=1e-5, atol=1e-5)
            totals += model(alone).detached()
    torch.testing.assert_close(parts.detached(), totals, rtol=1e-5, atol=1e-4)
    assert parts.mlm_count.item() == sum(ex["mlm"].size for _, _, ex in singles)
    assert parts.sbo_count.item() == sum(ex["sbo"].size for _, _, ex in singles)


def test_attention_never_crosses_examples(model, examples):
    batch = _batch(examples, ROW_SLOTS)
    changed = _batch(examples, ROW_SLOTS)
    changed.input_ids[0, 21:34] = 7  # inside the second example of row 0 (slots 20..34)
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(changed)
    assert torch.equal(before[0, :20], after[0, :20]) and torch.equal(before[0, 35:], after[0, 35:])
    assert not torch.allclose(before[0, 20:35], after[0, 20:35])


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _ce_parts(logits, labels):
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    loss = -log_probs[torch.arange(labels.numel()), labels].sum()
    return loss, float(labels.numel()), float((logits.argmax(-1) == labels).sum())


def test_heads_match_a_direct_recomputation(examples):
    torch.manual_seed(1)
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64))
    with torch.no_grad():  # non-trivial biases and LayerNorm affine so that every term is exercised
        for p in model.cls.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    batch = _batch(examples, ROW_SLOTS)
    with torch.no_grad():
        x = model.encode(batch).flatten(0, 1)
        parts = model(batch)
        E = model.bert.embeddings.word_embeddings.weight
        mlm, sbo = model.cls.predictions, model.cls.sbo

        t = x[batch.mlm_index] @ mlm.transform.dense.weight.T + mlm.transform.dense.bias
        t = _layer_norm(_gelu(t), mlm.transform.LayerNorm)
        mlm_expected = _ce_parts(t @ E.T + mlm.bias, batch.mlm_labels)

        h0 = torch.cat([x[batch.sbo_left], x[batch.sbo_right], sbo.position_embeddings.weight[batch.sbo_offsets]], 1)
        h1 = _layer_norm(_gelu(h0 @ sbo.dense_1.weight.T + sbo.dense_1.bias), sbo.LayerNorm_1)
        y = _layer_norm(_gelu(h1 @ sbo.dense_2.weight.T + sbo.dense_2.bias), sbo.LayerNorm_2)
        sbo_expected = _ce_parts(y @ E.T + sbo.bias, batch.sbo_labels)

    got = parts.detached()
    torch.testing.assert_close(got[0], mlm_expected[0], rtol=1e-5, atol=1e-4)
    assert got[1:3].tolist() == [mlm_expected[1], mlm_expected[2]]
    torch.testing.assert_close(got[3], sbo_expected[0], rtol=1e-5, atol=1e-4)
    assert got[4:6].tolist() == [sbo_expected[1], sbo_expected[2]]
    assert all(t.dtype == torch.float32 and t.dim() == 0 for t in vars(parts).values())


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton kernels need CUDA or the interpreter")
def test_triton_kernels_give_the_reference_losses_and_gradients(examples):
    torch.manual_seed(7)
    config = ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64, num_layers=1)
    reference = SpanBertForPreTraining(config, kernels="reference").eval()
    fused = SpanBertForPreTraining(config, kernels="triton").eval()
    fused.load_state_dict(reference.state_dict())
    batch = _batch(examples[:1], ROW_SLOTS)
    results = []
    for model in (reference, fused):
        parts = model(batch)
        parts.objective(parts.mlm_count, parts.sbo_count).backward()
        results.append((parts.detached(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_init_follows_spec():
    torch.manual_seed(3)
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=2000))
    for name, p in model.named_parameters():
        if name.endswith("LayerNorm.weight") or "LayerNorm_" in name and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif p.dim() == 1:  # Linear biases, LayerNorm betas, the decoders' own biases
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # every Linear and Embedding, the SBO position table (15 x 200) included
            assert abs(p.mean().item()) < 0.003, name
            assert abs(p.std().item() - 0.02) < 0.02 * 0.06, (name, p.std().item())


def test_presets_and_overrides():
    assert ModelConfig().num_layers == 24 and ModelConfig().hidden_size == 1024  # the paper's model (SPEC §5)
    base = ModelConfig.from_preset("base", vocab_size=28996, hidden_dropout=0.0)
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (12, 768, 12, 3072)
    assert base.hidden_dropout == 0.0 and base.attention_dropout == 0.1 and base.layer_norm_eps == 1e-12
    assert set(PRESETS) == {"tiny", "small", "base", "large"}
    with pytest.raises(ValueError, match="hidden_sise"):
        ModelConfig.from_preset("tiny", hidden_sise=64)
    with pytest.raises(ValueError, match="'huge'"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ValueError, match="model.hidden_size"):
        ModelConfig.from_preset("tiny", hidden_size=130, num_heads=4)
    with pytest.raises(ValueError, match="model.attention_dropout"):
        ModelConfig.from_preset("tiny", attention_dropout=1.5)
    with pytest.raises(ValueError, match="model.vocab_size"):
        SpanBertForPreTraining(ModelConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="sdpa"):
        SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=VOCAB), attention="flash")


def test_parameter_count_matches_hf_base_plus_sbo():
    config = ModelConfig.from_preset("base", vocab_size=28996)
    with torch.device("meta"):
        ours = SpanBertForPreTraining(config).num_parameters()
        hf = sum(p.numel() for p in BertForMaskedLM(BertConfig(**config.to_hf_config())).parameters())
    sbo = 15 * 200 + (2 * 768 + 200) * 768 + 768 + 768 * 768 + 768 + 4 * 768 + 28996
    assert ours == hf + sbo
    assert 100e6 < hf < 120e6  # BERT-base


def test_flops_estimate_matches_counted_matmuls(examples):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(4)
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64))
    batch = _batch([[examples[1][0]]], ROW_SLOTS)  # one full 48-token example
    n = batch.num_tokens
    with FlopCounterMode(display=False) as counter:
        model(batch).objective(1.0, 1.0).backward()
    counted = counter.get_total_flops()
    attention = 3 * model.config.num_layers * 4 * n * n * model.config.hidden_size  # QKᵀ and AV, fwd + bwd
    estimate = n * model.estimate_flops_per_token(
        attn_len=n, mlm_per_token=batch.mlm_labels.numel() / n, sbo_per_token=batch.sbo_labels.numel() / n
    )
    # The CPU masked-SDPA kernel may or may not be visible to the counter; both readings must fit.
    assert min(abs(counted - estimate), abs(counted + attention - estimate)) < 1e-3 * estimate, (counted, estimate)


def test_training_step_reaches_every_parameter(examples):
    torch.manual_seed(5)
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64))
    batch = _batch(examples, ROW_SLOTS)
    first, second = model(batch), model(batch)  # dropout 0.1 in training mode: two draws differ
    assert first.mlm_loss_sum.item() != second.mlm_loss_sum.item()
    first.objective(first.mlm_count, first.sbo_count).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # A batch without SBO targets still reaches the SBO head (zero gradient, not None: DDP needs it).
    model.zero_grad(set_to_none=True)
    no_sbo = _batch([[{**ex, **{k: ex[k][:0] for k in ("sbo", "left", "right", "offsets", "sbo_labels")}}
                      for ex in row] for row in examples], ROW_SLOTS)
    parts = model(no_sbo)
    assert parts.sbo_count.item() == 0 and parts.sbo_loss_sum.item() == 0
    parts.objective(parts.mlm_count, parts.sbo_count).backward()
    assert model.cls.sbo.dense_1.weight.grad is not None and not model.cls.sbo.dense_1.weight.grad.any()


def test_make_batch_layout(examples):
    batch = _batch(examples, ROW_SLOTS)
    assert batch.cu_seqlens.tolist() == [0, 20, 35, 44, 48, 96, 126, 144]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.max_seqlen == 48 and batch.num_tokens == 122
    assert batch.position_ids[0, :22].tolist() == list(range(20)) + [0, 1]
    assert batch.position_ids[0, 44:].tolist() == [0] * 4 and batch.position_ids[1].tolist() == list(range(48))
    assert batch.example_ids[0].tolist() == [0] * 20 + [1] * 15 + [2] * 9 + [3] * 4
    assert batch.example_ids[2].unique().tolist() == [5, 6]
    assert batch.mlm_index[: examples[0][0]["mlm"].size].tolist() == examples[0][0]["mlm"].tolist()
    assert batch.sbo_left[-1].item() == 2 * ROW_SLOTS + examples[2][0]["left"][-1]
    assert batch.input_ids.dtype == torch.int64 and batch.to("cpu").input_ids.equal(batch.input_ids)


def test_make_batch_rejects_malformed_columns(examples):
    good = _batch(examples, ROW_SLOTS)
    empty = (np.array([0, 0]), np.array([], dtype=np.uint16))
    one = (np.array([0, 1]), np.array([60], dtype=np.uint16))
    with pytest.raises(ValueError, match="example_lengths: row 0 holds 9 tokens"):
        make_batch(np.zeros((1, 8), np.uint16), (np.array([0, 2]), np.array([5, 4])), *[empty] * 7)
    with pytest.raises(ValueError, match="mlm_positions: slots"):
        make_batch(np.zeros((1, 8), np.uint16), (np.array([0, 1]), np.array([8])), one, one, *[empty] * 5)
    with pytest.raises(ValueError, match="sbo_offsets"):
        make_batch(np.zeros((1, 8), np.uint16), (np.array([0, 1]), np.array([8])), empty, empty,
                   *[(np.array([0, 1]), np.array([3]))] * 3, (np.array([0, 1]), np.array([15])), one)
    with pytest.raises(ValueError, match="mlm_labels: offsets"):
        make_batch(np.zeros((1, 8), np.uint16), (np.array([0, 1]), np.array([8])), empty, one, *[empty] * 5)
    assert good.num_tokens == 122


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen attention needs CUDA")
def test_varlen_matches_masked_sdpa_on_cuda(examples):
    torch.manual_seed(6)
    config = ModelConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64)
    varlen = SpanBertForPreTraining(config, attention="varlen").cuda()
    sdpa = SpanBertForPreTraining(config, attention="sdpa").cuda()
    sdpa.load_state_dict(varlen.state_dict())
    batch = _batch(examples, ROW_SLOTS).pin_memory().to("cuda", non_blocking=True)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        a, b = varlen.eval().encode(batch).float(), sdpa.eval().encode(batch).float()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # training: dropout inside the flash kernel
        parts = varlen.train()(batch)
        parts.objective(parts.mlm_count, parts.sbo_count).backward()
    assert all(torch.isfinite(p.grad).all() for p in varlen.parameters())
