"""SuperGLUE readers: real files read as the original reads them, and bad rows rejected with file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm_hf.superglue import SuperGLUEDataError, read_examples, read_split

from conftest import ASSETS

HANDMADE = Path(__file__).parent / "fixtures" / "superglue_handmade"
SUPERGLUE = ASSETS / "superglue"
needs_assets = pytest.mark.skipif(
    not (SUPERGLUE / "RTE" / "train.jsonl").is_file(), reason=f"shared SuperGLUE assets not found in {SUPERGLUE}"
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


RTE_ROW = {"premise": "A cat sat.", "hypothesis": "A cat sits.", "label": "entailment", "idx": 0}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"premise": "A", "hypothesis": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"premise": "A", "label": "entailment", "idx": 3}), 'missing field "hypothesis"'),
        (json.dumps({**RTE_ROW, "label": "maybe"}), 'label "maybe" is not one of the RTE labels'),
        (json.dumps({**RTE_ROW, "premise": 5}), 'field "premise" should be str'),
    ],
)
def test_bad_rte_rows_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(RTE_ROW), "", line])
    with pytest.raises(SuperGLUEDataError) as error:
        read_examples("rte", path, "train")
    assert f"{path}:3:" in str(error.value)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("task", "row", "expected"),
    [
        ("boolq", {"question": "q", "passage": "p", "label": "yes", "idx": 0}, 'label "yes"'),
        ("wsc", {"text": "He ran.", "target": {"span1_text": "x", "span2_text": "He", "span1_index": 0}, "idx": 0},
         'missing field "span2_index"'),
        ("wsc", {"text": "A dog saw it .", "label": True, "idx": 0,
                 "target": {"span1_text": "dog", "span2_text": "she", "span1_index": 1, "span2_index": 3}},
         'span2_text "she" is not at word 3'),
        ("copa", {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0, "idx": 0},
         '"question" should be "cause" or "effect"'),
        ("copa", {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2, "idx": 0},
         "label 2 is not one of the COPA labels"),
        ("cb", {"premise": "p", "hypothesis": "h", "label": "not_entailment", "idx": 0}, "not one of the CB labels"),
        ("multirc", {"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0,
                     "answers": [{"text": "a", "idx": 0, "label": True}]}]}}, "not one of the MultiRC labels"),
        ("record", {"idx": 0, "passage": {"text": "Ann met Bo.", "entities": [{"start": 8, "end": 20}]}, "qas": []},
         "outside the passage"),
        ("record", {"idx": 0, "passage": {"text": "Ann met Bo.", "entities": [{"start": 0, "end": 2}]},
                    "qas": [{"query": "no blank here", "idx": 0, "answers": []}]}, "@placeholder"),
        ("wic", {"word": "w", "sentence1": "a", "sentence2": "b", "label": "maybe", "idx": 0}, 'label "maybe"'),
    ],
)  # fmt: skip
def test_bad_rows_of_every_task_name_file_and_line(tmp_path: Path, task: str, row: dict, expected: str) -> None:
    path = write_lines(tmp_path / "val.jsonl", [json.dumps(row)])
    with pytest.raises(SuperGLUEDataError) as error:
        read_examples(task, path, "val")
    assert f"{path}:1:" in str(error.value)
    assert expected in str(error.value)


def test_missing_file_and_unknown_task_or_split_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="RTE"):
        read_split("rte", tmp_path, "train")
    with pytest.raises(ValueError, match="Unknown SuperGLUE task 'sst2'"):
        read_examples("sst2", tmp_path / "x.jsonl", "train")
    with pytest.raises(ValueError, match="Unknown split 'validation'"):
        read_examples("rte", tmp_path / "x.jsonl", "validation")


@needs_assets
def test_real_rte_and_wic_files_read_completely() -> None:
    train = read_split("rte", SUPERGLUE / "RTE", "train")
    val = read_split("rte", SUPERGLUE / "RTE", "val")
    assert len(train) == 2490 and len(val) == 277
    assert sum(example.label == "entailment" for example in val) == 146
    assert val[0].guid == "dev-0" and val[0].source.endswith("val.jsonl:1")
    wic = read_split("wic", SUPERGLUE / "WiC", "train")
    assert [example.label for example in wic] == ["false", "false", "false"]
    assert wic[0].meta["word"] == "carry"


@needs_assets
def test_boolq_original_layout_reads_labels_from_answer_and_idx_from_line() -> None:
    examples = read_examples("boolq", SUPERGLUE / "BoolQ" / "dev.jsonl", "val")
    assert len(examples) == 3270
    assert sum(example.label == "true" for example in examples) == 2033
    assert [example.idx for example in examples[:3]] == [0, 1, 2]
    assert examples[0].label == "false"  # the first line's answer is "False"


@needs_assets
def test_wsc_training_keeps_positives_and_siblings_give_candidates() -> None:
    train = read_split("wsc", SUPERGLUE / "WSC", "train")
    assert len(train) == 259 and all(example.label == "True" for example in train)
    rows = {row["idx"]: row for row in map(json.loads, (SUPERGLUE / "WSC" / "train.jsonl").read_text().splitlines())}
    for example in train:
        row = rows[example.idx]
        key = (row["text"], row["target"]["span2_index"])
        others = {
            other["target"]["span1_text"].lower()
            for other in rows.values()
            if (other["text"], other["target"]["span2_index"]) == key
        } - {row["target"]["span1_text"].lower()}
        assert {candidate.lower() for candidate in example.meta["candidates"]} == others
    val = read_split("wsc", SUPERGLUE / "WSC", "val")
    assert len(val) == 104
    assert sum(bool(example.meta["candidates"]) for example in val) == 89  # rows sharing text and pronoun
    none = read_split("wsc", SUPERGLUE / "WSC", "val", wsc_candidates="none")
    assert all("candidates" not in example.meta for example in none)


def test_copa_training_split_is_mirrored() -> None:
    train = read_split("copa", HANDMADE / "COPA", "train")
    assert len(train) == 6
    first, mirror = train[0], train[3]
    assert mirror.guid == first.guid + "m" and mirror.label == 1 - first.label
    assert (mirror.meta["choice1"], mirror.meta["choice2"]) == (first.meta["choice2"], first.meta["choice1"])
    assert len(read_split("copa", HANDMADE / "COPA", "val")) == 2


def test_record_candidates_are_sorted_entities_and_training_caps_them() -> None:
    val = read_split("record", HANDMADE / "ReCoRD", "val")
    assert [example.idx for example in val] == [20, 21]
    assert val[0].meta["candidates"] == sorted(val[0].meta["candidates"])
    assert val[0].meta["answers"] == ["NASA"] and "NASA" in val[0].meta["candidates"]
    assert "@highlight" not in val[0].text_a and "\n- " in val[0].text_a
    train = read_split("record", HANDMADE / "ReCoRD", "train")
    assert [example.meta["candidates"][0] for example in train] == ["Jonas", "Tromsø", "Yorkshire"]
    assert [len(example.meta["candidates"]) for example in train] == [10, 10, 4]  # 11 entities: capped at 10
    assert train[0].meta["candidates"][1:] != train[1].meta["candidates"][1:]  # one shuffle per answer
    # Curly quotes are standardised in passages and entities.
    assert '"Green Valley"' in train[2].text_a


def test_multirc_is_flattened_per_answer() -> None:
    val = read_split("multirc", HANDMADE / "MultiRC", "val")
    assert [example.idx for example in val] == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3], [1, 2, 4], [1, 2, 5]]
    assert [example.label for example in val] == [1, 0, 1, 0, 1, 0]
    assert val[0].guid == "dev-p0-q0-a0" and val[0].meta["answer"] == "Rye bread"


def test_wsc_span_repairs_and_candidate_groups() -> None:
    train = read_split("wsc", HANDMADE / "WSC", "train")
    # The row with 12 candidates is split into two groups of 9 (the second topped up from the start).
    assert [len(example.meta["candidates"]) for example in train] == [2, 9, 9]
    assert train[0].meta["span2_index"] == 10  # given as 11: repaired as the original does
    val = read_split("wsc", HANDMADE / "WSC", "val")
    assert val[1].text_a.split()[6:8] == ["him", ","]  # "him," split so that the pronoun is a word
