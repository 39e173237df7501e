"""Real tokenizers of every family, trained offline in a few seconds each (for the tests and bench/subword_pass1.py):

- `byte_level_bpe`: RoBERTa-style, `tokenizers`' BpeTrainer with a ByteLevel pre-tokenizer;
- `unigram_metaspace`: `tokenizers`' UnigramTrainer with a Metaspace pre-tokenizer (XLM-R's layout of specials);
- `sentencepiece_folder`: a SentencePiece unigram model trained by the `sentencepiece` library and converted to a
  tokenizer.json by `transformers`' XLM-R converter, saved as a transformers folder whose tokenizer_config.json
  names the special tokens (the converted tokenizer.json alone does not mark `<mask>` and `<pad>` special).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FAMILIES = ("bpe", "unigram", "sentencepiece")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
ROBERTA = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def sample_documents(n: int) -> list[list[str]]:
    """The first n documents of the bundled Wikipedia sample, as lists of lines."""
    docs = []
    with SAMPLE.open(encoding="utf-8") as f:
        for line in f:
            docs.append([x for x in json.loads(line)["text"].split("\n") if x.strip()])
            if len(docs) == n:
                break
    return docs


def write_corpus(path: Path, docs: list[list[str]]) -> Path:
    """Plain text: one line per paragraph, a blank line between documents."""
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


def byte_level_bpe(lines: list[str], vocab_size: int = 2000) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=ROBERTA, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def unigram_metaspace(lines: list[str], vocab_size: int = 1500) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=ROBERTA,
                                                           unk_token="<unk>", show_progress=False))  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])  # fmt: skip
    return tok


class _SpmFile:
    """What transformers' SentencePiece converters read off a slow tokenizer: the model file and two ids."""

    add_prefix_space = True
    legacy = True

    def __init__(self, path: Path):
        self.vocab_file = str(path)

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"<s>": 0, "</s>": 2}[token]


def sentencepiece_folder(lines: list[str], folder: Path, vocab_size: int = 1500) -> Path:
    """A transformers tokenizer folder (tokenizer.json, tokenizer_config.json) from a SentencePiece model."""
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import XLMRobertaConverter

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "spm"),
                                   vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
                                   num_threads=1, minloglevel=2)  # fmt: skip
    tok = XLMRobertaConverter(_SpmFile(folder / "spm.model")).converted()
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>",
              "sep_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def family_tokenizer(family: str, lines: list[str], root: Path) -> Path:
    """The tokenizer of one family trained on lines, saved under root: a tokenizer.json, or for "sentencepiece"
    a transformers folder."""
    if family == "sentencepiece":
        return sentencepiece_folder(lines, root / "spm")
    path = root / f"{family}.json"
    {"bpe": byte_level_bpe, "unigram": unigram_metaspace}[family](lines).save(str(path))
    return path
