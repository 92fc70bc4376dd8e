"""Readers for the official SuperGLUE jsonl files of the eight tasks, as the original `tasks/superglue/dataset.py`.

Every reader turns one file into `SuperGLUEExample`s the way the original processors do (the same texts, labels,
candidates and ids), and checks each line: malformed JSON, a missing or mistyped field and a label outside the task's
labels raise `SuperGLUEDataError` naming the file and line. Task specifics (all as the original):

* quotes and dashes are standardised (`standardize_punctuation`) in every text but COPA's;
* BoolQ also reads the original BoolQ layout (`question`, `passage`, `answer` "True"/"False", no `idx`): the label is
  `answer == "True"` and the idx the 0-based line number;
* COPA's training split gets a mirrored copy of every example (choices swapped, label flipped, guid + "m");
* MultiRC is flattened into one example per (passage, question, answer) with idx `[passage, question, answer]`;
* ReCoRD's candidates are the passage's entity texts (`text[start:end + 1]`, deduplicated and sorted). Training
  gives one example per distinct answer whose candidates are the answer followed by at most 9 other entities, drawn
  with `random.Random(seed)` shuffles as the original; evaluation gives one example per query with every entity.
  `@highlight\\n` becomes `- ` after the entities are read. The original iterates the answers of a training query
  in `set` order (which changes with `PYTHONHASHSEED`); here they are sorted, so the reading is reproducible;
* WSC: the span indices are repaired as the original does (span 1 shifted by one word where its words sit there,
  the pronoun shifted or split off a word it prefixes) and a span that still does not match is an error. Training
  keeps only the positive (`True`) rows, since the cloze model learns to produce the right referent. Candidates
  (the other noun phrases the model must rank below the referent) come from a `candidates` field when the file has
  one (the layout of the original's `WSC-negative` data, `[{"text": ...}, ...]`); official files have none, so
  by default (`wsc_candidates="siblings"`) they are the span-1 texts of the file's other rows that share the text
  and the pronoun. Training examples with more than 9 candidates are split into groups of 9, as the original.
"""

from __future__ import annotations

import json
import random
import string
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS: tuple[str, ...] = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")

# The label lists of the original processors (`get_labels`); a model's candidate i stands for label i.
TASK_LABELS: dict[str, list[Any]] = {
    "boolq": ["false", "true"],
    "cb": ["entailment", "contradiction", "neutral"],
    "copa": [0, 1],
    "multirc": [0, 1],
    "record": ["0", "1"],
    "rte": ["entailment", "not_entailment"],
    "wic": ["false", "true"],
    "wsc": ["False", "True"],
}

# The folder names of the official SuperGLUE release (also the submission file names).
TASK_DIRS: dict[str, str] = {
    "boolq": "BoolQ",
    "cb": "CB",
    "copa": "COPA",
    "multirc": "MultiRC",
    "record": "ReCoRD",
    "rte": "RTE",
    "wic": "WiC",
    "wsc": "WSC",
}

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FILES: dict[str, str] = {"train": "train.jsonl", "val": "val.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
_SET_TYPES = {"train": "train", "val": "dev", "test": "test"}  # guid prefixes, as the original names the splits

RECORD_MAX_TRAIN_CANDIDATES = 10  # the answer plus at most 9 other entities, as the original
WSC_CANDIDATE_GROUP = 9  # training examples with more candidates are split into groups of 9
_PUNCTUATION = {"\u201c": '"', "\u201d": '"', "\u2019": "'", "\u2018": "'", "\u2013": "-"}


class SuperGLUEDataError(ValueError):
    """A SuperGLUE file that cannot be read; the message names the file and line and what to fix."""


@dataclass
class SuperGLUEExample:
    """One example of a SuperGLUE task, as the original's `InputExample`.

    `label` is one of `TASK_LABELS[task]` (`None` in a test split); `idx` is what the submission file needs for the
    example; `meta` holds the task's extra fields (WiC `word`; WSC spans and `candidates`; COPA `choice1`, `choice2`,
    `question`; MultiRC `answer` and the three indices; ReCoRD `candidates` and gold `answers`); `source` is
    `file:line` of the row it was read from.
    """

    task: str
    guid: str
    text_a: str
    text_b: str | None = None
    label: Any = None
    idx: Any = -1
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def label_index(self) -> int | None:
        """Position of `label` in `TASK_LABELS[task]` (`None` for an unlabelled example)."""
        return None if self.label is None else TASK_LABELS[self.task].index(self.label)


def standardize_punctuation(text: str) -> str:
    """Curly quotes to straight ones and the en dash to '-', as the original's `punctuation_standardization`."""
    for key, value in _PUNCTUATION.items():
        text = text.replace(key, value)
    return text


class _Row:
    """One parsed json line with typed, located field access (errors name the file and line)."""

    def __init__(self, data: dict[str, Any], where: str, task: str):
        self.data, self.where, self.task = data, where, task

    def error(self, message: str) -> SuperGLUEDataError:
        return SuperGLUEDataError(f"{self.where}: {message}")

    def get(self, key: str, kinds: type | tuple[type, ...], *, required: bool = True, within: Any = None) -> Any:
        """`data[key]` (or a nested `within[key]`), checked to be of `kinds`; a missing optional field is None."""
        source = self.data if within is None else within
        if key not in source:
            if required:
                raise self.error(f'missing field "{key}" (a {TASK_DIRS[self.task]} row needs it).')
            return None
        value = source[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
            names = " or ".join(kind.__name__ for kind in _as_tuple(kinds))
            raise self.error(f'field "{key}" should be {names}, got {type(value).__name__} {_short(value)}.')
        return value

    def text(self, key: str, within: Any = None, standardize: bool = True) -> str:
        value = self.get(key, str, within=within)
        return standardize_punctuation(value) if standardize else value

    def label(self, convert: Callable[[Any], Any], key: str = "label", within: Any = None) -> Any:
        """The converted label, checked against the task's labels; None when the row has none (a test split)."""
        source = self.data if within is None else within
        if key not in source or source[key] is None:
            return None
        raw = source[key]
        labels = TASK_LABELS[self.task]
        value = convert(raw)
        if value is None or value not in labels or type(value) is not type(labels[0]):
            raise self.error(
                f"label {_short(raw)} is not one of the {TASK_DIRS[self.task]} labels "
                f"({', '.join(map(json.dumps, _raw_label_examples(self.task)))})."
            )
        return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _raw_label_examples(task: str) -> list[Any]:
    """The labels as the official files spell them (for error messages)."""
    return {
        "boolq": [True, False],
        "wic": [True, False],
        "wsc": [True, False],
    }.get(task, TASK_LABELS[task])


def _bool_label(names: tuple[str, str]) -> Callable[[Any], str | None]:
    """A converter of a JSON boolean (or its string spelling) to the task's label names (false, true)."""

    def convert(raw: Any) -> str | None:
        if isinstance(raw, bool):
            return names[int(raw)]
        if isinstance(raw, str) and raw.lower() in ("false", "true"):
            return names[raw.lower() == "true"]
        return None

    return convert


def _exact(raw: Any) -> Any:
    return None if isinstance(raw, bool) else raw


def _rows(path: Path, task: str) -> Iterator[tuple[int, _Row]]:
    """(0-based line index, row) for every non-blank line of a jsonl file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file (expected a {TASK_DIRS[task]} .jsonl file).")
    with path.open("rb") as handle:
        for index, raw in enumerate(handle):
            where = f"{path}:{index + 1}"
            try:
                line = raw.decode("utf-8-sig" if index == 0 else "utf-8")
            except UnicodeDecodeError as error:
                raise SuperGLUEDataError(
                    f"{where}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); save the file "
                    "as UTF-8, as the official SuperGLUE files are."
                ) from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise SuperGLUEDataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}).") from None
            if not isinstance(data, dict):
                raise SuperGLUEDataError(f"{where}: expected a JSON object, got {type(data).__name__}.")
            yield index, _Row(data, where, task)


def _idx(row: _Row) -> Any:
    return row.get("idx", (int, str, list))


def _read_rte(path: Path, split: str, task: str = "rte") -> list[SuperGLUEExample]:
    examples = []
    for line_index, row in _rows(path, task):
        idx = _idx(row)
        if isinstance(idx, str):  # the original: a string idx is converted, or replaced by the line index
            try:
                idx = int(idx)
            except ValueError:
                idx = line_index
        examples.append(
            SuperGLUEExample(
                task=task,
                guid=f"{_SET_TYPES[split]}-{idx}",
                text_a=row.text("premise"),
                text_b=row.text("hypothesis"),
                label=row.label(_exact),
                idx=idx,
                source=row.where,
            )
        )
    return examples


def _read_cb(path: Path, split: str) -> list[SuperGLUEExample]:
    return _read_rte(path, split, task="cb")


def _read_boolq(path: Path, split: str) -> list[SuperGLUEExample]:
    examples = []
    convert = _bool_label(("false", "true"))
    for line_index, row in _rows(path, "boolq"):
        if "label" not in row.data and "idx" not in row.data and "answer" in row.data:
            # The original BoolQ layout: answer "True"/"False" (or a boolean), no idx.
            label, idx = row.label(convert, key="answer"), line_index
        else:
            label, idx = row.label(convert), _idx(row)
        examples.append(
            SuperGLUEExample(
                task="boolq",
                guid=f"{_SET_TYPES[split]}-{idx}",
                text_a=row.text("passage"),
                text_b=row.text("question"),
                label=label,
                idx=idx,
                source=row.where,
            )
        )
    return examples


def _read_wic(path: Path, split: str) -> list[SuperGLUEExample]:
    examples = []
    for _, row in _rows(path, "wic"):
        idx = _idx(row)
        if isinstance(idx, str):
            try:
                idx = int(idx)
            except ValueError:
                raise row.error(f'field "idx" should be an integer, got {_short(idx)}.') from None
        examples.append(
            SuperGLUEExample(
                task="wic",
                guid=f"{_SET_TYPES[split]}-{idx}",
                text_a=row.text("sentence1"),
                text_b=row.text("sentence2"),
                label=row.label(_bool_label(("false", "true"))),
                idx=idx,
                meta={"word": row.get("word", str)},
                source=row.where,
            )
        )
    return examples


def _read_copa(path: Path, split: str) -> list[SuperGLUEExample]:
    examples = []
    for _, row in _rows(path, "copa"):
        idx = _idx(row)
        question = row.get("question", str)
        if question not in ("cause", "effect"):
            raise row.error(f'field "question" should be "cause" or "effect", got {_short(question)}.')
        choices = [row.text(key, standardize=False) for key in ("choice1", "choice2")]
        for key, choice in zip(("choice1", "choice2"), choices, strict=True):
            if not choice:
                raise row.error(f'field "{key}" is empty.')
        examples.append(
            SuperGLUEExample(
                task="copa",
                guid=f"{_SET_TYPES[split]}-{idx}",
                text_a=row.text("premise", standardize=False),  # the original leaves COPA's texts as they are
                label=row.label(_exact),
                idx=idx,
                meta={"choice1": choices[0], "choice2": choices[1], "question": question},
                source=row.where,
            )
        )
    if split == "train":  # the original doubles the training set with the choices swapped
        examples += [
            SuperGLUEExample(
                task="copa",
                guid=example.guid + "m",
                text_a=example.text_a,
                label=None if example.label is None else 1 - example.label,
                idx=-1,
                meta={**example.meta, "choice1": example.meta["choice2"], "choice2": example.meta["choice1"]},
                source=example.source,
            )
            for example in list(examples)
        ]
    return examples


def _read_multirc(path: Path, split: str) -> list[SuperGLUEExample]:
    examples = []
    for _, row in _rows(path, "multirc"):
        passage_idx = _idx(row)
        passage = row.get("passage", dict)
        text = row.text("text", within=passage)
        for question_json in row.get("questions", list, within=passage):
            if not isinstance(question_json, dict):
                raise row.error('every entry of "passage.questions" should be an object.')
            question = row.text("question", within=question_json)
            question_idx = row.get("idx", (int, str), within=question_json)
            for answer_json in row.get("answers", list, within=question_json):
                if not isinstance(answer_json, dict):
                    raise row.error('every entry of "answers" should be an object.')
                answer_idx = row.get("idx", (int, str), within=answer_json)
                examples.append(
                    SuperGLUEExample(
                        task="multirc",
                        guid=f"{_SET_TYPES[split]}-p{passage_idx}-q{question_idx}-a{answer_idx}",
                        text_a=text,
                        text_b=question,
                        label=row.label(_exact, within=answer_json),
                        idx=[passage_idx, question_idx, answer_idx],
                        meta={
                            "passage_idx": passage_idx,
                            "question_idx": question_idx,
                            "answer_idx": answer_idx,
                            "answer": row.text("text", within=answer_json),
                        },
                        source=row.where,
                    )
                )
    return examples


def _read_record(path: Path, split: str, seed: int = 42) -> list[SuperGLUEExample]:
    examples = []
    shuffler = random.Random(seed)  # one generator for the whole file, as the original
    for _, row in _rows(path, "record"):
        idx = _idx(row)
        passage = row.get("passage", dict)
        raw_text = row.get("text", str, within=passage)
        entities = set()
        for entity_json in row.get("entities", list, within=passage):
            if not isinstance(entity_json, dict):
                raise row.error('every entry of "passage.entities" should be an object with "start" and "end".')
            start = row.get("start", int, within=entity_json)
            end = row.get("end", int, within=entity_json)
            if not 0 <= start <= end < len(raw_text):
                raise row.error(
                    f"entity span start={start}, end={end} (inclusive) is outside the passage "
                    f"({len(raw_text)} characters)."
                )
            entities.add(standardize_punctuation(raw_text[start : end + 1]))
        entities_sorted = sorted(entities)
        if not entities_sorted:
            raise row.error("the passage has no entities: ReCoRD's candidates are its entities.")
        text = standardize_punctuation(raw_text).replace("@highlight\n", "- ")
        for question_json in row.get("qas", list):
            if not isinstance(question_json, dict):
                raise row.error('every entry of "qas" should be an object.')
            query = row.text("query", within=question_json)
            if query.count("@placeholder") != 1:
                raise row.error(f'query {_short(query)} should contain "@placeholder" exactly once.')
            question_idx = row.get("idx", (int, str), within=question_json)
            answers_json = row.get("answers", list, within=question_json, required=False) or []
            answers = sorted({standardize_punctuation(row.get("text", str, within=answer)) for answer in answers_json})
            if split == "train":
                for answer_index, answer in enumerate(answers):
                    candidates = [entity for entity in entities_sorted if entity not in answers]
                    if len(candidates) > RECORD_MAX_TRAIN_CANDIDATES - 1:
                        shuffler.shuffle(candidates)
                        candidates = candidates[: RECORD_MAX_TRAIN_CANDIDATES - 1]
                    examples.append(
                        SuperGLUEExample(
                            task="record",
                            guid=f"{_SET_TYPES[split]}-p{idx}-q{question_idx}-a{answer_index}",
                            text_a=text,
                            text_b=query,
                            label="0",
                            idx=[idx, question_idx, answer_index],
                            meta={
                                "passage_idx": idx,
                                "question_idx": question_idx,
                                "candidates": [answer, *candidates],
                                "answers": [answer],
                            },
                            source=row.where,
                        )
                    )
            else:
                examples.append(
                    SuperGLUEExample(
                        task="record",
                        guid=f"{_SET_TYPES[split]}-p{idx}-q{question_idx}",
                        text_a=text,
                        text_b=query,
                        label="1",
                        idx=question_idx,
                        meta={
                            "passage_idx": idx,
                            "question_idx": question_idx,
                            "candidates": list(entities_sorted),
                            "answers": answers,
                        },
                        source=row.where,
                    )
                )
    return examples


def _wsc_repair_spans(row: _Row, text: str, meta: dict[str, Any]) -> str:
    """Fix the span indices as the original does (some official rows are off by one); returns the (re-split) text."""
    span1_index, span1_text = meta["span1_index"], meta["span1_text"]
    span2_index, span2_text = meta["span2_index"], meta["span2_text"]
    words = text.split()
    words_lower = text.lower().split()
    span1_words = span1_text.lower().split()
    if words_lower[span1_index : span1_index + len(span1_words)] != span1_words:
        for offset in (-1, +1):
            start = span1_index + offset
            if start >= 0 and words_lower[start : start + len(span1_words)] == span1_words:
                span1_index += offset
    if not 0 <= span2_index < len(words):
        raise row.error(f"span2_index {span2_index} is outside the text ({len(words)} words).")
    if words[span2_index] != span2_text:
        for offset in (-1, +1):
            if 0 <= span2_index + offset < len(words) and words[span2_index + offset] == span2_text:
                span2_index += offset
        word = words[span2_index]
        if word != span2_text and word.startswith(span2_text):  # e.g. "him." -> "him" "."
            words = words[:span2_index] + [word[: len(span2_text)], word[len(span2_text) :]] + words[span2_index + 1 :]
    if words[span2_index] != span2_text:
        raise row.error(
            f"span2_text {_short(span2_text)} is not at word {meta['span2_index']} (nor next to it) of the text; "
            f"found {_short(words[span2_index])}."
        )
    meta["span1_index"], meta["span2_index"] = span1_index, span2_index
    return " ".join(words)


def _read_wsc(path: Path, split: str, wsc_candidates: str = "siblings") -> list[SuperGLUEExample]:
    if wsc_candidates not in ("siblings", "none"):
        raise ValueError(f'wsc_candidates must be "siblings" or "none", got {wsc_candidates!r}.')
    parsed = []
    for _, row in _rows(path, "wsc"):
        target = row.get("target", dict)
        meta = {
            "span1_text": row.text("span1_text", within=target, standardize=False),
            "span2_text": row.text("span2_text", within=target, standardize=False),
            "span1_index": row.get("span1_index", int, within=target),
            "span2_index": row.get("span2_index", int, within=target),
        }
        raw_text = row.text("text")
        given = None
        if "candidates" in row.data:
            entries = row.get("candidates", list)
            if not all(isinstance(entry, dict) and isinstance(entry.get("text"), str) for entry in entries):
                raise row.error('field "candidates" should be a list of objects with a string "text".')
            given = list(dict.fromkeys(entry["text"] for entry in entries))  # first occurrence kept, as the original
        parsed.append((row, raw_text, meta, given))

    # Span-1 texts of the rows sharing a text and a pronoun: the referents the model must tell apart.
    siblings: dict[tuple[str, int], list[str]] = defaultdict(list)
    for _, raw_text, meta, _ in parsed:
        siblings[(raw_text, meta["span2_index"])].append(meta["span1_text"])

    examples = []
    for row, raw_text, meta, given in parsed:
        idx = _idx(row)
        label = row.label(_bool_label(("False", "True")))
        candidates = given
        if candidates is None and wsc_candidates == "siblings":
            own = meta["span1_text"].lower()
            candidates = []
            for text in siblings[(raw_text, meta["span2_index"])]:
                if text.lower() != own and text.lower() not in (seen.lower() for seen in candidates):
                    candidates.append(text)
        text = _wsc_repair_spans(row, raw_text, meta)
        if split == "train" and label != "True":
            continue  # the cloze model is trained on the right referent only
        guid = f"{_SET_TYPES[split]}-{idx}"
        groups = [candidates]
        if split == "train" and candidates and len(candidates) > WSC_CANDIDATE_GROUP:
            groups = []
            for start in range(0, len(candidates), WSC_CANDIDATE_GROUP):
                group = candidates[start : start + WSC_CANDIDATE_GROUP]
                group += candidates[: WSC_CANDIDATE_GROUP - len(group)]  # the last group is topped up from the start
                groups.append(group)
        for group in groups:
            example_meta = dict(meta)
            if group is not None:
                example_meta["candidates"] = list(group)
            examples.append(
                SuperGLUEExample(
                    task="wsc", guid=guid, text_a=text, label=label, idx=idx, meta=example_meta, source=row.where
                )
            )
    return examples


_READERS: dict[str, Callable[..., list[SuperGLUEExample]]] = {
    "boolq": _read_boolq,
    "cb": _read_cb,
    "copa": _read_copa,
    "multirc": _read_multirc,
    "record": _read_record,
    "rte": _read_rte,
    "wic": _read_wic,
    "wsc": _read_wsc,
}


def check_task(task: str) -> str:
    """The canonical (lower-case) task name, or a ValueError listing the tasks."""
    name = task.lower()
    if name not in TASKS:
        raise ValueError(f"Unknown SuperGLUE task {task!r}; expected one of {', '.join(TASKS)}.")
    return name


def read_examples(task: str, path: str | Path, split: str, **options: Any) -> list[SuperGLUEExample]:
    """The examples of one SuperGLUE jsonl file.

    Args:
        task: one of `TASKS` (case-insensitive).
        path: the jsonl file.
        split: "train", "val" (or "dev") or "test"; training splits are read as the original reads them for
            training (COPA mirrored, ReCoRD one example per answer, WSC positives only).
        options: `wsc_candidates` ("siblings" or "none") for WSC, `seed` (default 42) for ReCoRD.
    """
    task = check_task(task)
    split = "val" if split == "dev" else split
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    allowed = {"wsc": {"wsc_candidates"}, "record": {"seed"}}.get(task, set())
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"read_examples for {task} takes no option {', '.join(sorted(unknown))}.")
    path = Path(path)
    examples = _READERS[task](path, split, **options)
    if not examples:
        dropped = " (WSC training keeps only the rows labelled true)" if task == "wsc" and split == "train" else ""
        raise SuperGLUEDataError(
            f"{path} holds no {TASK_DIRS[task]} examples{dropped}: the file is empty or has only blank lines. Put the "
            f"{split} split's rows in it (one JSON object per line)."
        )
    if split != "test":
        unlabelled = next((example for example in examples if example.label is None), None)
        if unlabelled is not None and task != "record":  # ReCoRD's answers are its labels (checked by its reader)
            raise SuperGLUEDataError(
                f'{unlabelled.source}: no "label" (missing or null); every {split} row needs one to '
                f"{'train on' if split == 'train' else 'score'} (only test rows may go without)."
            )
    return examples


def read_split(task: str, data_dir: str | Path, split: str, **options: Any) -> list[SuperGLUEExample]:
    """`read_examples` of `data_dir/{train,val,test}.jsonl` (the official file names)."""
    split = "val" if split == "dev" else split
    if split not in SPLIT_FILES:
        raise ValueError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    return read_examples(task, Path(data_dir) / SPLIT_FILES[split], split, **options)


def strip_final_punctuation(text: str) -> str:
    """The text without trailing ASCII punctuation (the original's `remove_final_punc`)."""
    return text.rstrip(string.punctuation)


__all__ = [
    "SPLITS",
    "TASKS",
    "TASK_DIRS",
    "TASK_LABELS",
    "SuperGLUEDataError",
    "SuperGLUEExample",
    "check_task",
    "read_examples",
    "read_split",
    "standardize_punctuation",
]
