"""SuperGLUE examples -> `GLMForMultipleChoice` features, and the data collator that batches them for `Trainer`.

Encoding follows the original `PVP.encode` (`tasks/superglue/pvp.py`): every part of the pattern is tokenized on its
own (no special tokens), the parts are cut to `max_length` one token at a time from the end of the last
shortenable part of whichever text (a or b) has more shortenable tokens, and the cloze row is built by
`glm_hf.cloze.build_cloze_inputs` (the original `build_input_from_ids`: `[CLS] text [eos] [sop] ...`).

* Multi-token cloze: one row per candidate, each cut for its own answer (answer tokens + [eop]); the feature holds
  per-candidate lists and `target_ids` (the answer tokens at their columns, -100 elsewhere).
* Single-token cloze: one row, `[CLS] text [eos] [sop]`, whose logits at the [sop] column (`mask_positions`; the
  [sop] sits at the blank's position, as the original reads them) are compared over `verbalizer_ids`.

`DataCollatorForCloze` pads the rows of a batch (and, for multi-token clozes, the candidate count, marking padded
candidates with `choice_mask` 0) and returns exactly the keys `GLMForMultipleChoice.forward` takes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..cloze import IGNORE_INDEX, build_cloze_inputs
from .patterns import MASK, PVP, ClozeCandidate, Part, Shortenable, get_pvp
from .readers import SuperGLUEExample
from .settings import TASK_SETTINGS

EncodedParts = list[tuple[list[int], bool]]  # (token ids, shortenable) per part


def _encode_parts(parts: Sequence[Part], tokenizer: Any, mask_id: int) -> EncodedParts:
    encoded = []
    for part in parts:
        if part is MASK:
            encoded.append(([mask_id], False))
        else:
            encoded.append((tokenizer.encode(str(part), add_special_tokens=False), isinstance(part, Shortenable)))
    return encoded


def _length(parts: EncodedParts | None, only_shortenable: bool = False) -> int:
    return sum(len(ids) for ids, shortenable in parts or [] if shortenable or not only_shortenable)


def _remove_last_token(parts: EncodedParts, where: str) -> None:
    """Drop the last token of the last non-empty shortenable part."""
    for index in range(len(parts) - 1, -1, -1):
        ids, shortenable = parts[index]
        if shortenable and ids:
            parts[index] = (ids[:-1], True)
            return
    raise ValueError(f"{where}: nothing left to shorten; raise max_length.")


def truncate_parts(
    parts_a: EncodedParts, parts_b: EncodedParts | None, answer_length: int, max_length: int, where: str = "example"
) -> bool:
    """Cut the shortenable parts in place so that [CLS] A B [eos] + Part B fits `max_length` (the original's
    `PVP.truncate`; `answer_length` 0 means a single-token cloze, whose Part B is the [sop] alone). Returns whether
    anything was cut."""
    total = _length(parts_a) + _length(parts_b) + answer_length + 2 + (0 if answer_length else 1)
    excess = total - max_length
    for _ in range(max(excess, 0)):
        if _length(parts_a, only_shortenable=True) > _length(parts_b, only_shortenable=True):
            _remove_last_token(parts_a, where)
        else:
            _remove_last_token(parts_b or [], where)
    return excess > 0


def _flatten(parts: EncodedParts | None) -> list[int] | None:
    return [token for ids, _ in parts for token in ids] if parts else None


def _answer_ids(candidate: ClozeCandidate, tokenizer: Any, eop_id: int, where: str) -> list[int]:
    ids = tokenizer.encode(candidate.answer, add_special_tokens=False)
    if candidate.answer_single_token and len(ids) != 1:
        raise ValueError(f"{where}: the answer {candidate.answer!r} must be one token for this pattern, got {ids}.")
    if not ids:
        raise ValueError(f"{where}: the candidate answer {candidate.answer!r} has no tokens.")
    return [*ids, eop_id]


def _verbalizer_id(pvp: PVP, label: Any, tokenizer: Any) -> int:
    word = pvp.verbalize(label)
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] in tokenizer.all_special_ids:
        raise ValueError(
            f"{pvp.task} pattern {pvp.pattern_id}: the verbalizer {word!r} of label {label!r} is {ids}, not one "
            "ordinary token of this tokenizer; use multi_token=True."
        )
    return ids[0]


def _special_id(config: Any, name: str) -> int:
    value = getattr(config, f"{name}_token_id", None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        raise ValueError(f"config.{name}_token_id is not set; SuperGLUE clozes need it.")
    return int(value)


def encode_example(
    example: SuperGLUEExample,
    pvp: PVP,
    tokenizer: Any,
    config: Any,
    max_length: int,
    multi_token: bool | None = None,
    split: str = "train",
) -> dict[str, Any]:
    """The model features of one example (lists of ints; see the module docstring for the two layouts).

    Args:
        example / pvp: the example and the task's pattern-verbalizer pair.
        tokenizer: a `GLMTokenizerFast` (its ids equal the original tokenizer's).
        config: the model's `GLMConfig` (mask, eop, sop, cls, eos ids; `max_position_embeddings`).
        max_length: the original's `--seq-length`.
        multi_token: score whole candidate texts (default: the task's, `pvp.multi_token`).
        split: "train", "val" or "test" (WSC and ReCoRD pick their loss target by split).
    """
    multi_token = pvp.multi_token if multi_token is None else multi_token
    if not multi_token and pvp.multi_token:
        raise ValueError(
            f"{pvp.task} is a multi-token task (its candidates are texts); multi_token=False is not possible."
        )
    mask_id, eop_id = _special_id(config, "mask"), _special_id(config, "eop")
    where = example.source or example.guid
    label = pvp.target_index(example, split)

    if not multi_token:
        parts_a, parts_b = pvp.parts(example)
        encoded_a = _encode_parts(parts_a, tokenizer, mask_id)
        encoded_b = _encode_parts(parts_b, tokenizer, mask_id) if parts_b else None
        truncate_parts(encoded_a, encoded_b, 0, max_length, where)
        verbalizer_ids = [_verbalizer_id(pvp, name, tokenizer) for name in pvp.labels]
        row = build_cloze_inputs(
            config,
            _flatten(encoded_a) or [],
            [verbalizer_ids[:1]],
            _flatten(encoded_b),
            max_length=max_length,
            mask_id=mask_id,
        )
        prefix_length = int(row["prefix_length"][0])
        return {
            "input_ids": row["input_ids"][0].tolist(),
            "position_ids": row["position_ids"][0].tolist(),
            "block_position_ids": row["block_position_ids"][0].tolist(),
            "attention_mask": row["attention_mask"][0].tolist(),
            "prefix_length": prefix_length,
            "mask_positions": prefix_length,  # the [sop] column: the original reads the logits there
            "verbalizer_ids": verbalizer_ids,
            "labels": label,
        }

    keys = ("input_ids", "position_ids", "block_position_ids", "attention_mask", "labels")
    columns: dict[str, list[Any]] = {key: [] for key in (*keys, "prefix_length")}
    encoded_cache: dict[tuple[int, int], tuple[EncodedParts, EncodedParts | None]] = {}
    candidates = pvp.candidates(example)
    if not candidates:
        raise ValueError(f"{where}: the example has no candidate answer.")
    for candidate in candidates:
        key = (id(candidate.parts_a), id(candidate.parts_b))  # candidates sharing their parts: tokenized once
        if key not in encoded_cache:
            encoded_cache[key] = (
                _encode_parts(candidate.parts_a, tokenizer, mask_id),
                _encode_parts(candidate.parts_b, tokenizer, mask_id) if candidate.parts_b else None,
            )
        encoded_a, encoded_b = copy.deepcopy(encoded_cache[key])
        answer_ids = _answer_ids(candidate, tokenizer, eop_id, where)
        truncate_parts(encoded_a, encoded_b, len(answer_ids), max_length, where)
        row = build_cloze_inputs(
            config,
            _flatten(encoded_a) or [],
            [answer_ids],
            _flatten(encoded_b),
            max_length=max_length,
            mask_id=mask_id,
        )
        for name in keys:
            columns[name].append(row[name][0].tolist())
        columns["prefix_length"].append(int(row["prefix_length"][0]))
    return {
        "input_ids": columns["input_ids"],
        "position_ids": columns["position_ids"],
        "block_position_ids": columns["block_position_ids"],
        "attention_mask": columns["attention_mask"],
        "prefix_length": columns["prefix_length"],
        "target_ids": columns["labels"],
        "labels": label,
    }


def check_tokenizer_matches_config(tokenizer: Any, config: Any) -> None:
    """Raise when the tokenizer's [MASK]/sop/eop ids differ from the model config's (a mismatched pair)."""
    for name in ("mask", "sop", "eop"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None and token_id != _special_id(config, name):
            raise ValueError(
                f"The tokenizer's {name} id ({token_id}) differs from config.{name}_token_id "
                f"({_special_id(config, name)}); use the tokenizer saved with the model."
            )


class SuperGLUEDataset(torch.utils.data.Dataset):
    """The features of a list of examples, encoded on access (ReCoRD's evaluation sets are too big to hold).

    Args:
        examples: from `read_examples` / `read_split`.
        tokenizer / config: the model's tokenizer and `GLMConfig`.
        pattern_id: the pattern (default: the task's released choice, see `TASK_SETTINGS`).
        max_length: the original's `--seq-length` (default: the task's).
        multi_token: score whole candidate texts (default: the task's).
        split: "train", "val" or "test".
    """

    def __init__(
        self,
        examples: Sequence[SuperGLUEExample],
        tokenizer: Any,
        config: Any,
        task: str,
        pattern_id: int | None = None,
        max_length: int | None = None,
        multi_token: bool | None = None,
        split: str = "train",
    ):
        settings = TASK_SETTINGS[task.lower()]
        self.examples = list(examples)
        wrong = next((example for example in self.examples if example.task != settings.task), None)
        if wrong is not None:
            raise ValueError(f"{wrong.source or wrong.guid}: a {wrong.task} example in a {settings.task} dataset.")
        self.tokenizer, self.config, self.split = tokenizer, config, split
        self.pvp = get_pvp(settings.task, settings.pattern_id if pattern_id is None else pattern_id)
        self.max_length = settings.max_length if max_length is None else max_length
        self.multi_token = self.pvp.multi_token if multi_token is None else multi_token
        if self.max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length={self.max_length} is longer than the model's position table "
                f"(config.max_position_embeddings={config.max_position_embeddings}); lower max_length."
            )
        check_tokenizer_matches_config(tokenizer, config)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return encode_example(
            self.examples[index], self.pvp, self.tokenizer, self.config, self.max_length, self.multi_token, self.split
        )


@dataclass
class DataCollatorForCloze:
    """Batches `encode_example` features into `GLMForMultipleChoice` inputs (torch tensors).

    Rows are right-padded to the longest row of the batch (`pad_token_id`, the family's eos as in the original;
    position 0, block position 0, attention 0, target -100). Multi-token batches are also padded to the largest
    candidate count: a padded candidate repeats the example's first row (as the original's collate does) and gets
    `choice_mask` 0, so it never wins and carries no probability. `pad_to_multiple_of` rounds the row length up.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def _width(self, longest: int) -> int:
        if self.pad_to_multiple_of:
            return -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("DataCollatorForCloze got an empty batch.")
        if "mask_positions" in features[0]:
            return self._single_token(features)
        return self._multi_token(features)

    def _single_token(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = self._width(max(len(feature["input_ids"]) for feature in features))
        fills = {"input_ids": self.pad_token_id, "position_ids": 0, "block_position_ids": 0, "attention_mask": 0}
        batch = {
            key: torch.tensor([row[key] + [fill] * (width - len(row[key])) for row in features], dtype=torch.long)
            for key, fill in fills.items()
        }
        choices = {len(feature["verbalizer_ids"]) for feature in features}
        if len(choices) != 1:
            raise ValueError(f"Single-token features with different label counts in one batch: {sorted(choices)}.")
        batch["prefix_length"] = torch.tensor([feature["prefix_length"] for feature in features], dtype=torch.long)
        batch["mask_positions"] = torch.tensor([feature["mask_positions"] for feature in features], dtype=torch.long)
        batch["verbalizer_ids"] = torch.tensor([feature["verbalizer_ids"] for feature in features], dtype=torch.long)
        batch["choice_mask"] = torch.ones_like(batch["verbalizer_ids"])
        batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
        return batch

    def _multi_token(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        num_choices = max(len(feature["input_ids"]) for feature in features)
        width = self._width(max(len(row) for feature in features for row in feature["input_ids"]))
        fills = {
            "input_ids": self.pad_token_id,
            "position_ids": 0,
            "block_position_ids": 0,
            "attention_mask": 0,
            "target_ids": IGNORE_INDEX,
        }
        batch: dict[str, torch.Tensor] = {}
        for key, fill in fills.items():
            batch[key] = torch.tensor(
                [
                    [row + [fill] * (width - len(row)) for row in _pad_choices(feature[key], num_choices)]
                    for feature in features
                ],
                dtype=torch.long,
            )
        batch["prefix_length"] = torch.tensor(
            [_pad_choices(feature["prefix_length"], num_choices) for feature in features], dtype=torch.long
        )
        batch["choice_mask"] = torch.tensor(
            [
                [1] * len(feature["input_ids"]) + [0] * (num_choices - len(feature["input_ids"]))
                for feature in features
            ],
            dtype=torch.long,
        )
        batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
        return batch


def _pad_choices(values: list[Any], num_choices: int) -> list[Any]:
    """The per-candidate values, topped up to `num_choices` with copies of the first candidate's."""
    return list(values) + [values[0]] * (num_choices - len(values))


__all__ = [
    "DataCollatorForCloze",
    "SuperGLUEDataset",
    "check_tokenizer_matches_config",
    "encode_example",
    "truncate_parts",
]
