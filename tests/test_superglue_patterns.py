"""SuperGLUE cloze inputs equal the ORIGINAL GLM's (`tasks/superglue/dataset.py` readers + `pvp.py` patterns).

The fixture `fixtures/original_superglue_patterns.json.gz` holds, for real examples of RTE, BoolQ, WiC and WSC (shared
assets) and hand-written ones of CB, COPA, MultiRC, ReCoRD and WSC (`fixtures/superglue_handmade/`), what the
original code builds for every pattern id, single- and multi-token, at the released and a short maximum length, with
the BERT and GPT-2 tokenizers (see `fixtures/make_original_superglue_patterns.py`). Here the same files go through
`glm_hf.superglue` (reader, pattern, `encode_example`) and every row must be equal.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import glm_hf
from glm_hf.cloze import IGNORE_INDEX
from glm_hf.superglue import encode_example, get_pvp, read_examples
from glm_hf.superglue.readers import SuperGLUEExample

from conftest import ASSETS

FIXTURES = Path(__file__).parent / "fixtures"
HANDMADE = FIXTURES / "superglue_handmade"
ORIGINAL = json.loads(gzip.decompress((FIXTURES / "original_superglue_patterns.json.gz").read_bytes()))
VOCAB_FILES = {"bert-base-uncased": ["bert-base-uncased-vocab.txt"], "gpt2": ["gpt2-vocab.json", "gpt2-merges.txt"]}
TASKS = sorted({case["task"] for case in ORIGINAL["cases"]})


def _assets_available(case: dict[str, Any]) -> bool:
    kind, relative = case["data"].split(":", 1)
    files = VOCAB_FILES[case["family"]] + ([] if kind == "handmade" else [relative])
    return all((ASSETS / name).is_file() for name in files)


@cache
def tokenizer_and_config(family: str) -> tuple[Any, glm_hf.GLMConfig]:
    tokenizer = glm_hf.build_tokenizer(family, ASSETS)
    config = glm_hf.GLMConfig(
        vocab_size=len(tokenizer), max_position_embeddings=1025, **glm_hf.FAMILY_TOKEN_IDS[family]
    )
    return tokenizer, config


@cache
def examples_by_guid(task: str, data: str, split: str) -> dict[str, list[SuperGLUEExample]]:
    kind, relative = data.split(":", 1)
    path = HANDMADE / relative if kind == "handmade" else ASSETS / relative
    options = {}
    if task == "wsc":  # the original saw candidates only in the handmade file and the "siblings" variant
        options["wsc_candidates"] = "siblings" if kind == "wsc-siblings" else "none"
    grouped: dict[str, list[SuperGLUEExample]] = {}
    for example in read_examples(task, path, "val" if split == "dev" else split, **options):
        grouped.setdefault(example.guid, []).append(example)
    return grouped


def _compare(case: dict[str, Any]) -> list[str]:
    """Mismatches between our features and the original's for one fixture case (empty when equal)."""
    tokenizer, config = tokenizer_and_config(case["family"])
    pvp = get_pvp(case["task"], case["pattern_id"])
    split = "val" if case["split"] == "dev" else case["split"]
    grouped = examples_by_guid(case["task"], case["data"], case["split"])
    taken: dict[str, int] = {}
    problems = []
    for sample in case["samples"]:
        guid = sample["guid"]
        examples = grouped.get(guid, [])
        if taken.get(guid, 0) >= len(examples):
            problems.append(f"{guid}: not read (we read {len(examples)} examples with this guid)")
            continue
        example = examples[taken.get(guid, 0)]
        taken[guid] = taken.get(guid, 0) + 1
        where = f"{guid} ({case['family']}, pattern {case['pattern_id']}, max_length {case['max_length']})"
        if "error" in sample:
            try:
                encode_example(example, pvp, tokenizer, config, case["max_length"], case["multi_token"], split)
            except ValueError:
                continue
            problems.append(f"{where}: the original fails ({sample['error']}), we encoded it")
            continue
        ours = encode_example(example, pvp, tokenizer, config, case["max_length"], case["multi_token"], split)
        # Our `labels` is the loss target; for WSC and ReCoRD evaluation examples the original's label is the
        # True/False (resp. "1") task label, which lives in the example, not in the features.
        if not (case["split"] == "dev" and case["task"] in ("wsc", "record")) and ours["labels"] != sample["label"]:
            problems.append(f"{where}: label {ours['labels']} != {sample['label']}")
        rows = sample["rows"]
        if case["multi_token"]:
            ours_rows = [
                {key: ours[key][index] for key in ("input_ids", "position_ids", "block_position_ids", "target_ids")}
                | {"prefix_length": ours["prefix_length"][index]}
                for index in range(len(ours["input_ids"]))
            ]
        else:
            ours_rows = [ours]
            if ours["verbalizer_ids"] != sample["verbalizer_ids"]:
                problems.append(f"{where}: verbalizer ids {ours['verbalizer_ids']} != {sample['verbalizer_ids']}")
            if ours["mask_positions"] != rows[0]["loss_mask"].index(1):
                problems.append(f"{where}: read at column {ours['mask_positions']}, the original at its loss mask")
        if len(ours_rows) != len(rows):
            problems.append(f"{where}: {len(ours_rows)} candidate rows, the original {len(rows)}")
            continue
        for index, (mine, theirs) in enumerate(zip(ours_rows, rows, strict=True)):
            checks = {
                "input_ids": theirs["ids"],
                "position_ids": theirs["position_ids"],
                "block_position_ids": theirs["block_position_ids"],
                "prefix_length": theirs["sep"],
            }
            if case["multi_token"]:
                checks["target_ids"] = [
                    target if keep else IGNORE_INDEX
                    for target, keep in zip(theirs["target_ids"], theirs["loss_mask"], strict=True)
                ]
            for key, expected in checks.items():
                if mine[key] != expected:
                    problems.append(f"{where} row {index}: {key} {mine[key]} != original {expected}")
    return problems


@pytest.mark.parametrize("task", TASKS)
def test_cloze_inputs_equal_the_original_for_every_pattern(task: str) -> None:
    cases = [case for case in ORIGINAL["cases"] if case["task"] == task]
    runnable = [case for case in cases if _assets_available(case)]
    if not runnable:
        pytest.skip(f"the shared assets ({ASSETS}) with the {task} data and vocabularies are not available")
    problems = [problem for case in runnable for problem in _compare(case)]
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:10])
    # Every pattern id of the original was compared, single- and multi-token where the task has both.
    assert {case["pattern_id"] for case in runnable} == set(get_pvp(task).pattern_ids)
    assert sum(len(case["samples"]) for case in runnable) > 0


def test_fixture_inputs_are_the_files_read_here() -> None:
    """The handmade files (and the shared assets, when present) are those the fixture was made from."""
    for relative, digest in ORIGINAL["files_sha256"]["handmade"].items():
        assert hashlib.sha256((HANDMADE / relative).read_bytes()).hexdigest() == digest, relative
    present = {r: d for r, d in ORIGINAL["files_sha256"]["assets"].items() if (ASSETS / r).is_file()}
    if not present:
        pytest.skip(f"the shared assets ({ASSETS}) are not available")
    for relative, digest in present.items():
        assert hashlib.sha256((ASSETS / relative).read_bytes()).hexdigest() == digest, relative


def test_patterns_cover_all_eight_tasks() -> None:
    assert set(TASKS) == {"boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"}
