"""The tiny SpanBERT model trains the same with the Triton kernels as with the plain-PyTorch references.

Under TRITON_INTERPRET on CPU. Dropout is 0 for the step-by-step comparison: torch's dropout and the
kernel's seeded mask draw different elements (their agreement for one mask is tested per kernel).
"""

import numpy as np
import pytest
import torch

from spanbert_train.batch import make_batch
from spanbert_train.model import ModelConfig, SpanBertForPreTraining

VOCAB, SLOTS, STEPS = 101, 24, 20
EXAMPLE_LENGTHS = [[14, 10], [19]]  # two packed rows: two examples, then one example and padding


def make_tiny_batch():
    rng = np.random.default_rng(0)
    input_ids = np.zeros((len(EXAMPLE_LENGTHS), SLOTS), dtype=np.uint16)
    cols = {k: [] for k in ("lengths", "mlm", "mlm_labels", "sbo", "left", "right", "offsets", "sbo_labels")}
    for r, lengths in enumerate(EXAMPLE_LENGTHS):
        start, row = 0, {k: [] for k in cols}
        for n in lengths:
            input_ids[r, start : start + n] = rng.integers(5, VOCAB, n)
            input_ids[r, start], input_ids[r, start + n - 1] = 1, 2  # [CLS] ... [SEP]
            targets = np.array([2, 3, n - 3])  # a two-token span with both neighbours inside, and one more
            row["lengths"].append([n])
            row["mlm"].append(targets + start)
            row["mlm_labels"].append(rng.integers(5, VOCAB, targets.size))
            row["sbo"].append(targets[:2] + start)
            row["left"].append(np.array([1, 1]) + start)
            row["right"].append(np.array([4, 4]) + start)
            row["offsets"].append(np.array([0, 1]))
            row["sbo_labels"].append(rng.integers(5, VOCAB, 2))
            start += n
        for k in cols:
            cols[k].append(np.concatenate(row[k]))

    def column(k):
        offsets = np.concatenate([[0], np.cumsum([v.size for v in cols[k]])]).astype(np.int32)
        return offsets, np.concatenate(cols[k]).astype(np.uint16)

    return make_batch(input_ids, *(column(k) for k in cols))


def train(kernels: str, state: dict, dropout: float = 0.0, seed: int = 0) -> list[float]:
    config = ModelConfig.from_preset(
        "tiny", vocab_size=VOCAB, max_position_embeddings=32, hidden_size=32, num_heads=2, intermediate_size=64,
        hidden_dropout=dropout, attention_dropout=0.0,
    )  # fmt: skip
    model = SpanBertForPreTraining(config, kernels=kernels, attention="sdpa")
    model.load_state_dict(state)
    assert model.cls.predictions.ops.kind == kernels
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batch = make_tiny_batch()
    torch.manual_seed(seed)
    losses = []
    for _ in range(STEPS):
        parts = model(batch)
        loss = parts.objective(parts.mlm_count, parts.sbo_count)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the interpreter runs NumPy between torch ops; idle OpenMP workers spinning in between made a step ~10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def initial_state():
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=VOCAB, max_position_embeddings=32, hidden_size=32, num_heads=2, intermediate_size=64
    )
    return SpanBertForPreTraining(config, attention="sdpa").state_dict()


def test_triton_and_reference_train_alike(initial_state):
    ref = train("reference", initial_state)
    tri = train("triton", initial_state)
    assert ref[-1] < 0.8 * ref[0]  # it learns the batch, so the comparison covers a moving model
    np.testing.assert_allclose(tri, ref, rtol=1e-5)  # measured: 2e-7


def test_triton_dropout_is_repeatable(initial_state):
    a = train("triton", initial_state, dropout=0.1, seed=3)
    b = train("triton", initial_state, dropout=0.1, seed=3)
    assert a == b and a[-1] < a[0]
    assert train("triton", initial_state, dropout=0.1, seed=4) != a
