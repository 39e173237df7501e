"""Atomic, safe-to-load checkpoints: RUN_DIR/checkpoints/step-NNNNNNNN/ (DESIGN §7).

A checkpoint directory holds
  model.safetensors       the model's tensors (tied weights stored once)
  optimizer.safetensors   the optimizer's per-parameter state, keys "<param index>.<name>"
  meta.json               step, resolved config, scheduler, loader position, RNG states of every rank,
                          optimizer hyper-parameters, and the size + SHA-256 of both tensor files.
It is written under a temporary name in the same folder and renamed into place once complete, so a
directory under its final name is always whole; `latest_good` still re-checks sizes and hashes and
skips any that disagree. Loading never unpickles: tensors come from safetensors, the rest is JSON.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from spanbert_data.files import sha256_file
from spanbert_train.errors import CheckpointError

CHECKPOINTS = "checkpoints"
META = "meta.json"
FORMAT_VERSION = 1


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's RNG states (torch CPU and CUDA, NumPy's global generator, Python's `random`) as JSON."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only when this machine has as many devices)."""
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in cuda]
        )


# --------------------------------------------------------------------------------------------- save
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, meta: dict, rng_states: list[dict], keep_last: int) -> Path:  # fmt: skip
    """Write checkpoint `step` atomically (call on rank 0 only; `rng_states` holds every rank's); prune old ones.

    `meta` carries the caller's JSON-able extras (config, loader position, metrics).
    """
    final = step_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        files = {}
        for name in ("model.safetensors", "optimizer.safetensors"):
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        record = {
            "format_version": FORMAT_VERSION,
            "step": step,
            **meta,
            "scheduler": scheduler.state_dict(),
            "optimizer_param_groups": groups,
            "rng": rng_states,
            "files": files,
        }
        (tmp / META).write_text(json.dumps(record, indent=1))
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. at the end right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep_last)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories under their final names, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith("step-") and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return [p for _, p in sorted(found)]


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftovers of interrupted saves."""
    for path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    root = Path(run_dir) / CHECKPOINTS
    for path in root.glob(".tmp-step-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid != str(os.getpid()):
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------- load
def read_meta(path: Path, verify_hashes: bool = True) -> dict:
    """meta.json of a checkpoint after checking its tensor files; raise CheckpointError naming what is wrong."""
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {META} is missing (incomplete checkpoint)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / META}: not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / META}: checkpoint format {meta.get('format_version')!r} is not supported")
    for name, info in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, expected {info['bytes']} (truncated)")
        if verify_hashes and sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file}: content hash differs from {META} (corrupt)")
    if set(meta.get("files", {})) != {"model.safetensors", "optimizer.safetensors"}:
        raise CheckpointError(f"{path / META}: does not list both tensor files")
    return meta


def latest_good(run_dir: str | Path, warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[Path, dict] | None:
    """The newest checkpoint that passes `read_meta`, with its meta; bad ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_meta(path)
        except CheckpointError as e:
            warn(f"skipping checkpoint: {e}")
    return None


def load_checkpoint(path: Path, meta: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler) -> None:  # fmt: skip
    """Restore model, optimizer and scheduler from a checkpoint that `read_meta` accepted."""
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the model does not match this checkpoint ({first})") from None
    except SafetensorError as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: not a readable safetensors file ({e})") from None
    try:
        tensors = load_file(str(path / "optimizer.safetensors"))
    except SafetensorError as e:
        raise CheckpointError(f"{path / 'optimizer.safetensors'}: not a readable safetensors file ({e})") from None
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()["param_groups"]
    groups = meta["optimizer_param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{path}: the optimizer's parameter groups do not match this model")
    for saved, now in zip(groups, current, strict=True):
        for flag in ("fused", "foreach", "capturable", "differentiable"):  # implementation choice of THIS machine
            if flag in now:
                saved[flag] = now[flag]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
