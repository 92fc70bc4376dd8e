"""Prediction files in the SuperGLUE submission format, written atomically.

One JSON object per line, as the original's `output_prediction` writes them: `{"idx": ..., "label": ...}` with the
task's label names ("entailment", "true", "True", ...; COPA 0/1; ReCoRD the chosen entity text), except MultiRC,
which nests the answers of each question under its passage:
`{"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a, "label": 0 or 1}, ...]}, ...]}}`.
The file is written to a temporary file beside the destination and renamed over it only when complete, so a failure
leaves no partial file and an existing file untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..infill_cli import write_jsonl
from .readers import TASK_DIRS, SuperGLUEExample, check_task


def submission_records(task: str, examples: Sequence[SuperGLUEExample], labels: Sequence[Any]) -> list[dict[str, Any]]:
    """The submission records of predicted labels (from `metrics.predicted_labels`), one per example (MultiRC: one
    per passage)."""
    task = check_task(task)
    if len(examples) != len(labels):
        raise ValueError(f"Got {len(labels)} predictions for {len(examples)} examples; they must pair up.")
    if task != "multirc":
        return [{"idx": example.idx, "label": label} for example, label in zip(examples, labels, strict=True)]
    passages: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
    for example, label in zip(examples, labels, strict=True):
        questions = passages.setdefault(_key(example.meta["passage_idx"]), {})
        answers = questions.setdefault(_key(example.meta["question_idx"]), [])
        answers.append({"idx": example.meta["answer_idx"], "label": label})
    return [
        {
            "idx": passage_idx,
            "passage": {"questions": [{"idx": q, "answers": answers} for q, answers in questions.items()]},
        }
        for passage_idx, questions in passages.items()
    ]


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def write_predictions(
    task: str, examples: Sequence[SuperGLUEExample], labels: Sequence[Any], path: str | os.PathLike[str]
) -> Path:
    """Write the submission file of predicted labels atomically; `path` may be a folder (then the file is
    `<folder>/<Task>.jsonl`, the name the SuperGLUE server expects). Returns the file written."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{TASK_DIRS[check_task(task)]}.jsonl"
    write_jsonl(path, submission_records(task, examples, labels))
    return path


__all__ = ["submission_records", "write_predictions"]
