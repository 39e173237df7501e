"""`spanbert-data build`: the whole data pipeline, resumable and byte-identical for any --workers.

    corpus ─▶ units ─▶ [pass 1, store.py] token store + unigram counts
           ─▶ held-out documents ─▶ [pass 2, rows.py] masked, packed training rows ─▶ manifest.json (last)

Every step records its completion in a marker file written after its data, so a re-run redoes only
what is missing, and a finished build re-run is a no-op.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from spanbert_data import __version__
from spanbert_data.config import BuildConfig
from spanbert_data.corpus import CorpusStats, describe_skipped, list_corpus_files, require_documents
from spanbert_data.errors import BuildError
from spanbert_data.executor import Executor, make_executor, prepare_task_process, run_tasks, task_prefix
from spanbert_data.files import atomic_write_bytes, atomic_write_json, sha256_file
from spanbert_data.layout import BUILD_FILE, FORMAT_NAME, FORMAT_VERSION, MANIFEST, TOKENIZER_FILE
from spanbert_data.masking import replacement_cdf
from spanbert_data.output import BuildOutput, open_output, remove_stale_temps
from spanbert_data.progress import Progress, stderr
from spanbert_data.rng import splitmix64
from spanbert_data.rows import RowContext, TokenStore, build_shard, plan_shards
from spanbert_data.store import build_unit, unit_is_complete
from spanbert_data.tokenizer import SubwordTokenizer, load_tokenizer
from spanbert_data.unit_reader import iter_stream_units
from spanbert_data.units import COMPRESSION_RATIO, Source, Unit, plan_sources
from spanbert_data.vocab import train_vocabulary


def build_dataset(cfg: BuildConfig, log: Callable[[str], None] = stderr, storage_options: dict | None = None) -> dict:
    """Run (or resume) a build; return the manifest. Raises BuildError, CorpusError or ValueError on bad input.

    `cfg.out` may be an fsspec URL (s3://, gs://, ...): the build then runs in a local staging directory and is
    uploaded as it goes (spanbert_data/output.py); `storage_options` reach the fsspec filesystem."""
    cfg.validate()
    started = time.perf_counter()
    output = open_output(cfg, storage_options, log)
    try:
        root = Path(cfg.corpus)
        previous = output.claim()
        listing = CorpusStats()  # what the directory walk skipped (hidden files, loops, unreadable entries)
        files = list_corpus_files(root, listing, warn=lambda msg: log(f"warning: {msg}"))  # CorpusError if none
        sources = plan_sources(files, root, cfg.unit_bytes)
        plan = {"format": FORMAT_NAME, "options": cfg.options(), "sources": [s.to_json() for s in sources]}
        previous = output.reconcile(previous, plan)  # a bucket is the truth; the staging directory follows it
        if previous is not None and (previous.get("options"), previous.get("sources")) != (plan["options"],
                                                                                           plan["sources"]):
            raise BuildError(
                f"{output / BUILD_FILE}: this directory holds a build with other options or another corpus; "
                "use a new --out (or delete the directory to start over)"
            )
        manifest = output.finished() if previous is not None else None
        if manifest is not None:
            log(f"{output}: build already complete ({manifest['blocks']} blocks); nothing to do")
            output.finish()
            return manifest
        with make_executor(cfg.workers, cfg.scheduler, log) as executor:
            manifest = _build(cfg, output, root, files, sources, plan, previous, listing, executor, log)
        output.finish()
    finally:
        output.close()
    _summary(manifest, time.perf_counter() - started, log)
    return manifest


def _build(cfg: BuildConfig, output: BuildOutput, root: Path, files: list[Path], sources: list[Source], plan: dict,
           previous: dict | None, listing: CorpusStats, executor: Executor, log) -> dict:  # fmt: skip
    out = output.work
    tokenizer = _ensure_tokenizer(cfg, out, sources, root, executor, log)
    tokenizer.set_encoder(cfg.encoder)  # TokenizerError when --encoder fast cannot be exact
    if tokenizer.words.kind == "line" and cfg.masking.scheme != "subword":
        raise BuildError(f"{cfg.tokenizer}: {tokenizer.words.note.removeprefix('words: ')}, so it has no words for "
                         f"--scheme {cfg.masking.scheme}; give it a pre-tokenizer that splits words (Metaspace with "
                         "split true, ByteLevel) or build with --scheme subword")  # fmt: skip
    plan["tokenizer_sha256"] = tokenizer.sha256
    if previous is not None and previous.get("tokenizer_sha256") not in (None, tokenizer.sha256):
        raise BuildError(f"{out}: an earlier run used another tokenizer; use a new --out")
    # build.json claims the directory, so it lands before any other file: a run killed at any later
    # moment leaves a directory that the re-run recognises as its own (docs/RELIABILITY.md).
    atomic_write_json(out / BUILD_FILE, plan)
    tokenizer.save(out / TOKENIZER_FILE)
    output.put(BUILD_FILE)  # the same order in a bucket: build.json claims the prefix before anything else
    output.put(TOKENIZER_FILE)

    log(tokenizer.encoder_note)
    log(tokenizer.words.note)
    markers = _pass1(cfg, output, root, sources, executor, tokenizer.special_ids, log)
    corpus = listing
    for m in markers:
        corpus.merge(CorpusStats.from_dict(m["corpus"]))
    _count_split_files(sources, markers, corpus, log)
    require_documents(root, corpus)
    parts = [p for m in markers for p in m["parts"]]
    store = TokenStore(out, parts)
    is_valid = _held_out_blocks(store, markers, cfg)
    split_blocks = {
        "train": np.flatnonzero(~is_valid).astype(np.int64),
        "valid": np.flatnonzero(is_valid).astype(np.int64),
    }
    unigram = np.sum([np.asarray(m["unigram"], dtype=np.int64) for m in markers], axis=0)
    ctx = RowContext(
        out=out, parts=parts, split_blocks=split_blocks, word_start=tokenizer.word_start,
        cdf=replacement_cdf(unigram, tokenizer.is_special, cfg.masking.replacement),
        special_ids=tokenizer.special_ids, id_dtype=tokenizer.id_dtype, masking=cfg.masking,
        seed=cfg.seed, max_seq_len=cfg.max_seq_len,
    )  # fmt: skip
    shards = _pass2(cfg, ctx, output, executor, log)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"spanbert {__version__}",
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": sha256_file(out / TOKENIZER_FILE),
            "vocab_size": tokenizer.vocab_size,
            "special_ids": tokenizer.special_ids,
        },
        "options": cfg.options(),
        "max_seq_len": cfg.max_seq_len,
        "mask_epochs": cfg.mask_epochs,
        "id_dtype": np.dtype(tokenizer.id_dtype).name,
        "corpus": {"files": len(files), "units": len(markers), **corpus.to_dict()},
        "blocks": store.n_blocks,
        "tokens": int(unigram.sum()),
        "valid_blocks": int(is_valid.sum()),
        "unigram_counts": unigram.tolist(),
        "store": [{k: p[k] for k in ("path", "blocks", "tokens", "bytes", "sha256")} for p in parts],
        "shards": {
            split: [{k: v for k, v in s.items() if k != "split"} for s in shards if s["split"] == split]
            for split in ("train", "valid")
        },
    }
    # A worker killed between writing a temp file and renaming it (its task ran again elsewhere) leaves the temp
    # behind: a complete dataset holds only its own files.
    remove_stale_temps(out)
    atomic_write_json(out / MANIFEST, manifest)
    output.drain()
    output.put(MANIFEST)  # strictly last: its presence (in a bucket too) means "complete"
    return manifest


def _ensure_tokenizer(cfg: BuildConfig, out: Path, sources: list[Source], root: Path, executor: Executor,
                      log) -> SubwordTokenizer:  # fmt: skip
    """Load the given tokenizer, reuse the one an interrupted run saved, or train one (SPEC §1); writes nothing."""
    target = out / TOKENIZER_FILE
    if cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif target.is_file():
        return load_tokenizer(target)
    else:
        tokenizer, _ = train_vocabulary(root, sources, cfg.vocab_size, cfg.vocab_sample_bytes, executor, log,
                                        cfg.vocab_model)  # fmt: skip
    if target.is_file() and sha256_file(target) != tokenizer.sha256:
        raise BuildError(f"{target}: an earlier run used another tokenizer; use a new --out")
    return tokenizer  # the caller saves it, after build.json


# ----------------------------------------------------------------------------------------------- tasks
_WORKER_TOKENIZER: tuple[bytes, str, dict | None, SubwordTokenizer] | None = None  # file, encoder, roles, tokenizer


def _check_visible(out: Path) -> None:
    """Fail fast, naming the machine, when a worker does not see the output directory the driver made."""
    if not (out / BUILD_FILE).is_file():
        raise BuildError(
            f"worker on {socket.gethostname()} cannot see {out / BUILD_FILE}: the output directory must be on "
            "a filesystem every worker mounts at the same path (see README, Building on a cluster)"
        )


def _pass1_task(out: Path, root: Path, unit: Unit, max_content: int, encoder: str = "auto",
                roles: dict | None = None) -> dict:  # fmt: skip
    global _WORKER_TOKENIZER
    _check_visible(out)
    prepare_task_process()
    data = (out / TOKENIZER_FILE).read_bytes()
    # Reused across tasks of one process, but only for the same file, encoder and roles: an in-process build
    # (--workers 1) may follow another build with another tokenizer. The roles come from the driver, which may
    # have read them from a transformers folder's config beside the tokenizer.json.
    if _WORKER_TOKENIZER is None or _WORKER_TOKENIZER[:3] != (data, encoder, roles):
        _WORKER_TOKENIZER = (data, encoder, roles, load_tokenizer(out / TOKENIZER_FILE, encoder, roles))
    return build_unit(out, root, unit, _WORKER_TOKENIZER[3], max_content)


def _pass2_task(ctx: RowContext, plan) -> dict:
    _check_visible(ctx.out)
    prepare_task_process()
    return build_shard(ctx, plan)


def _pass1(cfg: BuildConfig, output: BuildOutput, root: Path, sources: list[Source], executor: Executor,
           roles: dict, log) -> list[dict]:  # fmt: skip
    """Run pass 1 over every unit not yet complete; return the markers of all units in unit order."""
    out = output.work
    base = root if root.is_dir() else root.parent
    markers: dict[str, dict] = {}
    order: list[str] = []
    estimate = sum(s.bytes * (COMPRESSION_RATIO if s.kind == "stream" else 1) for s in sources)
    progress = Progress("pass 1 (tokenize)", total=estimate, unit="B", log=log)
    prefix = task_prefix(out, "pass1")
    resumed = 0

    def tasks() -> Iterator[tuple[str, tuple]]:
        nonlocal resumed
        for source in sources:
            if source.kind == "stream":  # decompressed here, once, in order: a unit every --unit-mb of text
                units = iter_stream_units(source, base, cfg.unit_bytes)
            else:
                units = ((unit, None) for unit in source.units())
            for unit, piece in units:
                order.append(unit.key)
                # (a bucket decides for a URL --out: store parts it has are fetched for pass 2)
                marker = output.resume_unit(unit, lambda m, u=unit: unit_is_complete(out, u, m))
                if marker is not None:
                    markers[unit.key] = marker
                    resumed += 1
                    progress.update(unit.bytes)
                    continue
                if piece is not None:
                    atomic_write_bytes(out / unit.work_file, piece.data)
                yield f"{prefix}-{unit.key}", (out, root, unit, cfg.max_content, cfg.encoder, roles)

    def done(key, args, marker) -> None:
        unit = args[2]
        markers[unit.key] = marker
        output.publish([p["path"] for p in marker["parts"]], unit.marker)
        for w in marker["warnings"]:
            log(f"warning: {w}")
        if unit.kind == "stream":
            (out / unit.work_file).unlink(missing_ok=True)
        progress.update(unit.bytes, tokens=marker["tokens"])

    run_tasks(executor, _pass1_task, tasks(), done)
    progress.close()
    if resumed:
        log(f"pass 1: {resumed} of {len(order)} units were already done")
    shutil.rmtree(out / "work", ignore_errors=True)
    return [markers[key] for key in order]


def _count_split_files(sources: list[Source], markers: list[dict], corpus: CorpusStats, log) -> None:
    """A file read in several units counts once: as read if any unit found a document, else as `no_text`."""
    by_source: dict[int, list[dict]] = {}
    for m in markers:
        by_source.setdefault(m["source"], []).append(m)
    for source in sources:
        if source.kind == "files":
            continue
        mine = by_source.get(source.index, [])
        if any(m["documents"] for m in mine):
            corpus.files += 1
        elif not any(m["corpus"]["skipped"].get(r) for m in mine for r in ("truncated", "corrupt")):
            log(f"warning: {source.files[0]}: no text found; skipped")
            corpus.skip("no_text")


def _pass2(cfg: BuildConfig, ctx: RowContext, output: BuildOutput, executor: Executor, log) -> list[dict]:
    plans = plan_shards(len(ctx.split_blocks["train"]), len(ctx.split_blocks["valid"]), cfg.mask_epochs,
                        cfg.rows_per_shard)  # fmt: skip
    results: dict[str, dict] = {}
    todo = []
    for plan in plans:
        marker = output.resume_shard(plan)  # (for a URL --out: in the bucket, or finished here and now uploaded)
        if marker is not None:
            results[plan.path] = marker
        else:
            todo.append(plan)
    progress = Progress("pass 2 (mask+pack)", total=sum(p.hi - p.lo for p in todo), unit="blocks", log=log)
    shared = executor.share(ctx) if todo else ctx
    prefix = task_prefix(ctx.out, "pass2")

    def done(key, args, marker):
        results[args[1].path] = marker
        # (for a URL --out: uploaded, then deleted here: the staging directory keeps only the token store)
        output.publish([args[1].path], args[1].marker, drop=True)
        progress.update(args[1].hi - args[1].lo, tokens=marker["tokens"])

    run_tasks(executor, _pass2_task, ((f"{prefix}-{p.path}", (shared, p)) for p in todo), done)
    progress.close()
    return [results[p.path] for p in plans]


# ----------------------------------------------------------------------------------------------- held-out
def _held_out_blocks(store: TokenStore, markers: list[dict], cfg: BuildConfig) -> np.ndarray:
    """Boolean per global block: True for blocks of held-out documents, chosen by a hash of (seed, unit, doc)."""
    per_part = [(m["source"], m["sub"]) for m in markers for _ in m["parts"]]
    salt = splitmix64(np.uint64(cfg.seed) ^ np.uint64(0x5EED))
    hashes = []
    for docs, (source, sub) in zip(store.docs, per_part, strict=True):
        unit = splitmix64(splitmix64(salt ^ np.uint64(source)) ^ np.uint64(sub))
        hashes.append(splitmix64(unit ^ docs.astype(np.uint64)))
    h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    valid = u < cfg.valid_fraction
    n_docs = sum(m["documents"] for m in markers)
    if cfg.valid_fraction > 0 and not valid.any() and n_docs >= 2 and len(u):
        valid = u == u.min()  # a small corpus still gets one held-out document
    return valid


# ----------------------------------------------------------------------------------------------- reporting
def _summary(manifest: dict, seconds: float, log) -> None:
    c = manifest["corpus"]
    train = [s for s in manifest["shards"]["train"] if s["epoch"] == 0]
    rows = sum(s["rows"] for s in train)
    slots = rows * manifest["max_seq_len"]
    tokens = sum(s["tokens"] for s in train)
    log(
        f"built in {seconds:.1f}s: {c['files']} files, {c['documents']} documents, {c['lines']} lines, "
        f"{c['bytes'] / 1e6:.1f} MB ({c['bytes'] / 1e6 / max(seconds, 1e-9):.2f} MB/s); "
        f"{describe_skipped(CorpusStats.from_dict(c))}; "
        f"replaced characters: {c['replaced_chars']}"
    )
    log(
        f"{manifest['blocks']} blocks ({manifest['valid_blocks']} held out), {manifest['tokens']} content tokens; "
        f"{manifest['mask_epochs']} mask epoch(s) x {rows} rows of {manifest['max_seq_len']} slots, "
        f"padding {100 * (1 - tokens / max(slots, 1)):.2f}%"
    )
