"""No code path unpickles: a malicious pickle planted where weights are read is refused and never runs.

The payload's `__reduce__` would create a marker file when unpickled; each test plants it, runs the real
entry point, and checks the refusal AND that the marker never appeared. A source scan guards the rest.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from spanbert_train.cli import main
from spanbert_train.export import export_model
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from tests.faults.helpers import REPO, TINY_MODEL, VOCAB
from tests.faults.test_bad_training_inputs import assert_not_started, train_cli
from tests.train.dataset_fixture import make_dataset

TRAIN = [*TINY_MODEL, "--global-batch-size", "4", "--micro-batch", "4", "--eval-rows", "4"]


class Payload:
    """Unpickling this calls Path.touch(marker): the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, as_torch: bool = False) -> None:
    if as_torch:  # a torch.save zip archive whose data.pkl holds the payload next to a real tensor
        torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def test_the_payload_is_live(tmp_path):
    """Guard against a test that cannot fail: unpickling the planted bytes really does create the marker."""
    marker = tmp_path / "PWNED"
    plant(tmp_path / "evil.pkl", marker)
    pickle.loads((tmp_path / "evil.pkl").read_bytes())  # the one deliberate unpickle, of our own bytes
    assert marker.exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=16, mask_epochs=1, valid_rows=0)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the payload's protocol, then refuses it
@pytest.mark.parametrize("as_torch", [False, True], ids=["raw-pickle", "torch-save"])
def test_init_from_pytorch_model_bin_payload_is_refused(capsys, data, tmp_path, as_torch):
    hf = tmp_path / "hf"
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=300, max_position_embeddings=64))
    (hf).mkdir()
    (hf / "config.json").write_text(json.dumps(model.config.to_hf_config()))
    marker = tmp_path / "PWNED"
    plant(hf / "pytorch_model.bin", marker, as_torch=as_torch)
    result = train_cli(capsys, "--data", data, "--out", tmp_path / "run", *TRAIN, "--init-from", hf)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(hf / "pytorch_model.bin") in result.stderr and "refused" in result.stderr
    assert not marker.exists()
    assert_not_started(tmp_path / "run")


def test_init_from_payload_named_model_safetensors_is_refused(capsys, data, tmp_path):
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=30522, max_position_embeddings=64))
    hf = export_model(model, VOCAB, tmp_path / "hf")
    (hf / "config.json").write_text(json.dumps({**json.loads((hf / "config.json").read_text()), "vocab_size": 300}))
    marker = tmp_path / "PWNED"
    plant(hf / "model.safetensors", marker)
    result = train_cli(capsys, "--data", data, "--out", tmp_path / "run", *TRAIN, "--init-from", hf)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(hf / "model.safetensors") in result.stderr and "not a readable safetensors file" in result.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([str(x) for x in ["--data", data, "--out", run_dir, *TRAIN, "--max-steps", "2", "--save-every", "1"]])
    assert exit_info.value.code == 0
    return run_dir


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_checkpoint_file_replaced_by_payload_is_never_unpickled(capsys, data, trained, tmp_path, name):
    """The attacker also rewrites meta.json so that size and SHA-256 match: the bytes still reach only safetensors."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    ckpt = run_dir / "checkpoints" / "step-00000002"
    marker = tmp_path / "PWNED"
    plant(ckpt / name, marker)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = {"bytes": (ckpt / name).stat().st_size,
                           "sha256": hashlib.sha256((ckpt / name).read_bytes()).hexdigest()}  # fmt: skip
    (ckpt / "meta.json").write_text(json.dumps(meta))
    plant(ckpt / "pytorch_model.bin", marker)  # files a pickle-based loader would look for: never opened
    plant(ckpt / "optimizer.pt", marker)
    result = train_cli(capsys, "--data", data, "--out", run_dir, *TRAIN, "--max-steps", "4", "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(ckpt / name) in result.stderr and "not a readable safetensors file" in result.stderr
    exported = train_cli(capsys, "export", ckpt, "--out", tmp_path / "hf")
    if name == "model.safetensors":  # export reads only the model's tensors
        assert exported.returncode == 1 and str(ckpt / name) in exported.stderr
    assert "Traceback" not in exported.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------------------- source scan
# Every call that can run code hidden in a file. This file is skipped (its own payload test unpickles on purpose).
UNSAFE = {
    "pickle.load": re.compile(r"\b(c?pickle|dill|joblib|cloudpickle)\.loads?\("),
    "torch.load": re.compile(r"\btorch\.load\("),
    "np.load allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas read_pickle": re.compile(r"\bread_pickle\("),
    "Unpickler": re.compile(r"\bUnpickler\("),
}


def _calls(text: str, start: int) -> str:
    """The source of the call starting at `start`, up to its closing parenthesis."""
    depth, i = 0, text.index("(", start)
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[start : j + 1]
    return text[start:]


def test_source_never_unpickles():
    this = Path(__file__).resolve()
    roots = [REPO / d for d in ("spanbert_data", "spanbert_train", "bench", "examples", "tests")]
    files = [p for root in roots for p in root.rglob("*.py") if p.resolve() != this]
    assert len(files) > 30
    found = []
    for path in files:
        text = path.read_text()
        for what, pattern in UNSAFE.items():
            for m in pattern.finditer(text):
                call = _calls(text, m.start()) if what == "torch.load" else m.group(0)
                if what == "torch.load" and re.search(r"weights_only\s*=\s*True", call):
                    continue
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {what}: {call[:80]}")
    assert found == [], "\n".join(found)
