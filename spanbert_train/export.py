"""Hugging Face interop both ways: export a run to a `transformers` BERT directory, and start from one.

Export (`spanbert-train export RUN_OR_CHECKPOINT --out DIR`) writes

  config.json              BERT config, model_type "bert", architectures ["BertForMaskedLM"]
  model.safetensors        encoder + MLM head under HF names (SPEC §5), tied decoder stored once, as HF does
  tokenizer.json, tokenizer_config.json, special_tokens_map.json (and vocab.txt for WordPiece)
  sbo_head.safetensors     the SBO head (`cls.sbo.*`), read back by `load_sbo_head`
  spanbert_export.json     provenance; also marks DIR as an export that a later export may replace

Our parameter names are already HF's, so export is a save without renaming. The directory is built
under a temporary name beside DIR and renamed into place, so DIR is always complete or absent.

Import (`--init-from HF_DIR`): `model_config_from_hf` turns a BERT `config.json` into a `ModelConfig`
and `load_hf_weights` loads encoder and MLM head from BertForPreTraining, BertForMaskedLM or BertModel
layouts (safetensors or pytorch_model.bin); the SBO head comes from `sbo_head.safetensors` when the
directory is one of our exports, else it keeps its fresh initialisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import click
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file
from torch import nn

from spanbert_data import __version__
from spanbert_data.errors import DatasetError, TokenizerError
from spanbert_data.layout import MANIFEST
from spanbert_data.location import Location
from spanbert_data.shards import load_manifest
from spanbert_data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from spanbert_train.checkpoint import latest_good, read_meta
from spanbert_train.config import dataset_paths
from spanbert_train.errors import CheckpointError, ExportError
from spanbert_train.heads import SpanBoundaryHead
from spanbert_train.model import REFERENCE_OPS, ModelConfig, SpanBertForPreTraining

WEIGHTS = "model.safetensors"
SBO_WEIGHTS = "sbo_head.safetensors"
MARKER = "spanbert_export.json"
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")  # aliases of E and the MLM bias
SBO_PREFIX = "cls.sbo."
# HF keys that hold nothing our model has: NSP head, pooler, the position-id buffer of older checkpoints.
IGNORED_PREFIXES = ("cls.seq_relationship.", "bert.pooler.", "bert.embeddings.position_ids")
# config.json extras that carry the SBO head's shape (HF ignores unknown keys).
SBO_CONFIG_KEYS = {"spanbert_sbo_position_size": "sbo_position_size", "spanbert_sbo_num_offsets": "sbo_num_offsets"}


# ------------------------------------------------------------------------------------------------- export


def hf_state_dict(model: SpanBertForPreTraining) -> dict[str, torch.Tensor]:
    """The `BertForMaskedLM` state dict of `model`: no SBO head, tied decoder left out (HF ties it on load)."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(SBO_PREFIX) and k not in TIED_KEYS
    }


def write_hf_tokenizer(tokenizer_file: str | Path, out: Path, model_max_length: int,
                       roles: dict | None = None) -> None:  # fmt: skip
    """tokenizer.json (truncation/padding off), tokenizer_config.json and special_tokens_map.json; `roles`: the
    dataset manifest's special_ids (default: read off the tokenizer).

    WordPiece: BERT's files (`BertTokenizer`, vocab.txt in id order); `do_lower_case`, `strip_accents` and
    `tokenize_chinese_chars` are read off the BERT normaliser, so a cased vocabulary exports with
    `do_lower_case: false` (transformers' BertTokenizer would otherwise lower-case). Any other family:
    `PreTrainedTokenizerFast` over tokenizer.json, its role tokens made special added tokens (`_role_tokens`).
    """
    wp = load_tokenizer(tokenizer_file, roles=roles)
    if wp.words.kind != "wordpiece":
        _write_fast_tokenizer(wp, out, model_max_length)
        return
    spec = json.loads(wp.to_json())
    norm = spec.get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    bert_norm = next((p for p in parts if p.get("type") == "BertNormalizer"), {})
    lower = bool(bert_norm.get("lowercase")) or any(p.get("type") == "Lowercase" for p in parts)
    (out / "tokenizer.json").write_text(wp.to_json(), encoding="utf-8")
    (out / "vocab.txt").write_text("".join(wp.id_to_token(i) + "\n" for i in range(wp.vocab_size)), encoding="utf-8")
    specials = {f"{name}_token": tok for name, tok in SPECIAL_TOKENS.items()}
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lower,
        "strip_accents": bert_norm.get("strip_accents"),
        "tokenize_chinese_chars": bool(bert_norm.get("handle_chinese_chars", True)),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def _write_fast_tokenizer(tok, out: Path, model_max_length: int) -> None:
    names = {role: tok.id_to_token(i) for role, i in tok.special_ids.items() if i is not None}
    specials = {f"{role}_token": name for role, name in names.items()}
    specials.update(bos_token=names["cls"], eos_token=names["sep"])  # RoBERTa's <s> and </s> play both parts
    (out / "tokenizer.json").write_text(_role_tokens(tok.to_json(), tok.special_ids, names), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **specials}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def _role_tokens(text: str, ids: dict, names: dict) -> str:
    """tokenizer.json text whose role tokens are all special added tokens (a converted SentencePiece model keeps
    `<mask>` and `<pad>` as plain pieces), MASK with lstrip: in "is <mask>." the space goes with the mask, as the
    space of a masked word went with its masked tokens in training."""
    spec = json.loads(text)
    added = {t["content"]: t for t in spec.get("added_tokens") or []}
    for role, name in names.items():
        entry = added.get(name) or {"id": ids[role], "content": name, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False}  # fmt: skip
        entry["special"] = True
        entry["lstrip"] = entry["lstrip"] or role == "mask"
        added[name] = entry
    spec["added_tokens"] = sorted(added.values(), key=lambda t: t["id"])
    return json.dumps(spec, ensure_ascii=False)


def _is_previous_export(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def export_model(model: SpanBertForPreTraining, tokenizer_file: str | Path, out: str | Path,
                 provenance: dict | None = None, roles: dict | None = None) -> Path:  # fmt: skip
    """Write `model` and its tokenizer as a Hugging Face BERT directory at `out` (atomically); return `out`.
    `roles`: the dataset's special_ids (its PAD becomes config.json's pad_token_id).

    Refuses an existing non-empty `out` unless it is a previous export (then it is replaced).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_previous_export(out):
        raise ExportError(f"--out {out}: directory is not empty and is not a previous export; choose a new path")
    cfg = model.config
    if model.bert.embeddings.word_embeddings.num_embeddings != cfg.vocab_size:
        raise ExportError("model.vocab_size does not match the word embeddings")  # pragma: no cover - invariant
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        hf = cfg.to_hf_config()
        if roles is not None:
            hf["pad_token_id"] = roles["pad"]
        hf.update({key: getattr(cfg, name) for key, name in SBO_CONFIG_KEYS.items()})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2), encoding="utf-8")
        save_file(hf_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        sbo = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
               if k.startswith(SBO_PREFIX)}  # fmt: skip
        save_file(sbo, str(tmp / SBO_WEIGHTS), metadata={"format": "pt"})
        write_hf_tokenizer(tokenizer_file, tmp, cfg.max_position_embeddings, roles)
        record = {"format": "spanbert-hf-export", "created_by": f"spanbert {__version__}", **(provenance or {})}
        (tmp / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        # Swap in: move an old export aside first so `out` never holds a mix of two exports.
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.is_dir():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """A checkpoint directory (holds meta.json) or a run directory (its latest good checkpoint), with its meta."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path, read_meta(path)
    found = latest_good(path) if path.is_dir() else None
    if found is None:
        raise ExportError(f"{path}: neither a checkpoint (no meta.json) nor a run directory with a usable checkpoint")
    return found


def checkpoint_model_config(meta: dict, vocab_size: int) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with, from its meta.json."""
    known = {f.name for f in fields(ModelConfig)}
    if isinstance(meta.get("model_config"), dict):
        return ModelConfig(**{k: v for k, v in meta["model_config"].items() if k in known}).validate()
    spec = (meta.get("config") or {}).get("model") or {}
    if "preset" not in spec:
        raise ExportError("checkpoint meta.json holds neither model_config nor config.model.preset")
    return ModelConfig.from_preset(spec["preset"], **spec.get("overrides", {})).with_vocab(vocab_size)


def export_checkpoint(source: str | Path, out: str | Path, data: str | Path | None = None) -> Path:
    """Export the checkpoint (or a run's latest good one) at `source` to a HF directory at `out`.

    The tokenizer comes from the training dataset named in the checkpoint's config (the first, in a blend: they
    share it; `data` overrides it when the dataset has moved).
    """
    ckpt, meta = resolve_checkpoint(source)
    where = str(data) if data else next(iter(dataset_paths(meta.get("config"))), "")
    dataset = Location.of(where)  # a directory, or a URL: its manifest and tokenizer are read from there
    if dataset.local is not None and not (dataset.local / MANIFEST).is_file():
        raise ExportError(f"{dataset}: the training dataset (for its tokenizer) is not there; pass --data DATASET_DIR")
    manifest = load_manifest(dataset)
    name = manifest["tokenizer"].get("file", "tokenizer.json")
    data = dataset.read_bytes(name)
    if data is None or hashlib.sha256(data).hexdigest() != manifest["tokenizer"].get("sha256"):
        raise ExportError(  # a swapped tokenizer.json would ship token ids that mean other words
            f"{dataset / name}: missing or not the tokenizer its manifest names; run `spanbert-data verify {dataset}`"
        )
    provenance = str(dataset.local.resolve()) if dataset.local is not None else where
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_bytes(data)
        return _export(ckpt, meta, manifest, Path(tmp) / "tokenizer.json", provenance, out)


def _export(ckpt: Path, meta: dict, manifest: dict, tokenizer_file: Path, dataset: str, out) -> Path:
    trained_with = meta.get("tokenizer_sha256")
    if trained_with and trained_with != manifest["tokenizer"].get("sha256"):
        raise ExportError(f"{dataset}: its tokenizer is not the one the run was trained with; pass the run's --data")
    cfg = checkpoint_model_config(meta, int(manifest["tokenizer"]["vocab_size"]))
    model = SpanBertForPreTraining(cfg, kernels="reference", attention="sdpa")
    try:
        load_model(model, str(ckpt / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError) as e:
        raise ExportError(f"{ckpt / WEIGHTS}: cannot be loaded into the checkpoint's model ({e})") from None
    provenance = {"source": str(ckpt.resolve()), "step": meta.get("step"), "dataset": dataset}
    return export_model(model, tokenizer_file, out, provenance, manifest["tokenizer"].get("special_ids"))


# ------------------------------------------------------------------------------------------------- SBO head


class SboPredictor(nn.Module):
    """The exported SBO head with its decoder: logits of span tokens from their boundary states (SPEC §3).

    `forward(hidden, left, right, offsets)`: `hidden` (N, H) final-layer states (e.g. a flattened
    `BertModel(...).last_hidden_state`), `left`/`right` (S,) indices into `hidden` of the tokens just
    outside each span, `offsets` (S,) position of the predicted token inside its span (0..14).
    Returns (S, V) logits over the vocabulary.
    """

    def __init__(self, head: SpanBoundaryHead, word_embeddings: nn.Parameter) -> None:
        super().__init__()
        self.head = head
        self.word_embeddings = word_embeddings

    def forward(self, hidden, left, right, offsets) -> torch.Tensor:
        return self.head.logits(hidden, left, right, offsets, self.word_embeddings)


def load_sbo_head(hf_dir: str | Path, word_embeddings: torch.Tensor | None = None) -> SboPredictor:
    """Load `sbo_head.safetensors` of an exported directory as a module (see `SboPredictor`).

    The head decodes with the tied input word embeddings: pass the embedding weight of a model you
    already loaded (e.g. `BertForMaskedLM.bert.embeddings.word_embeddings.weight`) to share it, or leave
    it out to read it from the directory's `model.safetensors`.
    """
    hf_dir = Path(hf_dir)
    if not (hf_dir / SBO_WEIGHTS).is_file():
        raise ExportError(f"{hf_dir}: no {SBO_WEIGHTS}; only directories written by `spanbert-train export` have one")
    tensors = {k.removeprefix(SBO_PREFIX): v for k, v in load_file(str(hf_dir / SBO_WEIGHTS)).items()}
    hf = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    num_offsets, position_size = tensors["position_embeddings.weight"].shape
    head = SpanBoundaryHead(hf["hidden_size"], position_size, num_offsets, tensors["bias"].shape[0],
                            hf.get("layer_norm_eps", 1e-12), REFERENCE_OPS)
    head.load_state_dict(tensors, strict=True)
    if word_embeddings is None:
        word_embeddings = load_file(str(hf_dir / WEIGHTS))["bert.embeddings.word_embeddings.weight"]
    weight = word_embeddings if isinstance(word_embeddings, nn.Parameter) else nn.Parameter(word_embeddings)
    return SboPredictor(head, weight).eval()


# ------------------------------------------------------------------------------------------------- import


def _read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; --init-from needs a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None


def model_config_from_hf(hf_dir: str | Path, **overrides) -> ModelConfig:
    """The ModelConfig of a Hugging Face BERT `config.json`; `overrides` replace fields (e.g. dropout)."""
    hf = _read_hf_config(Path(hf_dir))
    where = Path(hf_dir) / "config.json"
    if hf.get("model_type", "bert") != "bert":
        raise ExportError(f"{where}: model_type {hf.get('model_type')!r} is not 'bert'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ExportError(f"{where}: hidden_act {hf.get('hidden_act')!r}; this model implements exact (erf) 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ExportError(f"{where}: position_embedding_type must be 'absolute'")
    names = {"vocab_size": "vocab_size", "num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
             "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
             "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
             "hidden_dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob",
             "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range",
             "pad_token_id": "pad_token_id"}  # fmt: skip
    values = {ours: hf[theirs] for ours, theirs in names.items() if hf.get(theirs) is not None}
    values.update({ours: hf[key] for key, ours in SBO_CONFIG_KEYS.items() if key in hf})
    try:
        return ModelConfig(**{**values, **overrides}).validate()
    except TypeError as e:
        raise ExportError(f"model override: {e}") from None


def read_hf_state_dict(hf_dir: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of `model.safetensors` or `pytorch_model.bin` (never unpickling code), and the file name used."""
    hf_dir = Path(hf_dir)
    if (hf_dir / WEIGHTS).is_file():
        try:
            return load_file(str(hf_dir / WEIGHTS)), WEIGHTS
        except SafetensorError as e:
            raise ExportError(f"{hf_dir / WEIGHTS}: not a readable safetensors file ({e})") from None
    if (hf_dir / "pytorch_model.bin").is_file():
        try:  # weights_only: the restricted unpickler refuses anything but tensors and plain containers
            return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True), "pytorch_model.bin"
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(
                f"{hf_dir / 'pytorch_model.bin'}: refused — not plain tensors ({reason[:200]}); "
                "convert it to model.safetensors with a tool you trust"
            ) from None
    raise ExportError(f"{hf_dir}: holds neither {WEIGHTS} nor pytorch_model.bin (sharded checkpoints: merge first)")


def _hf_key(key: str) -> str:
    """Our name of an HF key: `bert.` added for BertModel layouts, TF-era LayerNorm gamma/beta renamed."""
    if not key.startswith(("bert.", "cls.")):
        key = "bert." + key
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return key


@dataclass
class HFLoadReport:
    """What `load_hf_weights` did (printed in the trainer's start-up log)."""

    source: str
    loaded: int  # tensors copied into the model
    mlm_head: str  # "loaded" or "initialised"
    sbo_head: str  # "loaded" or "initialised"
    ignored: list[str] = field(default_factory=list)  # checkpoint keys with no counterpart here

    def __str__(self) -> str:
        ignored = f", ignored {len(self.ignored)} key(s) ({', '.join(self.ignored[:4])}…)" if self.ignored else ""
        return (f"init-from {self.source}: {self.loaded} tensors; MLM head {self.mlm_head}, "
                f"SBO head {self.sbo_head}{ignored}")


def load_hf_weights(model: SpanBertForPreTraining, hf_dir: str | Path,
                    expected_vocab_size: int | None = None) -> HFLoadReport:  # fmt: skip
    """Copy a Hugging Face BERT checkpoint's encoder and MLM head into `model` (in place).

    Handles BertForPreTraining, BertForMaskedLM and BertModel layouts; the pooler and NSP head are ignored.
    The MLM head keeps its fresh initialisation when the checkpoint has none (BertModel); the SBO head is
    loaded from `sbo_head.safetensors` when present, else kept as initialised. `expected_vocab_size` (the
    dataset manifest's) must equal the checkpoint's, since the token ids must mean the same thing.
    """
    hf_dir = Path(hf_dir)
    hf_vocab = _read_hf_config(hf_dir).get("vocab_size")
    if expected_vocab_size is not None and hf_vocab != expected_vocab_size:
        raise ExportError(
            f"{hf_dir / 'config.json'}: vocab_size {hf_vocab} but the dataset's manifest says {expected_vocab_size}; "
            "build the dataset with this model's tokenizer "
            f"(spanbert-data build --tokenizer {hf_dir / 'tokenizer.json'})"
        )
    raw, weights_file = read_hf_state_dict(hf_dir)
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith(SBO_PREFIX) and k not in TIED_KEYS}
    tensors, ignored = {}, []
    for key, value in raw.items():
        ours = _hf_key(key)
        if ours == "cls.predictions.decoder.bias" and "cls.predictions.bias" not in raw:
            ours = "cls.predictions.bias"  # some exporters keep only the decoder's alias of the bias
        if ours in wanted:
            tensors[ours] = value
        elif ours.startswith(IGNORED_PREFIXES) or ours in TIED_KEYS or not ours.startswith("bert."):
            ignored.append(key)  # pooler, NSP, tied aliases, task heads (e.g. qa_outputs, classifier)
        else:
            raise ExportError(f"{hf_dir / weights_file}: encoder key {key!r} has no counterpart in this model")
    missing = sorted(k for k in wanted - tensors.keys() if not k.startswith("cls.predictions."))
    if missing:
        raise ExportError(f"{hf_dir / weights_file}: missing encoder tensors {missing[:4]} ({len(missing)} in all)")
    mlm = sorted(k for k in wanted if k.startswith("cls.predictions."))
    mlm_found = [k for k in mlm if k in tensors]
    if mlm_found and len(mlm_found) != len(mlm):
        raise ExportError(f"{hf_dir / weights_file}: incomplete MLM head, missing {sorted(set(mlm) - set(mlm_found))}")
    sbo_file = hf_dir / SBO_WEIGHTS
    if sbo_file.is_file():
        tensors.update(load_file(str(sbo_file)))
    for key, value in tensors.items():
        if key not in own or own[key].shape != value.shape:
            shape = tuple(own[key].shape) if key in own else None
            raise ExportError(f"{hf_dir}: tensor {key!r} has shape {tuple(value.shape)}, this model expects {shape}")
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value)  # in place: keeps the tied decoder pointing at the embeddings
    return HFLoadReport(str(hf_dir), len(tensors), "loaded" if mlm_found else "initialised",
                        "loaded" if sbo_file.is_file() else "initialised", sorted(ignored))


# ------------------------------------------------------------------------------------------------- CLI


@click.command("export")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="The Hugging Face directory to write.")
@click.option("--data", default=None, metavar="DIR|URL",
              help="The training dataset (for its tokenizer) when it is no longer where the run's config says.")
def export_command(source: str, out: str, data: str | None) -> None:
    """Export SOURCE (a run directory's latest good checkpoint, or one checkpoint) as a Hugging Face BERT."""
    try:
        path = export_checkpoint(source, out, data)
    except (ExportError, CheckpointError, DatasetError, TokenizerError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"exported {source} -> {path} (BertForMaskedLM + tokenizer; SBO head in {SBO_WEIGHTS})")
