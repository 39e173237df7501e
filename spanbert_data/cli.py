"""`spanbert-data`: build, vocab, verify, inspect. Argument parsing only; the work is in library modules, and every
option of a config field takes its default and help from that field (spanbert_data/config.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import click

from spanbert_data.build import build_dataset
from spanbert_data.config import (
    ENCODERS,
    REPLACEMENTS,
    SCHEMES,
    VOCAB_MODELS,
    BuildConfig,
    MaskingConfig,
    MiB,
    field_docs,
)
from spanbert_data.errors import BuildError, CorpusError, DatasetError, TokenizerError
from spanbert_data.inspect import dataset_stats, show_examples
from spanbert_data.location import Location, is_url
from spanbert_data.remote import parse_storage_options
from spanbert_data.shards import load_manifest, manifest_files, verify_dataset
from spanbert_data.vocab import corpus_vocabulary

USER_ERRORS = (CorpusError, DatasetError, TokenizerError, BuildError)


def user_errors(fn):
    """Turn the library's user-facing errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _storage_options(ctx, param, value):
    try:
        return parse_storage_options(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


STORAGE_OPTIONS = click.option(
    "--storage-options", metavar="JSON", callback=_storage_options,
    help="With a URL: options for its fsspec filesystem, e.g. '{\"endpoint_url\": \"http://minio:9000\"}' "
         "(credentials otherwise come from the usual AWS/GCP variables and files).",
)  # fmt: skip
CORPUS_STORAGE_OPTIONS = click.option(
    "--corpus-storage-options", metavar="JSON", callback=_storage_options, default=None,
    help="Options for the filesystem of a corpus URL when they differ from --storage-options (which apply to every "
         "URL otherwise), e.g. '{\"token\": \"hf_...\"}' for hf://.",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="spanbert")
def main():
    """Turn a text corpus into SpanBERT training shards (span-masked, packed, Arrow)."""


# BuildConfig's fields by name, MaskingConfig's as "masking.NAME": (default, doc)
FIELDS = {
    prefix + f.name: (f.default, docs[f.name])
    for cls, prefix in ((BuildConfig, ""), (MaskingConfig, "masking."))
    for docs in [field_docs(cls)]
    for f in dataclasses.fields(cls)
}


def config_option(*decls, field: str, scale: int = 1, **kwargs):
    """An option whose default and help are those of its config field (`scale`: the field's units per option unit,
    e.g. MiB for an option in MB of a field in bytes)."""
    default, doc = FIELDS[field]
    if kwargs.get("required") or default is None:
        return click.option(*decls, help=doc, **kwargs)
    return click.option(*decls, default=default / scale if scale != 1 else default, show_default=True, help=doc,
                        **kwargs)  # fmt: skip


CORPUS = config_option("--corpus", field="corpus", metavar="PATH|GLOB|URL", multiple=True, required=True)
TEXT_FIELD = config_option("--text-field", field="text_field")
SPLIT = config_option("--split", field="split")
VOCAB_SIZE = config_option("--vocab-size", field="vocab_size")
VOCAB_SAMPLE_MB = config_option("--vocab-sample-mb", field="vocab_sample_bytes", scale=MiB)
UNIT_MB = config_option("--unit-mb", field="unit_bytes", scale=MiB)
WORKERS = config_option("--workers", field="workers", type=int)
SCHEDULER = config_option("--scheduler", field="scheduler", metavar="ADDRESS")


@main.command()
@CORPUS
@TEXT_FIELD
@SPLIT
@config_option("--out", field="out", required=True)
@config_option("--tokenizer", field="tokenizer", type=click.Path(path_type=Path))
@VOCAB_SIZE
@config_option("--vocab-model", field="vocab_model", type=click.Choice(VOCAB_MODELS))
@VOCAB_SAMPLE_MB
@WORKERS
@SCHEDULER
@config_option("--encoder", field="encoder", type=click.Choice(ENCODERS))
@config_option("--max-seq-len", field="max_seq_len")
@config_option("--seed", field="seed")
@config_option("--mask-epochs", field="mask_epochs")
@config_option("--valid-fraction", field="valid_fraction")
@config_option("--rows-per-shard", field="rows_per_shard")
@UNIT_MB
@config_option("--scheme", field="masking.scheme", type=click.Choice(SCHEMES))
@config_option("--mask-ratio", field="masking.mask_ratio")
@config_option("--geometric-p", field="masking.geometric_p")
@config_option("--max-span-words", field="masking.max_span_words")
@config_option("--replacement", field="masking.replacement", type=click.Choice(REPLACEMENTS))
@config_option("--work-dir", field="work_dir", type=click.Path(path_type=Path))
@STORAGE_OPTIONS
@CORPUS_STORAGE_OPTIONS
@user_errors
def build(corpus, text_field, split, out, tokenizer, vocab_size, vocab_model, vocab_sample_mb, workers, scheduler,
          encoder, max_seq_len, seed, mask_epochs, valid_fraction, rows_per_shard, unit_mb, scheme, mask_ratio,
          geometric_p, max_span_words, replacement, work_dir, storage_options, corpus_storage_options):  # fmt: skip
    """Build (or resume) a dataset: tokenize, block, mask, pack, write shards + manifest.

    --corpus may be repeated (read in the order given) and may be a glob pattern or a URL (README, "Corpora")."""
    out = out if is_url(out) else Path(out)
    try:  # MaskingConfig checks its fields as it is made
        masking = MaskingConfig(scheme=scheme, mask_ratio=mask_ratio, geometric_p=geometric_p,
                                max_span_words=max_span_words, replacement=replacement)  # fmt: skip
        cfg = BuildConfig(corpus=corpus, text_field=text_field, split=split, out=out, tokenizer=tokenizer,
                          vocab_size=vocab_size, vocab_model=vocab_model, work_dir=work_dir,
                          vocab_sample_bytes=int(vocab_sample_mb * MiB), workers=workers, scheduler=scheduler,
                          encoder=encoder, max_seq_len=max_seq_len, seed=seed, mask_epochs=mask_epochs,
                          valid_fraction=valid_fraction, rows_per_shard=rows_per_shard,
                          unit_bytes=int(unit_mb * MiB), masking=masking)  # fmt: skip
        cfg.validate()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    build_dataset(cfg, storage_options=storage_options, corpus_storage_options=corpus_storage_options)
    click.echo(f"dataset ready: {out}")


@main.command()
@CORPUS
@TEXT_FIELD
@SPLIT
@VOCAB_SIZE
@config_option("--model", "vocab_model", field="vocab_model", type=click.Choice(VOCAB_MODELS))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="tokenizer.json to write.")
@VOCAB_SAMPLE_MB
@UNIT_MB
@WORKERS
@SCHEDULER
@STORAGE_OPTIONS
@user_errors
def vocab(corpus, text_field, split, vocab_size, vocab_model, out, vocab_sample_mb, unit_mb, workers, scheduler,
          storage_options):  # fmt: skip
    """Train a cased BERT WordPiece (or --model bpe: a byte-level BPE) vocabulary on a corpus (SPEC §1): the same
    file `build` would train."""
    least = 262 if vocab_model == "bpe" else 100
    if vocab_size < least or vocab_sample_mb < 0 or unit_mb <= 0 or (workers is not None and workers < 1):
        raise click.UsageError(f"need --vocab-size >= {least}, --vocab-sample-mb >= 0, --unit-mb > 0 and "
                               "--workers >= 1")
    tok, info = corpus_vocabulary(corpus, vocab_size, int(vocab_sample_mb * MiB), int(unit_mb * MiB), workers,
                                  scheduler, log=lambda m: click.echo(m, err=True), model=vocab_model,
                                  storage_options=storage_options, split=split, text_field=text_field)  # fmt: skip
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if info["documents"] == 0:
        raise CorpusError(f"no readable text under {', '.join(corpus)}; nothing to train on")
    tok.save(out)
    click.echo(f"wrote {out}: {tok.vocab_size} entries from {info['documents']} documents, {info['lines']} lines")


@main.command()
@click.argument("dataset")
@STORAGE_OPTIONS
@user_errors
def verify(dataset, storage_options):
    """Re-hash every file of a dataset (a directory or a URL) against its manifest; exit 1 naming each bad one.

    Objects in a bucket are streamed through the hash, nothing is written to disk."""
    dataset = Location.of(dataset, storage_options)
    problems = verify_dataset(dataset)
    for p in problems:
        click.echo(f"bad: {p}", err=True)
    if problems:
        click.echo(f"{len(problems)} bad file(s) in {dataset}; rebuild with the same --out to repair", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(manifest_files(load_manifest(dataset))) + 1} files match the manifest")


@main.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable statistics.")
@click.option("--examples", default=3, show_default=True, help="Decoded examples to show (text mode).")
@click.option("--split", type=click.Choice(["train", "valid"]), default="train", show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="With a URL: where the shards read are cached (default: $SPANBERT_CACHE or ~/.cache/spanbert).")
@STORAGE_OPTIONS
@user_errors
def inspect(dataset, as_json, examples, split, cache_dir, storage_options):
    """Counts, length and span histograms, and decoded examples with the masked spans marked (a directory or a URL)."""
    dataset = Location.of(dataset, storage_options)
    if cache_dir is not None:
        os.environ["SPANBERT_CACHE"] = str(cache_dir)
    stats = dataset_stats(dataset, split=split)
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    c = stats["corpus"]
    click.echo(f"{dataset}: {c['documents']} documents, {stats['blocks']} blocks, {stats['mask_epochs']} mask epoch(s)")
    click.echo(f"{split}: {stats['shards']} shards, {stats['rows']} rows, {stats['examples']} examples, "
               f"{stats['tokens']} tokens, padding {100 * stats['padding_fraction']:.2f}% "
               f"(best possible for these examples: {100 * stats['padding_lower_bound']:.2f}%)")  # fmt: skip
    click.echo(f"masked {100 * stats['masked_fraction']:.2f}% of content tokens, mean merged span "
               f"{stats['mean_span_tokens']:.2f} tokens, SBO/MLM targets {stats['sbo_targets_per_mlm_target']:.3f}, "
               + ", ".join(f"{k} {100 * v:.1f}%" for k, v in stats["replacement_split"].items()))  # fmt: skip
    click.echo("example lengths: " + ", ".join(f"{k}: {v}" for k, v in stats["example_length_hist"].items()))
    click.echo("span lengths (words): " + ", ".join(f"{k}: {v}" for k, v in stats["span_length_hist"]["words"].items()))
    if examples:
        click.echo(show_examples(dataset, examples))


if __name__ == "__main__":
    main()
