"""GLM's pretraining data: blank-infilling batches (`DataCollatorForBlankInfilling`) and corpus preparation.

The pipeline is the original's (`data_utils/datasets.BlockDataset` + `blocklm_utils.ConstructBlockStrategy`):

1. `read_corpus(paths)` reads documents: a `.txt` file holds one document per non-empty line (blank lines are
   skipped), a `.jsonl` file one `{"text": ...}` object per line; folders are searched for both.
2. `pack_documents(texts, tokenizer, max_length)` tokenizes them and builds the samples the collator takes:
   `{"input_ids": [CLS] doc [eos] [CLS] doc [eos] ...}` packed up to `max_length` tokens, the layout of
   `BlockDataset`'s samples but built in order instead of drawn at random (a document that does not fit is split:
   its head ends the sample, the rest starts the next one after a new [CLS]), or with `pack=False` one document
   per sample, cut to `max_length`. Empty texts and samples shorter
   than `min_length` are skipped and counted (`PackedSamples.skipped_empty`, `.skipped_short`, `.truncated`).
3. `DataCollatorForBlankInfilling` turns a list of samples into a GLM batch, drawing exactly what
   `ConstructBlockStrategy.construct_blocks` draws (the same `random.Random` calls in the same order, so the same
   seed and batch counter give the same batch as the original). Each batch gets one objective:

   * span (probability `bert_prob`): spans with Poisson(`average_block_length`) lengths cover `bert_ratio` of the
     tokens; each becomes one [MASK] in Part A;
   * sentence (`gap_sentence_prob`): whole sentences covering `gap_sentence_ratio` become [MASK] ([sMASK] with
     `task_mask`);
   * document (the rest): one span of `gpt_min_ratio`..100% of the text, as a suffix after [MASK] ([gMASK] with
     `task_mask`) with probability `gpt_infill_prob` or always when the sample packs several documents,
     otherwise placed anywhere.

   Part B holds every span as `[sop] x1..xn` with targets `x1..xn [eop]`, spans in random order
   (`shuffle_blocks`); a span's `position_ids` are its mask's index in Part A and its `block_position_ids`
   `1..n+1`; Part A has block position 0.

The batch holds exactly the model's forward arguments: `input_ids`, `position_ids`, `block_position_ids`,
`attention_mask` (padding), `prefix_length` (Part A's length per row) and `labels` (-100 outside Part B and on
padding), so it feeds `Trainer` as it is. A row is about `max_length` + (number of spans) tokens long.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SOP, EOP, GMASK, SMASK = "<|startofpiece|>", "<|endofpiece|>", "[gMASK]", "[sMASK]"
# A token ends a sentence when its string holds one of these (the original `contains_sentence_end`).
SENTENCE_END_CHARACTERS = (".", "?", "!", ";", ":", "\u3002", "\uff1f", "\uff01", "\uff1b", "\u2026", "\n")
CORPUS_SUFFIXES = (".txt", ".jsonl")
MAX_REDRAWS = 100  # batches redrawn (next counter value) when a draw leaves no target at all

# The objective mixtures of the original pretraining scripts (`config/<name>.sh`): glm-base / glm-large were
# trained with ds_block_base / ds_block_large, glm-roberta-large with ds_blockta_large, glm-large-chinese with
# ds_block_large_chinese, glm-10b(-chinese) with ds_block_10B(_chinese) and then the `_longer` stage.
PRETRAINING_MIXTURES: dict[str, dict[str, Any]] = {
    "ds_block_base": {"bert_prob": 1.0, "max_length": 512},
    "ds_block_large": {"bert_prob": 1.0, "max_length": 512},
    "ds_blockta_large": {"bert_prob": 1.0, "task_mask": True, "max_length": 512},
    "ds_block_large_chinese": {
        "bert_prob": 0.4, "gap_sentence_prob": 0.3, "gpt_min_ratio": 0.25, "short_seq_prob": 0.02,
        "task_mask": True, "max_length": 512,
    },
    "ds_block_10B": {
        "bert_prob": 0.5, "gap_sentence_prob": 0.3, "gpt_min_ratio": 0.25, "short_seq_prob": 0.02,
        "task_mask": True, "max_length": 512,
    },
    "ds_block_10B_chinese": {
        "bert_prob": 0.5, "gap_sentence_prob": 0.3, "gpt_min_ratio": 0.25, "short_seq_prob": 0.02,
        "task_mask": True, "max_length": 512,
    },
    "ds_block_10B_longer": {
        "bert_prob": 0.4, "gap_sentence_prob": 0.3, "single_span_prob": 0.05, "gpt_min_ratio": 0.25,
        "short_seq_prob": 0.5, "task_mask": True, "max_length": 1024,
    },
    "ds_block_10B_chinese_longer": {
        "bert_prob": 0.5, "gap_sentence_prob": 0.3, "gpt_min_ratio": 0.25, "short_seq_prob": 0.5,
        "task_mask": True, "max_length": 1024,
    },
}  # fmt: skip


# ---- corpus -----------------------------------------------------------------------------------------------------


def read_corpus(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """The documents of `.txt` (one per non-empty line) and `.jsonl` (`{"text": ...}` per line) files.

    A folder stands for every `.txt` / `.jsonl` file below it (sorted). Blank lines and empty texts are skipped;
    a path that does not exist, an unsupported suffix, a malformed line (reported as `file:line`) or a corpus
    without any text is a `FileNotFoundError` / `ValueError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
            if not found:
                raise ValueError(f"Corpus folder {path} holds no .txt or .jsonl file.")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in CORPUS_SUFFIXES:
                raise ValueError(f"Corpus file {path}: expected a .txt or .jsonl file.")
            files.append(path)
        else:
            raise FileNotFoundError(f"Corpus path {path} does not exist.")
    if not files:
        raise ValueError("No corpus path given.")
    documents: list[str] = []
    for path in files:
        documents.extend(_read_corpus_file(path))
    if not documents:
        raise ValueError(f"The corpus ({', '.join(map(str, files))}) holds no text.")
    return documents


def _read_corpus_file(path: Path) -> list[str]:
    """Non-empty documents of one corpus file."""
    return [text for text in read_text_records(path) if text.strip()]


def read_text_records(path: Path) -> list[str]:
    """The non-blank lines of a .txt file, or the string "text" field of each non-blank line of a .jsonl file (kept
    even when blank); errors name the file and line."""
    try:
        # Newlines only (read_text turns \r\n into \n): str.splitlines would also break at U+2028, form feeds and
        # the like, which JSON strings may hold unescaped, and would shift the line numbers of error messages.
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    if path.suffix.lower() == ".txt":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
        except RecursionError:
            raise ValueError(
                f'{path}:{number}: the JSON nests too deeply to read; a record is an object with a "text" field.'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'{path}:{number}: expected an object with a string "text" field.')
        texts.append(record["text"])
    return texts


class PackedSamples(list):
    """The samples of `pack_documents` (a list of `{"input_ids": [...]}`) and what was skipped on the way."""

    def __init__(
        self,
        samples: Iterable[dict[str, list[int]]] = (),
        documents: int = 0,
        skipped_empty: int = 0,
        skipped_short: int = 0,
        truncated: int = 0,
        split_documents: int = 0,
    ):
        super().__init__(samples)
        self.documents = documents  # documents that went into the samples
        self.skipped_empty = skipped_empty  # texts with no token
        self.skipped_short = skipped_short  # samples (pack=False: documents) shorter than min_length
        self.truncated = truncated  # pack=False: documents cut to max_length
        self.split_documents = split_documents  # pack=True: documents continued in the next sample


def pack_documents(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    pack: bool = True,
    min_length: int = 8,
) -> PackedSamples:
    """Tokenize `texts` and build the samples `DataCollatorForBlankInfilling` takes, in `BlockDataset`'s layout.

    Every document is `[CLS] ids [eos]`. With `pack`, documents follow each other in order until a sample holds
    `max_length` tokens; the document that does not fit is split (its head closes the sample, its rest opens the
    next sample after a new [CLS]), so no text is lost (`BlockDataset` instead draws documents at random and cuts
    them at sentence ends). Without `pack`, each document is one sample, cut to its first `max_length` tokens when
    longer (then without [eos], as the original's long documents lose their end). Empty texts
    and samples under `min_length` tokens (default 8: the shortest that holds one 15% span besides [CLS] and
    [eos]) are skipped; the counts are on the result and logged.
    """
    if min_length < 3:
        raise ValueError(f"min_length={min_length}: a sample needs at least [CLS], one token and [eos] (3).")
    if max_length < min_length:
        raise ValueError(f"max_length={max_length} is below min_length={min_length}.")
    cls_id, eos_id = _required_id(tokenizer, "cls"), _required_id(tokenizer, "eos")
    texts = list(texts)
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"pack_documents takes strings; text {number} is a {type(text).__name__}.")
    kept = [text for text in texts if text.strip()]
    encoded = tokenizer(kept, add_special_tokens=False, verbose=False)["input_ids"] if kept else []
    documents = [ids for ids in encoded if ids]
    result = PackedSamples(skipped_empty=len(texts) - len(documents))

    def emit(sample: list[int]) -> None:
        if len(sample) < min_length:
            result.skipped_short += 1
        else:
            result.append({"input_ids": sample})

    current: list[int] = []
    for ids in documents:
        chunk = [cls_id, *ids, eos_id]
        if not pack:
            if len(chunk) > max_length:
                chunk = chunk[:max_length]
                result.truncated += 1
            emit(chunk)
            continue
        while chunk:
            room = max_length - len(current)
            if len(chunk) <= room:
                current.extend(chunk)
                chunk = []
            else:
                if room >= 2:  # room for [CLS] and a token: the head of the document closes this sample
                    current.extend(chunk[:room])
                    chunk = [cls_id, *chunk[room:]]
                    result.split_documents += 1
                emit(current)
                current = []
            if len(current) == max_length:
                emit(current)
                current = []
    if current:
        emit(current)
    result.documents = len(documents)
    message = (
        f"pack_documents: {len(result)} samples from {len(documents)} documents; skipped {result.skipped_empty} "
        f"empty texts and {result.skipped_short} samples under {min_length} tokens; "
        + (f"{result.split_documents} documents split across samples" if pack else f"{result.truncated} truncated")
    )
    # Packed, only the last sample can be short: dropping that tail is routine, not worth a warning.
    (logger.warning if result.skipped_empty or (result.skipped_short and not pack) else logger.info)(message)
    if not result:
        raise ValueError(f"No sample left to train on: {message}.")
    return result


# ---- special tokens ---------------------------------------------------------------------------------------------


_TOKEN_STRINGS = {"sop": SOP, "eop": EOP, "gmask": GMASK, "smask": SMASK}


def _optional_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int | None:
    """`tokenizer.<name>_token_id` (GLM tokenizers have sop/eop/gmask/smask), else the id of the command string."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None and name in _TOKEN_STRINGS:
        index = tokenizer.convert_tokens_to_ids(_TOKEN_STRINGS[name])
        if index is not None and index != tokenizer.unk_token_id:
            value = index
    return None if value is None else int(value)


def _required_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    value = _optional_id(tokenizer, name)
    if value is None:
        raise ValueError(
            f"The tokenizer has no {name} token; blank infilling needs [CLS], eos, [MASK], {SOP} and {EOP} "
            "(a GLM tokenizer from glm_hf.build_tokenizer or a converted model folder has them)."
        )
    return value


def sentence_end_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids whose token string holds a sentence end (. ? ! ; : and their CJK forms, an ellipsis, a newline)."""
    return frozenset(
        index for token, index in tokenizer.get_vocab().items() if any(c in token for c in SENTENCE_END_CHARACTERS)
    )


def span_length_weights(average_block_length: float, max_block_length: int) -> list[float]:
    """The original's `block_length_distribution`: the Poisson(average) pmf at lengths 1..max_block_length-1.

    Computed as scipy's `poisson.pmf` (exp of k log(mu) - lgamma(k + 1) - mu); values agree with scipy's to a few
    ulps, which changes a draw only when `random() * total` falls within those ulps of a boundary.
    """
    mu = float(average_block_length)
    return [math.exp(k * math.log(mu) - math.lgamma(k + 1) - mu) for k in range(1, max_block_length)]


def _data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when it is running, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---- the collator -----------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One collated example before padding."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    block_position_ids: list[int]
    prefix_length: int


@dataclass
class DataCollatorForBlankInfilling:
    """GLM pretraining batches from samples `{"input_ids": [CLS] doc [eos] ...}`, as `ConstructBlockStrategy`.

    Parameters carry the original's names and `arguments.py` defaults: `bert_prob` (span objective),
    `gap_sentence_prob` (sentence objective; the rest is the document objective), `bert_ratio`,
    `gap_sentence_ratio`, `average_block_length`, `max_block_length` (spans are 1..max_block_length-1 long),
    `gpt_infill_prob`, `gpt_min_ratio`, `short_seq_prob` (split samples into shorter ones first),
    `single_span_prob` (one span only), `shuffle_blocks`, `block_position_encoding` (False: no
    `block_position_ids` in the batch, for models without that table) and `task_mask` ([sMASK] / [gMASK] for the
    sentence / document objectives instead of [MASK]). `PRETRAINING_MIXTURES` holds the released models' settings
    (`from_pretraining_script`).

    Samples longer than `max_length` are cut to it; a sample that does not start with [CLS] gets one; samples
    shorter than `min_sample_length` (the shortest every objective handles) are skipped. Counts are kept in
    `truncated_samples` / `skipped_samples`. As in the original, a sample whose spans do not fit its documents is
    left out of the batch; a draw that leaves no target at all is redrawn with the next counter value.

    Reproducibility: batch number `count` (incremented per call) on DataLoader worker `w` of `n` and data-parallel
    rank `r` of `R` draws from `random.Random(seed * 2**32 + (count * n + w) * R + r)`, the original's seed when
    `seed=0`. Each DataLoader worker holds its own copy of the counter: with `num_workers > 0` use
    `persistent_workers=True`, or every epoch repeats the first epoch's draws.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    max_length: int = 512
    bert_prob: float = 0.5
    gap_sentence_prob: float = 0.0
    gpt_infill_prob: float = 0.5
    gpt_min_ratio: float = 0.5
    bert_ratio: float = 0.15
    gap_sentence_ratio: float = 0.15
    average_block_length: float = 3
    max_block_length: int = 40
    short_seq_prob: float = 0.0
    single_span_prob: float = 0.0
    shuffle_blocks: bool = True
    block_position_encoding: bool = True
    task_mask: bool = False
    seed: int = 0
    pad_to_multiple_of: int | None = None
    count: int = 0
    truncated_samples: int = field(default=0, init=False)
    skipped_samples: int = field(default=0, init=False)
    last_objective: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name in ("bert_prob", "gap_sentence_prob", "gpt_infill_prob", "short_seq_prob", "single_span_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1].")
        if self.bert_prob + self.gap_sentence_prob > 1.0 + 1e-10:
            raise ValueError(
                f"bert_prob + gap_sentence_prob = {self.bert_prob + self.gap_sentence_prob} exceeds 1; the document "
                "objective takes the rest."
            )
        for name in ("bert_ratio", "gap_sentence_ratio"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in (0, 1).")
        if not 0.0 < self.gpt_min_ratio < 1.0:
            raise ValueError(f"gpt_min_ratio={self.gpt_min_ratio} must be in (0, 1).")
        if self.average_block_length <= 0 or self.max_block_length < 2:
            raise ValueError("average_block_length must be > 0 and max_block_length >= 2.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative int.")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of} must be >= 1.")
        if self.max_length < self.min_sample_length:
            raise ValueError(
                f"max_length={self.max_length} is below the shortest usable sample ({self.min_sample_length})."
            )
        if self.short_seq_prob > 0 and self.max_length < 34:
            raise ValueError(
                f"short_seq_prob > 0 splits samples into 32+ tokens; max_length={self.max_length} must be >= 34."
            )
        self.cls_id = _required_id(self.tokenizer, "cls")
        self.eos_id = _required_id(self.tokenizer, "eos")
        self.mask_id = _required_id(self.tokenizer, "mask")
        self.sop_id = _required_id(self.tokenizer, "sop")
        self.eop_id = _required_id(self.tokenizer, "eop")
        pad_id = _optional_id(self.tokenizer, "pad")
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self.generation_mask_id, self.gap_sentence_mask_id = self.mask_id, self.mask_id
        if self.task_mask:
            gmask, smask = _optional_id(self.tokenizer, "gmask"), _optional_id(self.tokenizer, "smask")
            if gmask is None or smask is None:
                raise ValueError(
                    f"task_mask=True needs {GMASK} and {SMASK}, which this tokenizer lacks (the BERT family has "
                    "none: GLM-Base/Large were trained with task_mask=False)."
                )
            self.generation_mask_id, self.gap_sentence_mask_id = gmask, smask
        self.sentence_ends = sentence_end_ids(self.tokenizer)
        self.span_weights = span_length_weights(self.average_block_length, self.max_block_length)

    @classmethod
    def from_pretraining_script(
        cls, name: str, tokenizer: PreTrainedTokenizerBase, **overrides: Any
    ) -> DataCollatorForBlankInfilling:
        """The collator with the objective mixture of an original `config/<name>.sh` (see `PRETRAINING_MIXTURES`)."""
        if name not in PRETRAINING_MIXTURES:
            raise ValueError(f"Unknown pretraining script {name!r}; known: {', '.join(PRETRAINING_MIXTURES)}.")
        return cls(tokenizer, **{**PRETRAINING_MIXTURES[name], **overrides})

    @property
    def min_sample_length(self) -> int:
        """The shortest sample every objective takes: the document objective needs 1 <= int(gpt_min_ratio n) <= n-2."""
        length = 3
        while not 1 <= int(self.gpt_min_ratio * length) <= length - 2:
            length += 1
        return length

    # -- public entry ---------------------------------------------------------------------------------------------

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        samples = self._prepare(features)
        for _ in range(MAX_REDRAWS):
            rows, objective = self.construct_blocks(samples)
            if any(label != IGNORE_INDEX for row in rows for label in row.labels):
                break
        else:
            documents = sorted(self._document_lengths(samples))
            raise ValueError(
                f"{MAX_REDRAWS} draws left no blank in this batch: blanks must lie inside one document, and its "
                f"{len(documents)} documents are short (median {documents[len(documents) // 2]} tokens, longest "
                f"{documents[-1]}; samples of {[len(s) for s in samples]} tokens). A corpus with a document per short "
                "line (verse, dialogue) needs its lines joined into longer documents: glm-hf pretrain --join-lines "
                "100 (in Python: group_lines(texts, 100) before pack_documents)."
            )
        self.last_objective = objective
        return self._pad(rows)

    def _document_lengths(self, samples: list[list[int]]) -> list[int]:
        """Token counts of the documents packed in `samples` (each `[CLS] ids [eos]`, the ids counted)."""
        lengths = []
        for tokens in samples:
            length = 0
            for token in tokens:
                if token in (self.cls_id, self.eos_id):
                    if length:
                        lengths.append(length)
                    length = 0
                else:
                    length += 1
            if length:
                lengths.append(length)
        return lengths or [0]

    def _prepare(self, features: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """Token lists starting with [CLS], cut to `max_length`; too-short samples skipped (counted)."""
        if not features:
            raise ValueError("The batch holds no sample.")
        samples = []
        for feature in features:
            ids = feature["input_ids"]
            ids = ids.tolist() if hasattr(ids, "tolist") else [int(token) for token in ids]
            if ids and ids[0] != self.cls_id:
                ids = [self.cls_id, *ids]
            if len(ids) > self.max_length:
                ids = ids[: self.max_length]
                self.truncated_samples += 1
                if self.truncated_samples == 1:
                    logger.warning(
                        f"Samples longer than max_length={self.max_length} are cut (counted in truncated_samples)."
                    )
            if len(ids) < self.min_sample_length:
                self.skipped_samples += 1
                if self.skipped_samples == 1:
                    logger.warning(
                        f"Samples under {self.min_sample_length} tokens are skipped (counted in skipped_samples)."
                    )
                continue
            samples.append(ids)
        if not samples:
            raise ValueError(
                f"No sample of this batch has {self.min_sample_length} tokens or more; pack short documents "
                "together with glm_hf.pack_documents."
            )
        return samples

    def _pad(self, rows: list[_Row]) -> dict[str, torch.Tensor]:
        width = max(len(row.input_ids) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        batch = {
            "input_ids": torch.tensor([padded(row.input_ids, self.pad_id) for row in rows]),
            "position_ids": torch.tensor([padded(row.position_ids, 0) for row in rows]),
            "block_position_ids": torch.tensor([padded(row.block_position_ids, 0) for row in rows]),
            "attention_mask": torch.tensor([padded([1] * len(row.input_ids), 0) for row in rows]),
            "prefix_length": torch.tensor([row.prefix_length for row in rows]),
            "labels": torch.tensor([padded(row.labels, IGNORE_INDEX) for row in rows]),
        }
        if not self.block_position_encoding:
            del batch["block_position_ids"]
        return batch

    # -- the original's draws (blocklm_utils.ConstructBlockStrategy) -------------------------------------------------

    def _next_rng(self) -> random.Random:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rank, world_size = _data_parallel_rank()
        rng = random.Random(self.seed * 2**32 + (self.count * num_workers + worker_id) * world_size + rank)
        self.count += 1
        return rng

    def construct_blocks(self, samples: list[list[int]]) -> tuple[list[_Row], str]:
        """One batch from token lists (each starting with [CLS]) and its objective: `construct_blocks`."""
        rng = self._next_rng()
        if rng.random() < self.short_seq_prob:
            samples = self._split_samples(samples, rng)
        rand = rng.random()
        single_span = rand < self.single_span_prob
        rand = 0.0 if single_span else rng.random()
        if rand < self.bert_prob:
            return self._span_objective(samples, single_span, rng), "span"
        if rand < self.bert_prob + self.gap_sentence_prob:
            return self._sentence_objective(samples, rng), "sentence"
        return self._document_objective(samples, rng), "document"

    def _draw_span_length(self, rng: random.Random) -> int:
        return rng.choices(range(1, len(self.span_weights) + 1), weights=self.span_weights)[0]

    def _span_objective(self, samples: list[list[int]], single_span: bool, rng: random.Random) -> list[_Row]:
        rows = []
        for tokens in samples:
            if single_span:
                masked_lengths = [self._draw_span_length(rng)]
            else:
                masked_lengths, masked_count = [], 0
                while masked_count < int(self.bert_ratio * len(tokens)):
                    masked_lengths.append(self._draw_span_length(rng))
                    masked_count += masked_lengths[-1]
            row = self._blank_data(tokens, masked_lengths, rng, task="bert")
            if row is not None:  # the spans did not fit the sample's documents: the original drops it
                rows.append(row)
        return rows

    def _sentence_objective(self, samples: list[list[int]], rng: random.Random) -> list[_Row]:
        rows = []
        for tokens in samples:
            sentence_spans = []
            last_index = 1 if tokens[0] == self.cls_id else 0
            for i, token in enumerate(tokens):
                if token in self.sentence_ends:
                    if last_index < i + 1:
                        sentence_spans.append((last_index, i + 1))
                    last_index = i + 1
                elif token == self.eos_id:
                    last_index = i + 1
            if last_index < len(tokens):
                sentence_spans.append((last_index, len(tokens)))
            rng.shuffle(sentence_spans)
            block_spans, block_length = [], 0
            for start, end in sentence_spans:
                block_spans.append((start, end))
                block_length += end - start
                if block_length >= int(self.gap_sentence_ratio * len(tokens)):
                    break
            rows.append(self._block_data(tokens, block_spans, rng, task="gap_sentence"))
        return rows

    def _document_objective(self, samples: list[list[int]], rng: random.Random) -> list[_Row]:
        lengths = [len(tokens) for tokens in samples]
        max_generation_length = rng.randint(int(self.gpt_min_ratio * min(lengths)), max(lengths) - 2)
        rows = []
        for tokens in samples:
            generation_length = min(max_generation_length, len(tokens) - 2)
            first_eos = tokens.index(self.eos_id) if self.eos_id in tokens else -1
            multiple_documents = first_eos not in (-1, len(tokens) - 1)
            if multiple_documents or rng.random() < self.gpt_infill_prob:
                rows.append(self._suffix_data(tokens, generation_length))
            else:
                row = self._blank_data(tokens, [generation_length], rng, task="generation")
                if row is None:  # cannot happen: one span of at most n - 2 tokens fits the only document
                    raise RuntimeError(
                        f"No room for a {generation_length}-token span in a {len(tokens)}-token sample."
                    )
                rows.append(row)
        return rows

    def _loss_mask(self, tokens: list[int]) -> list[int]:
        """`BlockDataset`'s loss mask: 0 on the [CLS] opening each document, 1 elsewhere."""
        return [int(token != self.cls_id) for token in tokens]

    def _suffix_data(self, tokens: list[int], generation_length: int) -> _Row:
        """The document objective's suffix form: `text [MASK] [sop] suffix[:-1]`, targets the suffix."""
        division = len(tokens) - generation_length
        source, target = tokens[:division], tokens[division:]
        loss_mask = [0] * (division + 1) + self._loss_mask(tokens)[division:]
        targets = [*source, self.generation_mask_id, *target]
        return _Row(
            input_ids=[*source, self.generation_mask_id, self.sop_id, *target[:-1]],
            labels=[t if keep else IGNORE_INDEX for t, keep in zip(targets, loss_mask, strict=True)],
            position_ids=list(range(division + 1)) + [division] * len(target),
            block_position_ids=[0] * division + list(range(len(target) + 1)),
            prefix_length=division + 1,
        )

    def _blank_data(self, tokens: list[int], masked_lengths: list[int], rng: random.Random, task: str) -> _Row | None:
        """`generate_blank_data`: place the spans in the sample's documents, or None when they do not fit."""
        rng.shuffle(masked_lengths)
        block_spans = self._sample_span_in_document(tokens, masked_lengths, rng)
        if len(block_spans) < len(masked_lengths):
            return None
        return self._block_data(tokens, block_spans, rng, task=task)

    @staticmethod
    def _sample_spans(
        span_lengths: list[int], total_length: int, rng: random.Random, offset: int = 0
    ) -> list[tuple[int, int]]:
        """Uniform non-adjacent placement of spans (in this order) in `total_length` tokens from `offset`."""
        blank_length = total_length - sum(span_lengths)
        m = blank_length - len(span_lengths) + 1
        places = [rng.randrange(m + 1) for _ in range(len(span_lengths))]
        places.sort()
        spans = []
        for place, span_length in zip(places, span_lengths, strict=True):
            start = offset + place
            spans.append((start, start + span_length))
            offset += span_length + 1
        return spans

    def _sample_span_in_document(
        self, tokens: list[int], masked_lengths: list[int], rng: random.Random
    ) -> list[tuple[int, int]]:
        """Spread the spans over the documents of a packed sample: `bert_ratio` of each, the rest in the longest."""
        rng.shuffle(masked_lengths)
        indices = [-1] + [i for i, token in enumerate(tokens) if token == self.eos_id]
        last_index = len(tokens)
        documents = []
        for index in reversed(indices):
            start_index = index
            if start_index + 1 < len(tokens) and tokens[start_index + 1] == self.cls_id:
                start_index += 1
            length = last_index - start_index - 1
            if last_index == len(tokens) and length > 0:
                length -= 1
            documents.append((start_index + 1, length))
            last_index = index
        documents.sort(key=lambda document: document[1])
        mask_spans: list[tuple[int, int]] = []
        mask_index = 0
        for i, (offset, length) in enumerate(documents):
            last = i == len(documents) - 1
            budget = length if last else int(length * self.bert_ratio)
            masked_length, count = 0, 0
            while mask_index + count < len(masked_lengths):
                needed = masked_lengths[mask_index + count] + masked_length + (count if last else 0)
                if needed > budget:
                    break
                masked_length += masked_lengths[mask_index + count]
                count += 1
            if count > 0:
                spans = masked_lengths[mask_index : mask_index + count]
                mask_spans += self._sample_spans(spans, length, rng, offset=offset)
                if not last:
                    mask_index += count
        return mask_spans

    def _block_data(
        self, tokens: list[int], block_spans: list[tuple[int, int]], rng: random.Random, task: str
    ) -> _Row:
        """`make_block_data`: Part A with one mask per span, then the spans as `[sop] x1..xn` -> `x1..xn [eop]`.

        Every Part B target is labelled, [CLS] included: the original's `make_block_data` ignores the sample's loss
        mask (only the document objective's suffix form applies it).
        """
        step = [1] * len(tokens)
        for start, end in block_spans:
            step[start + 1 : end] = [0] * (end - start - 1)
        positions, total = [], -1
        for value in step:
            total += value
            positions.append(total)
        if self.shuffle_blocks:
            rng.shuffle(block_spans)
        else:
            block_spans.sort(key=lambda span: span[0])
        part_b_ids: list[int] = []
        part_b_targets: list[int] = []
        part_b_positions: list[int] = []
        part_b_blocks: list[int] = []
        for start, end in block_spans:
            part_b_ids += [self.sop_id, *tokens[start:end]]
            part_b_targets += [*tokens[start:end], self.eop_id]
            part_b_positions += [*positions[start:end], positions[start]]
            part_b_blocks += (
                list(range(1, end - start + 2)) if self.block_position_encoding else [1] * (end - start + 1)
            )
        block_spans.sort(key=lambda span: span[0])
        if task == "generation":
            mask_id = self.generation_mask_id
        elif task == "gap_sentence":
            mask_id = self.gap_sentence_mask_id
        else:
            mask_id = self.mask_id
        part_a_ids: list[int] = []
        part_a_positions: list[int] = []
        last = 0
        for start, end in block_spans:
            part_a_ids += [*tokens[last:start], mask_id]
            part_a_positions += [*positions[last:start], positions[start]]
            last = end
        part_a_ids += tokens[last:]
        part_a_positions += positions[last:]
        return _Row(
            input_ids=part_a_ids + part_b_ids,
            labels=[IGNORE_INDEX] * len(part_a_ids) + part_b_targets,
            position_ids=part_a_positions + part_b_positions,
            block_position_ids=[0] * len(part_a_ids) + part_b_blocks,
            prefix_length=len(part_a_ids),
        )

    def _split_samples(self, samples: list[list[int]], rng: random.Random) -> list[list[int]]:
        """`split_samples`: cut every sample into `num_splits` shorter ones at sentence ends, each after [CLS]."""

        def boundary(token: int) -> bool:
            return token in self.sentence_ends or token == self.eos_id

        target_length = rng.randrange(32, self.max_length - 1)
        num_splits = (self.max_length - 1) // target_length
        new_samples = []
        for sample in samples:
            tokens = sample[1:]
            for _ in range(num_splits):
                if target_length >= len(tokens):
                    new_tokens = tokens
                else:
                    start = rng.randrange(0, len(tokens) - target_length)
                    while start > 0 and (tokens[start] == self.eos_id or not boundary(tokens[start - 1])):
                        start -= 1
                    end = start + target_length
                    while end > start and not boundary(tokens[end - 1]):
                        end -= 1
                    if end - start < target_length // 2:
                        end = start + target_length
                    new_tokens = tokens[start:end]
                new_samples.append([self.cls_id, *new_tokens])
        return new_samples


__all__ = [
    "DataCollatorForBlankInfilling",
    "PRETRAINING_MIXTURES",
    "PackedSamples",
    "pack_documents",
    "read_corpus",
    "sentence_end_ids",
    "span_length_weights",
]
