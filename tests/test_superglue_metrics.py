"""SuperGLUE metrics against hand-computed values, and prediction files (format, atomic writing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glm_hf.superglue import (
    SuperGLUEExample,
    accuracy,
    compute_task_metrics,
    f1_binary,
    f1_macro,
    multirc_exact_match,
    normalize_answer,
    predicted_labels,
    read_split,
    record_score,
    submission_records,
    write_predictions,
)
from glm_hf.superglue.metrics import answer_exact_match, answer_f1
from glm_hf.superglue.training import best_choices

HANDMADE = Path(__file__).parent / "fixtures" / "superglue_handmade"


def test_accuracy_and_binary_f1_by_hand() -> None:
    predictions, labels = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]
    assert accuracy(predictions, labels) == pytest.approx(60.0)
    # positives: tp 2 (0, 2), fp 1 (3), fn 1 (1) -> F1 = 4 / (4 + 1 + 1)
    assert f1_binary(predictions, labels) == pytest.approx(100 * 4 / 6)
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positive anywhere
    with pytest.raises(ValueError, match="pair up"):
        accuracy([1], [1, 0])


def test_cb_macro_f1_by_hand() -> None:
    labels = ["entailment", "entailment", "contradiction", "neutral", "neutral", "contradiction"]
    predictions = ["entailment", "contradiction", "contradiction", "neutral", "entailment", "neutral"]
    # entailment: tp 1, fp 1, fn 1 -> 1/2; contradiction: tp 1, fp 1, fn 1 -> 1/2; neutral: tp 1, fp 1, fn 1 -> 1/2
    assert f1_macro(predictions, labels) == pytest.approx(50.0)
    # A class only predicted counts with F1 0 (scikit-learn's union of labels).
    assert f1_macro(["a", "b"], ["a", "a"]) == pytest.approx(100 * (2 / 3 + 0) / 2)


def test_multirc_exact_match_by_hand() -> None:
    questions = ["q1", "q1", "q2", "q2", "q3"]
    labels = [1, 0, 1, 1, 0]
    predictions = [1, 0, 1, 0, 0]  # q1 right, q2 wrong, q3 right
    assert multirc_exact_match(predictions, labels, questions) == pytest.approx(100 * 2 / 3)


def test_record_answer_normalisation_and_scores_by_hand() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("Zoë  Ålesund") == "zoe alesund"
    assert answer_exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
    # tokens: [tower, of, london] vs [london, bridge]: one shared, P = 1/3, R = 1/2 -> F1 = 0.4
    assert answer_f1("Tower of London", "London Bridge") == pytest.approx(0.4)
    predictions = ["Tower of London", "Paris"]
    answers = [["London Bridge", "the tower of london"], ["Rome"]]
    assert record_score(predictions, answers, answer_exact_match) == pytest.approx(50.0)
    assert record_score(predictions, answers, answer_f1) == pytest.approx(50.0)
    assert record_score(["x"], [[]], answer_f1) == 0.0


def test_task_metrics_from_chosen_candidates() -> None:
    examples = read_split("multirc", HANDMADE / "MultiRC", "val")  # labels 1 0 1 0 1 0, questions (0,0) (0,1) (1,2)
    labels = predicted_labels("multirc", examples, [1, 0, 1, 1, 0, 0])
    scores = compute_task_metrics("multirc", examples, labels)
    assert list(scores) == ["f1a", "em", "accuracy"]
    # tp 2, fp 1, fn 1 -> F1a 2/3; questions right: (0,0) only -> EM 1/3; accuracy 4/6
    assert scores == pytest.approx({"f1a": 100 * 2 / 3, "em": 100 / 3, "accuracy": 100 * 4 / 6})

    record = read_split("record", HANDMADE / "ReCoRD", "val")
    chosen = [record[0].meta["candidates"].index("NASA"), record[1].meta["candidates"].index("Madrid")]
    assert compute_task_metrics("record", record, predicted_labels("record", record, chosen)) == {
        "em": 50.0,
        "f1": 50.0,
    }

    wsc = [SuperGLUEExample("wsc", "a", "t", label="True"), SuperGLUEExample("wsc", "b", "t", label="False")]
    # WSC: "True" exactly when candidate 0 (span 1) wins.
    assert predicted_labels("wsc", wsc, [0, 2]) == ["True", "False"]
    assert compute_task_metrics("wsc", wsc, ["True", "True"]) == {"accuracy": 50.0}
    unlabeled = [SuperGLUEExample("rte", "x", "t", "h")]
    assert compute_task_metrics("rte", unlabeled, ["entailment"]) == {}


def test_best_choice_ignores_padded_candidates() -> None:
    # Trainer pads the scores of examples with fewer candidates with -100; a real score can be lower.
    scores = np.array([[-150.0, -120.0, -100.0], [-3.0, -1.0, -2.0]])
    assert best_choices(scores, [2, 3]) == [1, 1]


def test_submission_format_per_task() -> None:
    rte = [SuperGLUEExample("rte", "dev-7", "p", "h", idx=7)]
    assert submission_records("rte", rte, ["not_entailment"]) == [{"idx": 7, "label": "not_entailment"}]
    multirc = read_split("multirc", HANDMADE / "MultiRC", "val")
    records = submission_records("multirc", multirc, [1, 0, 1, 0, 1, 1])
    assert records == [
        {
            "idx": 0,
            "passage": {
                "questions": [
                    {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
                    {"idx": 1, "answers": [{"idx": 2, "label": 1}, {"idx": 3, "label": 0}]},
                ]
            },
        },
        {
            "idx": 1,
            "passage": {"questions": [{"idx": 2, "answers": [{"idx": 4, "label": 1}, {"idx": 5, "label": 1}]}]},
        },
    ]
    record = read_split("record", HANDMADE / "ReCoRD", "val")
    assert submission_records("record", record, ["NASA", "Granada"]) == [
        {"idx": 20, "label": "NASA"},
        {"idx": 21, "label": "Granada"},
    ]


def test_prediction_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    examples = [SuperGLUEExample("rte", f"dev-{i}", "p", "h", idx=i) for i in range(3)]
    path = write_predictions("rte", examples, ["entailment", "not_entailment", "entailment"], tmp_path)
    assert path == tmp_path / "RTE.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"idx": 0, "label": "entailment"},
        {"idx": 1, "label": "not_entailment"},
        {"idx": 2, "label": "entailment"},
    ]
    before = path.read_bytes()
    # A value that cannot be written as JSON fails at the third record: the old file stays, no partial file.
    with pytest.raises(TypeError):
        write_predictions("rte", examples, ["entailment", "entailment", object()], path)
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["RTE.jsonl"]
    fresh = tmp_path / "new" / "RTE.jsonl"
    with pytest.raises(TypeError):
        write_predictions("rte", examples, ["entailment", "entailment", object()], fresh)
    assert not fresh.exists() and list(fresh.parent.iterdir()) == []
