"""`spanbert-data`: build, vocab, verify, inspect. Argument parsing only; the work is in library modules."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from spanbert_data.corpus import CorpusError
from spanbert_data.shards import DatasetError
from spanbert_data.tokenizer import TokenizerError

USER_ERRORS = (CorpusError, DatasetError, TokenizerError)


def user_errors(fn):
    """Turn the library's user-facing errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from spanbert_data.build import BuildError

        try:
            return fn(*args, **kwargs)
        except (*USER_ERRORS, BuildError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _storage_options(ctx, param, value):
    from spanbert_data.remote import parse_storage_options

    try:
        return parse_storage_options(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


STORAGE_OPTIONS = click.option(
    "--storage-options", metavar="JSON", callback=_storage_options,
    help="With a URL: options for its fsspec filesystem, e.g. '{\"endpoint_url\": \"http://minio:9000\"}' "
         "(credentials otherwise come from the usual AWS/GCP variables and files).",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="spanbert")
def main():
    """Turn a text corpus into SpanBERT training shards (span-masked, packed, Arrow)."""


@main.command()
@click.option("--corpus", type=click.Path(path_type=Path), required=True,
              help="Corpus file or directory: plain text, WikiExtractor, JSONL or MediaWiki XML; .gz/.bz2/.xz/.zst.")
@click.option("--out", required=True,
              help="Dataset directory to write or resume, or a URL: s3://BUCKET/PREFIX, gs://…, any fsspec URL.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="HF tokenizer.json or BERT vocab.txt (default: train a cased WordPiece on the corpus).")
@click.option("--vocab-size", default=28996, show_default=True, help="Vocabulary size when training one.")
@click.option("--vocab-sample-mb", default=1024.0, show_default=True,
              help="Train the vocabulary on about this much of the input (units chosen by hash); 0 = all of it.")
@click.option("--workers", type=int, help="Worker processes [default: one per usable core, as CPU affinity and "
              "cgroup quota allow] (output bytes never depend on it).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on Dask: tcp://HOST:8786 (an existing cluster sharing the output filesystem) or 'local' "
                   "(a LocalCluster of --workers processes). Needs spanbert[dask].")
@click.option("--encoder", type=click.Choice(["auto", "fast", "hf"]), default="auto", show_default=True,
              help="Token ids from the compiled WordPiece encoder (fast; auto = where it applies) or from HF "
                   "tokenizers (hf); the ids, so the output bytes, never depend on it.")
@click.option("--max-seq-len", default=512, show_default=True, help="Slots per training row.")
@click.option("--seed", default=12345, show_default=True, help="Seed of the masks and of the held-out split.")
@click.option("--mask-epochs", default=1, show_default=True, help="Different maskings of every block to write.")
@click.option("--valid-fraction", default=0.01, show_default=True, help="Fraction of documents held out.")
@click.option("--rows-per-shard", default=65536, show_default=True, help="At most this many rows per shard.")
@click.option("--unit-mb", default=64.0, show_default=True, help="Input is processed in units of about this size.")
@click.option("--scheme", type=click.Choice(["span", "subword", "whole-word"]), default="span", show_default=True,
              help="Masking scheme: SpanBERT's geometric spans, or the paper's baselines.")
@click.option("--mask-ratio", default=0.15, show_default=True, help="Fraction of content tokens masked per block.")
@click.option("--geometric-p", default=0.2, show_default=True, help="p of the clipped geometric span length.")
@click.option("--max-span-words", default=10, show_default=True, help="Longest span, in words.")
@click.option("--replacement", type=click.Choice(["unigram", "uniform"]), default="unigram", show_default=True,
              help="Distribution of the 10% random replacements.")
@click.option("--work-dir", type=click.Path(path_type=Path),
              help="With a URL --out: the local staging directory (default: under ~/.cache/spanbert, by URL).")
@STORAGE_OPTIONS
@user_errors
def build(corpus, out, tokenizer, vocab_size, vocab_sample_mb, workers, scheduler, encoder, max_seq_len, seed,
          mask_epochs, valid_fraction, rows_per_shard, unit_mb, scheme, mask_ratio, geometric_p, max_span_words,
          replacement, work_dir, storage_options):  # fmt: skip
    """Build (or resume) a dataset: tokenize, block, mask, pack, write shards + manifest."""
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig
    from spanbert_data.masking import MaskingConfig

    masking = MaskingConfig(scheme=scheme, mask_ratio=mask_ratio, geometric_p=geometric_p,
                            max_span_words=max_span_words, replacement=replacement)  # fmt: skip
    from spanbert_data.shards import is_url

    out = out if is_url(out) else Path(out)
    cfg = BuildConfig(corpus=corpus, out=out, tokenizer=tokenizer, vocab_size=vocab_size, work_dir=work_dir,
                      vocab_sample_bytes=int(vocab_sample_mb * (1 << 20)), workers=workers, scheduler=scheduler,
                      encoder=encoder,
                      max_seq_len=max_seq_len, seed=seed, mask_epochs=mask_epochs, valid_fraction=valid_fraction,
                      rows_per_shard=rows_per_shard, unit_bytes=int(unit_mb * (1 << 20)),
                      masking=masking)  # fmt: skip
    try:
        cfg.validate()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    build_dataset(cfg, storage_options=storage_options)
    click.echo(f"dataset ready: {out}")


@main.command()
@click.option("--corpus", type=click.Path(path_type=Path), required=True, help="Corpus file or directory.")
@click.option("--vocab-size", default=28996, show_default=True, help="Number of WordPiece entries.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="tokenizer.json to write.")
@click.option("--vocab-sample-mb", default=1024.0, show_default=True,
              help="Train on about this much of the input (units chosen by hash); 0 = all of it.")
@click.option("--unit-mb", default=64.0, show_default=True, help="Input is counted in units of about this size.")
@click.option("--workers", type=int, help="Worker processes [default: one per usable core] (the result never "
              "depends on it).")
@click.option("--scheduler", metavar="ADDRESS", help="Count on Dask: tcp://HOST:8786 or 'local' (as for build).")
@user_errors
def vocab(corpus, vocab_size, out, vocab_sample_mb, unit_mb, workers, scheduler):
    """Train a cased BERT WordPiece vocabulary on a corpus (SPEC §1): the same file `build` would train."""
    from spanbert_data.build import corpus_vocabulary

    if vocab_size < 100 or vocab_sample_mb < 0 or unit_mb <= 0 or (workers is not None and workers < 1):
        raise click.UsageError("need --vocab-size >= 100, --vocab-sample-mb >= 0, --unit-mb > 0 and --workers >= 1")
    tok, info = corpus_vocabulary(corpus, vocab_size, int(vocab_sample_mb * (1 << 20)), int(unit_mb * (1 << 20)),
                                  workers, scheduler, log=lambda m: click.echo(m, err=True))  # fmt: skip
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if info["documents"] == 0:
        raise CorpusError(f"no readable text under {corpus}; nothing to train on")
    tok.save(out)
    click.echo(f"wrote {out}: {tok.vocab_size} entries from {info['documents']} documents, {info['lines']} lines")


@main.command()
@click.argument("dataset")
@STORAGE_OPTIONS
@user_errors
def verify(dataset, storage_options):
    """Re-hash every file of a dataset (a directory or a URL) against its manifest; exit 1 naming each bad one.

    Objects in a bucket are streamed through the hash, nothing is written to disk."""
    from spanbert_data.shards import load_manifest, location, manifest_files, verify_dataset

    dataset = location(dataset, storage_options)
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
    from spanbert_data.inspect import dataset_stats, show_examples
    from spanbert_data.shards import location

    dataset = location(dataset, storage_options)
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
