"""SuperGLUE metrics, computed locally (no download), as the original `tasks/eval_utils.py` / `superglue/evaluate.py`.

All scores are percentages (0-100): accuracy; macro F1 (CB, over the labels that occur in the gold or predicted
labels, as scikit-learn's `f1_score(average="macro")`); MultiRC's F1a (binary F1 of the "true" answers over all
answers) and EM (the share of questions whose answers are all right); ReCoRD's EM and token F1 of the chosen entity
against the best-matching gold answer (answers normalised as the original: lower case, ASCII-folded, punctuation and
articles removed, whitespace squeezed; ASCII folding uses `unidecode` when it is installed, as the original, else
Unicode decomposition without the accents).

A model's output for an example is the index of its best candidate; `predicted_labels` turns those indices into the
task's labels (WSC: "True" when span 1, candidate 0, beats every other candidate, as the original evaluates it).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .readers import TASK_LABELS, SuperGLUEExample, check_task

# The metrics of each task, the first one choosing the best epoch (as the original's `DEFAULT_METRICS`).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "boolq": ("accuracy",),
    "cb": ("accuracy", "f1_macro"),
    "copa": ("accuracy",),
    "multirc": ("f1a", "em", "accuracy"),
    "record": ("em", "f1"),
    "rte": ("accuracy",),
    "wic": ("accuracy",),
    "wsc": ("accuracy",),
}


def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Percentage of predictions equal to their label."""
    _check_lengths(predictions, labels)
    return 100.0 * sum(p == g for p, g in zip(predictions, labels, strict=True)) / max(len(labels), 1)


def _f1(true_positive: int, false_positive: int, false_negative: int) -> float:
    denominator = 2 * true_positive + false_positive + false_negative
    return 0.0 if denominator == 0 else 2 * true_positive / denominator


def f1_binary(predictions: Sequence[Any], labels: Sequence[Any], positive: Any = 1) -> float:
    """F1 (percentage) of the `positive` class; 0 when it is neither predicted nor gold."""
    _check_lengths(predictions, labels)
    tp = sum(p == positive and g == positive for p, g in zip(predictions, labels, strict=True))
    fp = sum(p == positive and g != positive for p, g in zip(predictions, labels, strict=True))
    fn = sum(p != positive and g == positive for p, g in zip(predictions, labels, strict=True))
    return 100.0 * _f1(tp, fp, fn)


def f1_macro(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Unweighted mean of the per-class F1 over the classes in `labels` or `predictions` (percentage)."""
    _check_lengths(predictions, labels)
    classes = sorted(set(labels) | set(predictions), key=repr)
    if not classes:
        return 0.0
    return sum(f1_binary(predictions, labels, positive=name) for name in classes) / len(classes)


def multirc_exact_match(predictions: Sequence[Any], labels: Sequence[Any], questions: Sequence[Any]) -> float:
    """Percentage of questions (keys in `questions`, one per answer) whose answers are all predicted right."""
    _check_lengths(predictions, labels)
    _check_lengths(predictions, questions)
    right: dict[Any, bool] = defaultdict(lambda: True)
    for prediction, label, question in zip(predictions, labels, questions, strict=True):
        right[question] &= prediction == label
    return 100.0 * sum(right.values()) / max(len(right), 1)


def _ascii_fold(text: str) -> str:
    try:
        from unidecode import unidecode  # what the original uses
    except ImportError:
        return "".join(char for char in unicodedata.normalize("NFKD", text) if not unicodedata.combining(char))
    return unidecode(text)


def normalize_answer(text: str) -> str:
    """ReCoRD/SQuAD answer normalisation of the original: lower, ASCII-fold, drop punctuation and articles."""
    text = _ascii_fold(text.lower())
    text = "".join(char for char in text if char not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def answer_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 (0-1) of two answers after normalisation."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def record_score(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], metric: Callable[[str, str], float]
) -> float:
    """Mean over queries of the best `metric` against any gold answer (a query without answers scores 0), in %."""
    _check_lengths(predictions, answers)
    total = sum(max((metric(p, a) for a in golds), default=0.0) for p, golds in zip(predictions, answers, strict=True))
    return 100.0 * total / max(len(predictions), 1)


def predicted_labels(task: str, examples: Sequence[SuperGLUEExample], choices: Sequence[int]) -> list[Any]:
    """The task labels of the chosen candidates: label names, COPA's/MultiRC's 0/1, ReCoRD's entity texts, WSC's
    "True" (span 1 won) / "False"."""
    task = check_task(task)
    _check_lengths(examples, choices)
    if task == "record":
        return [example.meta["candidates"][int(choice)] for example, choice in zip(examples, choices, strict=True)]
    if task == "wsc":
        return ["True" if int(choice) == 0 else "False" for choice in choices]
    return [TASK_LABELS[task][int(choice)] for choice in choices]


def compute_task_metrics(
    task: str, examples: Sequence[SuperGLUEExample], predictions: Sequence[Any]
) -> dict[str, float]:
    """The task's metrics (`TASK_METRICS`) of predicted labels (from `predicted_labels`) against the examples'.

    Returns {} when an example has no gold label (a test split).
    """
    task = check_task(task)
    _check_lengths(examples, predictions)
    if task == "record":
        if any(not example.meta.get("answers") for example in examples):
            return {}
        answers = [example.meta["answers"] for example in examples]
        return {
            "em": record_score(predictions, answers, answer_exact_match),
            "f1": record_score(predictions, answers, answer_f1),
        }
    labels = [example.label for example in examples]
    if any(label is None for label in labels):
        return {}
    scores = {"accuracy": accuracy(predictions, labels)}
    if task == "cb":
        scores["f1_macro"] = f1_macro(predictions, labels)
    if task == "multirc":
        questions = [(example.meta["passage_idx"], example.meta["question_idx"]) for example in examples]
        scores["f1a"] = f1_binary(predictions, labels, positive=1)
        scores["em"] = multirc_exact_match(predictions, labels, questions)
    return {name: scores[name] for name in TASK_METRICS[task]}


def _check_lengths(first: Sequence[Any], second: Sequence[Any]) -> None:
    if len(first) != len(second):
        raise ValueError(f"Got {len(first)} predictions for {len(second)} labels/examples; they must pair up.")


__all__ = [
    "TASK_METRICS",
    "accuracy",
    "answer_exact_match",
    "answer_f1",
    "compute_task_metrics",
    "f1_binary",
    "f1_macro",
    "multirc_exact_match",
    "normalize_answer",
    "predicted_labels",
    "record_score",
]
