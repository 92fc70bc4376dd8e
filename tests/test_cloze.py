"""Cloze scoring: `build_cloze_inputs` equals the ORIGINAL `build_input_from_ids`, and `score_candidates` is exact.

The fixture `fixtures/original_cloze_inputs.json` holds the original function's outputs (written by
`fixtures/make_original_cloze_inputs.py`, which runs the unchanged original on BERT and GPT-2 family ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glm_hf import GLMConfig, GLMForConditionalGeneration
from glm_hf.cloze import build_cloze_inputs, score_candidates

FIXTURE = Path(__file__).parent / "fixtures" / "original_cloze_inputs.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["cases"]


def family_config(case: dict[str, Any]) -> GLMConfig:
    return GLMConfig(vocab_size=50304, **case["token_ids"])


def build(case: dict[str, Any], **overrides: Any) -> dict[str, torch.Tensor]:
    kwargs: dict[str, Any] = {
        "text_b_ids": case["text_b"],
        "max_length": case["max_seq_length"],
        "add_cls": case["add_cls"],
        "add_sep": case["add_sep"],
        "add_eos": case["add_eos"],
        "mask_id": case["mask_id"],
        **overrides,
    }
    return build_cloze_inputs(family_config(case), case["text_a"], case["answers"], **kwargs)


def expected_kind(case: dict[str, Any]) -> str:
    if any("error" in result for result in case["original"]):
        return "no_mask"
    if any(result["length"] > case["max_seq_length"] for result in case["original"]):
        return "overflow"
    return "ok"


def test_fixture_covers_the_cases() -> None:
    kinds = [expected_kind(case) for case in CASES]
    assert len(CASES) >= 12 and kinds.count("no_mask") == 1 and kinds.count("overflow") == 1
    assert {case["token_ids"]["sop_token_id"] for case in CASES} == {30522, 50257}


@pytest.mark.parametrize("case", [c for c in CASES if expected_kind(c) == "ok"], ids=lambda c: c["name"])
def test_equals_original_padded_to_max_seq_length(case: dict[str, Any]) -> None:
    """With `pad_to=max_seq_length` every column equals the original's padded output."""
    inputs = build(case, pad_to=case["max_seq_length"])
    for row, original in enumerate(case["original"]):
        labels = [t if m else -100 for t, m in zip(original["target_ids"], original["loss_masks"], strict=True)]
        assert inputs["input_ids"][row].tolist() == original["ids"]
        assert inputs["position_ids"][row].tolist() == original["position_ids"]
        assert inputs["block_position_ids"][row].tolist() == original["block_position_ids"]
        assert inputs["prefix_length"][row].item() == original["sep"]
        assert inputs["labels"][row].tolist() == labels
        assert inputs["attention_mask"][row].tolist() == original["paddings"]


@pytest.mark.parametrize("case", [c for c in CASES if expected_kind(c) == "ok"], ids=lambda c: c["name"])
def test_equals_original_unpadded_and_padding_convention(case: dict[str, Any]) -> None:
    """Padded to the longest candidate: the real columns equal the original's, the pad columns follow its rule."""
    inputs = build(case)
    lengths = [original["length"] for original in case["original"]]
    assert inputs["input_ids"].shape == (len(case["answers"]), max(lengths))
    eos = case["token_ids"]["eos_token_id"]
    for row, (original, length) in enumerate(zip(case["original"], lengths, strict=True)):
        real = slice(0, length)
        assert inputs["input_ids"][row, real].tolist() == original["ids"][real]
        assert inputs["position_ids"][row, real].tolist() == original["position_ids"][real]
        assert inputs["block_position_ids"][row, real].tolist() == original["block_position_ids"][real]
        targets = original["target_ids"][real]
        masks = original["loss_masks"][real]
        assert inputs["labels"][row, real].tolist() == [t if m else -100 for t, m in zip(targets, masks, strict=True)]
        assert inputs["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        pad = slice(length, None)
        assert set(inputs["input_ids"][row, pad].tolist()) <= {eos}
        assert set(inputs["position_ids"][row, pad].tolist()) <= {0}
        assert set(inputs["block_position_ids"][row, pad].tolist()) <= {0}
        assert set(inputs["labels"][row, pad].tolist()) <= {-100}
        # The last target is the answer's last token, and there is one target per answer token.
        answer = case["answers"][row]
        assert inputs["labels"][row, length - 1].item() == answer[-1]
        assert (inputs["labels"][row] != -100).sum().item() == len(answer)
    assert inputs["prefix_length"].tolist() == [original["sep"] for original in case["original"]]


@pytest.mark.parametrize("case", [c for c in CASES if expected_kind(c) == "no_mask"], ids=lambda c: c["name"])
def test_mask_cut_away_raises_where_the_original_asserts(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"No mask token \(id 103\).*max_length=8"):
        build(case)


@pytest.mark.parametrize("case", [c for c in CASES if expected_kind(c) == "overflow"], ids=lambda c: c["name"])
def test_row_past_max_length_raises_where_the_original_returns_it_unpadded(case: dict[str, Any]) -> None:
    length = case["original"][0]["length"]
    with pytest.raises(ValueError, match=rf"{length} tokens .*max_length={case['max_seq_length']}"):
        build(case)
    # Without a max_length nothing is cut: Part A keeps all its tokens.
    inputs = build(case, max_length=None)
    assert inputs["prefix_length"][0].item() == 1 + len(case["text_a"]) + len(case["text_b"]) + 1


def tiny_config() -> GLMConfig:
    return GLMConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=65,
        pad_token_id=0, eos_token_id=0, bos_token_id=1, cls_token_id=1, sep_token_id=2, mask_token_id=3,
        unk_token_id=4, sop_token_id=5, eop_token_id=6, initializer_range=0.3,
    )  # fmt: skip


def test_errors_are_clear() -> None:
    config = tiny_config()
    with pytest.raises(ValueError, match=r"No mask token \(id 3\)"):
        build_cloze_inputs(config, [10, 11, 12], [[20, 6]])
    with pytest.raises(ValueError, match="answer 1 is empty"):
        build_cloze_inputs(config, [10, 3, 12], [[20, 6], []])
    with pytest.raises(ValueError, match="answers_ids is empty"):
        build_cloze_inputs(config, [10, 3, 12], [])
    with pytest.raises(ValueError, match=r"12 tokens .*max_length=10"):
        build_cloze_inputs(config, [10, 3, 12], [[20, 21, 22, 23, 24, 25, 26]], max_length=10)
    with pytest.raises(ValueError, match=r"67 tokens .*max_position_embeddings=65"):
        build_cloze_inputs(config, [10, 3, *range(7, 67)], [[20, 21, 6]])
    with pytest.raises(ValueError, match=r"pad_to=5 is shorter than the longest candidate row \(7 tokens\)"):
        build_cloze_inputs(config, [10, 3, 12], [[20, 6]], pad_to=5)
    with pytest.raises(ValueError, match="sop_token_id is not set"):
        build_cloze_inputs(GLMConfig(sop_token_id=None), [10, 103, 12], [[20]])


def test_mask_id_and_text_b() -> None:
    """A custom mask id, text B after [SEP], and the last of several masks."""
    config = tiny_config()
    inputs = build_cloze_inputs(config, [3, 10], [[20, 21, 6]], text_b_ids=[11, 3, 12], add_sep=True)
    assert inputs["input_ids"][0].tolist() == [1, 3, 10, 2, 11, 3, 12, 0, 5, 20, 21]
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 5, 5]
    assert inputs["block_position_ids"][0].tolist() == [0] * 8 + [1, 2, 3]
    assert inputs["labels"][0].tolist() == [-100] * 8 + [20, 21, 6]
    inputs = build_cloze_inputs(config, [3, 10, 40], [[20]], mask_id=40, add_eos=False, add_cls=False)
    assert inputs["input_ids"][0].tolist() == [3, 10, 40, 5]
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 2]
    assert inputs["prefix_length"].tolist() == [3]


@pytest.fixture(scope="module")
def model() -> GLMForConditionalGeneration:
    torch.manual_seed(0)
    return GLMForConditionalGeneration(tiny_config()).eval()


ANSWERS = [[20, 6], [30, 31, 32, 6], [40], [50, 51, 52, 53, 54, 6]]
TEXT_A = [10, 11, 3, 12, 13]
TEXT_B = [14, 3, 15]


def slow_scores(model: GLMForConditionalGeneration, inputs: dict[str, torch.Tensor], normalize: bool) -> torch.Tensor:
    """One forward per candidate on its unpadded row; the sum of log_softmax(logits)[t, label_t] over targets."""
    scores = []
    for row in range(inputs["input_ids"].shape[0]):
        length = int(inputs["attention_mask"][row].sum())
        with torch.no_grad():
            logits = model(
                input_ids=inputs["input_ids"][row : row + 1, :length],
                position_ids=inputs["position_ids"][row : row + 1, :length],
                block_position_ids=inputs["block_position_ids"][row : row + 1, :length],
                prefix_length=int(inputs["prefix_length"][row]),
            ).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        total, count = 0.0, 0
        for t in range(length):
            label = int(inputs["labels"][row, t])
            if label != -100:
                total += float(log_probs[t, label])
                count += 1
        scores.append(total / count if normalize else total)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("normalize", [False, True])
def test_score_candidates_equals_a_slow_loop(model: GLMForConditionalGeneration, normalize: bool) -> None:
    inputs = build_cloze_inputs(model.config, TEXT_A, ANSWERS, text_b_ids=TEXT_B)
    scores = score_candidates(model, inputs, length_normalize=normalize)
    assert scores.shape == (len(ANSWERS),)
    torch.testing.assert_close(scores.double(), slow_scores(model, inputs, normalize), rtol=1e-5, atol=1e-5)
    assert bool((scores < 0).all())
    # Length normalisation divides by the number of answer tokens.
    if normalize:
        raw = score_candidates(model, inputs)
        lengths = torch.tensor([len(answer) for answer in ANSWERS], dtype=raw.dtype)
        torch.testing.assert_close(scores, raw / lengths)


@pytest.mark.parametrize("normalize", [False, True])
def test_padding_does_not_change_scores(model: GLMForConditionalGeneration, normalize: bool) -> None:
    batched = score_candidates(model, build_cloze_inputs(model.config, TEXT_A, ANSWERS), length_normalize=normalize)
    padded = score_candidates(
        model, build_cloze_inputs(model.config, TEXT_A, ANSWERS, pad_to=30), length_normalize=normalize
    )
    alone = torch.cat(
        [
            score_candidates(model, build_cloze_inputs(model.config, TEXT_A, [answer]), length_normalize=normalize)
            for answer in ANSWERS
        ]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
