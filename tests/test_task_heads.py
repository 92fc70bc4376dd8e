"""Task heads `GLMForMultipleChoice` and `GLMForSequenceClassification` against the ORIGINAL `model/downstream.py`.

`fixtures/original_cloze_heads.safetensors` was written by `fixtures/make_original_cloze_heads.py`, which runs the
original `GLMForMultiTokenCloze`, `GLMForSingleTokenCloze` and `GLMForSequenceClassification` around the original
tiny model whose weights are `weights.*` of `fixtures/original_glm_reference.safetensors`, on inputs made by the
original `tasks/data_utils.build_input_from_ids`. Nothing here runs the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import glm_hf
from glm_hf import GLMForConditionalGeneration, GLMForMultipleChoice, GLMForSequenceClassification
from glm_hf.cloze import build_cloze_inputs, pack_cloze_candidates, score_candidates
from glm_hf.conversion import original_to_hf_state_dict
from glm_hf.modeling.modeling_glm import score_cloze_targets

from conftest import TINY_TOKEN_IDS, tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
HEADS = FIXTURES / "original_cloze_heads.safetensors"
REFERENCE = FIXTURES / "original_glm_reference.safetensors"
ATOL = 2e-5  # fp32 rounding: the original scales K before QK^T, we scale the product
MAX_LENGTH = 24  # the fixture's max_seq_length for the multi-token examples
LOWEST = torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def heads() -> dict[str, Any]:
    with safe_open(HEADS, "pt") as handle:
        tensors: dict[str, Any] = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    tensors["examples"] = json.loads(metadata["examples"])
    tensors["config"] = json.loads(metadata["config"])
    return tensors


def reference_config(heads: dict[str, Any], **overrides: Any) -> glm_hf.GLMConfig:
    original = heads["config"]
    return glm_hf.GLMConfig(
        vocab_size=original["vocab_size"],
        hidden_size=original["hidden_size"],
        num_hidden_layers=original["num_layers"],
        num_attention_heads=original["num_attention_heads"],
        max_position_embeddings=original["max_sequence_length"] + 1,
        layer_norm_eps=original["layernorm_epsilon"],
        **TINY_TOKEN_IDS,
        **overrides,
    )


def load_reference_weights(model: torch.nn.Module, expected_missing: set[str]) -> torch.nn.Module:
    weights = {
        key.removeprefix("weights."): value for key, value in load_file(REFERENCE).items() if key[:8] == "weights."
    }
    missing, unexpected = model.load_state_dict(original_to_hf_state_dict(weights), strict=False)
    assert set(missing) == expected_missing and not unexpected
    return model.eval()


def multiple_choice(
    heads: dict[str, Any], attn_implementation: str = "sdpa", **overrides: Any
) -> GLMForMultipleChoice:
    model = GLMForMultipleChoice._from_config(
        reference_config(heads, **overrides), attn_implementation=attn_implementation
    )
    load_reference_weights(model, {"lm_head.weight"})
    assert model.lm_head.weight.data_ptr() == model.glm.word_embeddings.weight.data_ptr()
    return model


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def mc_model(request, heads) -> GLMForMultipleChoice:
    return multiple_choice(heads, request.param)


def original_rows(heads: dict[str, Any], index: int) -> dict[str, torch.Tensor]:
    """The original's candidate rows of example `index` as our `[C, T]` inputs."""
    prefix = f"multi.{index}."
    positions = heads[prefix + "position_ids"]
    targets = heads[prefix + "target_ids"]
    return {
        "input_ids": heads[prefix + "ids"],
        "position_ids": positions[:, 0],
        "block_position_ids": positions[:, 1],
        "prefix_length": heads[prefix + "sep"],
        "target_ids": torch.where(heads[prefix + "loss_masks"].bool(), targets, -100),
    }


def our_rows(heads: dict[str, Any], config: glm_hf.GLMConfig, index: int) -> dict[str, torch.Tensor]:
    example = heads["examples"][index]
    return build_cloze_inputs(
        config, example["text_a"], example["answers"], text_b_ids=example["text_b"], max_length=MAX_LENGTH
    )


def as_batch(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One example's `[C, ...]` rows as a batch of one, `[1, C, ...]`, `labels` renamed to `target_ids`."""
    batch = {key: value[None] for key, value in rows.items()}
    if "labels" in batch:
        batch["target_ids"] = batch.pop("labels")
    return batch


def stack_examples(examples: list[dict[str, torch.Tensor]], num_choices: int) -> dict[str, torch.Tensor]:
    """`[C_i, T_i]` rows of several examples -> `[B, num_choices, T]`, with `choice_mask` for missing candidates."""
    width = max(rows["input_ids"].shape[-1] for rows in examples)
    fills = {"target_ids": -100, "labels": -100}
    batch: dict[str, list[torch.Tensor]] = {}
    for rows in examples:
        count = rows["input_ids"].shape[0]
        for key, value in rows.items():
            if key == "prefix_length":
                padded = torch.nn.functional.pad(value, (0, num_choices - count), value=1)
            else:
                padded = torch.nn.functional.pad(value, (0, width - value.shape[-1]), value=fills.get(key, 0))
                padded = torch.cat([padded, padded.new_full((num_choices - count, width), fills.get(key, 0))])
            batch.setdefault(key, []).append(padded)
        batch.setdefault("choice_mask", []).append((torch.arange(num_choices) < count).long())
    stacked = {key: torch.stack(values) for key, values in batch.items()}
    if "labels" in stacked:
        stacked["target_ids"] = stacked.pop("labels")
    return stacked


# ---- multi-token cloze ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_multi_token_scores_equal_original_on_its_inputs(mc_model, heads, index, penalty):
    with torch.no_grad():
        scores = mc_model(**as_batch(original_rows(heads, index)), length_penalty=penalty).logits
    assert scores.shape == (1, len(heads["examples"][index]["answers"]))
    torch.testing.assert_close(scores[0], heads[f"multi.{index}.scores_{penalty}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_multi_token_scores_equal_original_on_build_cloze_inputs(heads, index):
    """Our builder's rows (padded to the longest row only) with the length penalty taken from the config."""
    model = multiple_choice(heads, cloze_length_penalty=1.0)
    with torch.no_grad():
        scores = model(**as_batch(our_rows(heads, model.config, index))).logits
    torch.testing.assert_close(scores[0], heads[f"multi.{index}.scores_1.0"], atol=ATOL, rtol=0)


def test_length_penalty_argument_overrides_the_config(heads):
    model = multiple_choice(heads, cloze_length_penalty=1.0)
    batch = as_batch(original_rows(heads, 2))
    with torch.no_grad():
        scores = model(**batch, length_penalty=0.0).logits
    torch.testing.assert_close(scores[0], heads["multi.2.scores_0.0"], atol=ATOL, rtol=0)
    assert not torch.allclose(heads["multi.2.scores_0.0"], heads["multi.2.scores_1.0"])


def test_stacked_position_ids_and_a_shared_prefix_length_are_accepted(mc_model, heads):
    """The original's stacked `[B, C, 2, T]` positions, and one Part A length `[B]` for all candidates."""
    rows = original_rows(heads, 0)
    batch = as_batch(rows)
    batch["position_ids"] = heads["multi.0.position_ids"][None]
    del batch["block_position_ids"]
    batch["prefix_length"] = rows["prefix_length"][:1]
    with torch.no_grad():
        scores = mc_model(**batch).logits
    torch.testing.assert_close(scores[0], heads["multi.0.scores_0.0"], atol=ATOL, rtol=0)


def test_choice_mask_pads_examples_with_fewer_candidates(mc_model, heads):
    batch = stack_examples([our_rows(heads, mc_model.config, index) for index in range(3)], num_choices=4)
    batch["labels"] = torch.tensor([2, 0, 3])
    with torch.no_grad():
        output = mc_model(**batch)
    assert output.logits.shape == (3, 4)
    for index in range(3):
        count = len(heads["examples"][index]["answers"])
        torch.testing.assert_close(output.logits[index, :count], heads[f"multi.{index}.scores_0.0"], atol=ATOL, rtol=0)
        assert (output.logits[index, count:] == LOWEST).all()
    probabilities = output.logits.softmax(-1)
    assert (probabilities[~batch["choice_mask"].bool()] == 0).all()
    assert batch["choice_mask"].gather(1, output.logits.argmax(-1, keepdim=True)).bool().all()
    # The loss ignores the padded candidates: it equals the CE over each example's real scores alone.
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(heads[f"multi.{index}.scores_0.0"][None], torch.tensor([label]))
            for index, label in enumerate([2, 0, 3])
        ]
    ).mean()
    torch.testing.assert_close(output.loss, expected, atol=1e-4, rtol=0)


def test_score_candidates_shares_the_heads_scores(heads):
    """`glm_hf.score_candidates` on the LM model gives the head's scores (one scoring function for both)."""
    lm = GLMForConditionalGeneration._from_config(reference_config(heads), attn_implementation="sdpa")
    load_reference_weights(lm, {"lm_head.weight"})
    rows = our_rows(heads, lm.config, 2)
    torch.testing.assert_close(score_candidates(lm, rows), heads["multi.2.scores_0.0"], atol=ATOL, rtol=0)
    normalized = score_candidates(lm, rows, length_normalize=True)
    torch.testing.assert_close(normalized, heads["multi.2.scores_1.0"], atol=ATOL, rtol=0)


# ---- packed candidates ----------------------------------------------------------------------------------------


def test_pack_cloze_candidates_layout(heads):
    config = reference_config(heads)
    rows = our_rows(heads, config, 0)
    part_a = int(rows["prefix_length"][0])
    answer_lengths = [len(answer) for answer in heads["examples"][0]["answers"]]
    packed = pack_cloze_candidates(rows, pad_to=part_a + sum(answer_lengths) + 2, num_choices=5)
    length = part_a + sum(answer_lengths)
    assert packed["input_ids"].shape == (length + 2,) and packed["attention_mask"].shape == (1, length + 2, length + 2)
    assert packed["input_ids"][:part_a].tolist() == rows["input_ids"][0, :part_a].tolist()
    expected_choices = [-1] * part_a + [c for c, n in enumerate(answer_lengths) for _ in range(n)] + [-1, -1]
    assert packed["choice_ids"].tolist() == expected_choices
    assert packed["choice_mask"].tolist() == [1, 1, 1, 0, 0]
    answers = [token for answer in heads["examples"][0]["answers"] for token in answer]
    assert packed["target_ids"][part_a:length].tolist() == answers
    mask = packed["attention_mask"][0]
    first, second = part_a, part_a + answer_lengths[0]  # the first column of candidates 0 and 1
    assert mask[second, :part_a].all() and not mask[second, first:second].any() and mask[second, second]
    assert not mask[:part_a, part_a:].any() and not mask[:, length:].any()


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_packed_scores_equal_unpacked_scores(mc_model, heads, penalty):
    examples = [our_rows(heads, mc_model.config, index) for index in range(3)]
    unpacked = stack_examples(examples, num_choices=4)
    packed_rows = [pack_cloze_candidates(rows, num_choices=4) for rows in examples]
    width = max(row["input_ids"].shape[0] for row in packed_rows)
    fills = {"target_ids": -100, "choice_ids": -1}
    packed: dict[str, list[torch.Tensor]] = {}
    for row in packed_rows:
        extra = width - row["input_ids"].shape[0]
        for key, value in row.items():
            if key == "attention_mask":
                value = torch.nn.functional.pad(value, (0, extra, 0, extra), value=False)
            elif key != "choice_mask":
                value = torch.nn.functional.pad(value, (0, extra), value=fills.get(key, 0))
            packed.setdefault(key, []).append(value)
    batch = {key: torch.stack(values) for key, values in packed.items()}
    labels = torch.tensor([1, 1, 0])
    with torch.no_grad():
        expected = mc_model(**unpacked, labels=labels, length_penalty=penalty)
        output = mc_model(**batch, labels=labels, length_penalty=penalty)
    assert batch["input_ids"].shape[-1] < unpacked["input_ids"].shape[-1] * 4
    torch.testing.assert_close(output.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.loss, expected.loss, atol=1e-5, rtol=0)
    for index in range(3):
        count = len(heads["examples"][index]["answers"])
        original = heads[f"multi.{index}.scores_{penalty}"]
        torch.testing.assert_close(output.logits[index, :count], original, atol=ATOL, rtol=0)


def test_pack_refuses_rows_of_different_examples(heads):
    config = reference_config(heads)
    first, second = our_rows(heads, config, 0), our_rows(heads, config, 1)
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    mixed = {
        key: torch.cat(
            [
                torch.nn.functional.pad(rows[key], (0, width - rows[key].shape[-1]))
                if rows[key].dim() == 2
                else rows[key]
                for rows in (first, second)
            ]
        )
        for key in first
    }
    with pytest.raises(ValueError, match="do not share one Part A"):
        pack_cloze_candidates(mixed)
    with pytest.raises(ValueError, match="num_choices=1 is smaller"):
        pack_cloze_candidates(first, num_choices=1)


# ---- single-token cloze ---------------------------------------------------------------------------------------


def test_single_token_scores_equal_original(mc_model, heads):
    positions = heads["single.position_ids"]
    with torch.no_grad():
        output = mc_model(
            input_ids=heads["single.ids"],
            position_ids=positions[:, 0],
            block_position_ids=positions[:, 1],
            prefix_length=heads["single.sep"],
            mask_positions=heads["single.sep"],  # the original reads the logits at its attention_mask = sep
            verbalizer_ids=heads["single.verbalizer_ids"],
            labels=torch.tensor([0, 2, 1, 1]),
        )
    torch.testing.assert_close(output.logits, heads["single.scores"], atol=ATOL, rtol=0)
    expected = torch.nn.functional.cross_entropy(heads["single.scores"], torch.tensor([0, 2, 1, 1]))
    torch.testing.assert_close(output.loss, expected, atol=1e-4, rtol=0)


def test_single_token_inputs_from_build_cloze_inputs(mc_model, heads):
    """A one-token answer makes the original's single-token row (Part A + [sop]); read at prefix_length."""
    example = heads["examples"][2]
    rows = build_cloze_inputs(mc_model.config, example["text_a"], [[7]], max_length=MAX_LENGTH)
    verbalizers = torch.tensor([[11, 40, 90]])
    with torch.no_grad():
        scores = mc_model(
            **{key: rows[key] for key in ("input_ids", "position_ids", "block_position_ids", "prefix_length")},
            mask_positions=rows["prefix_length"],
            verbalizer_ids=verbalizers,
        ).logits
        lm = GLMForConditionalGeneration(mc_model.config).eval()
        lm.load_state_dict(mc_model.state_dict())
        logits = lm(**{key: rows[key] for key in ("input_ids", "position_ids", "block_position_ids", "prefix_length")})
    torch.testing.assert_close(scores, logits.logits[0, -1, verbalizers[0]][None], atol=1e-5, rtol=0)


# ---- loss, gradients, errors ----------------------------------------------------------------------------------


def test_loss_is_cross_entropy_over_scores_and_gradients_flow():
    torch.manual_seed(0)
    model = GLMForMultipleChoice(tiny_config(hidden_dropout_prob=0.0, embedding_dropout_prob=0.0)).train()
    config = model.config
    rows = [build_cloze_inputs(config, [9, 3, 12, 40], [[20, 21, 6], [22, 6], [23, 24, 25, 6]]) for _ in range(2)]
    batch = stack_examples(rows, num_choices=3)
    labels = torch.tensor([2, 0])
    output = model(**batch, labels=labels)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    output.loss.backward()
    gradients = {name: parameter.grad for name, parameter in model.named_parameters()}
    assert all(gradient is not None and torch.isfinite(gradient).all() for gradient in gradients.values())
    assert gradients["glm.word_embeddings.weight"].abs().sum() > 0  # also reached through the tied head
    assert gradients["glm.layers.0.attention.query_key_value.weight"].abs().sum() > 0


def test_multiple_choice_refuses_incomplete_inputs():
    model = GLMForMultipleChoice(tiny_config()).eval()
    input_ids = torch.randint(7, 96, (2, 5))
    with pytest.raises(ValueError, match="needs target_ids"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="needs mask_positions"):
        model(input_ids=input_ids, verbalizer_ids=torch.tensor([[7, 8]]))
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        model(input_ids=input_ids, target_ids=input_ids)
    with pytest.raises(ValueError, match="choice_ids holds a candidate index >= 2"):
        model(
            input_ids=input_ids, target_ids=input_ids, choice_ids=torch.full((2, 5), 2), choice_mask=torch.ones(2, 2)
        )
    with pytest.raises(ValueError, match="choice_mask has shape"):
        model(input_ids=input_ids[:, None], target_ids=input_ids[:, None], choice_mask=torch.ones(2, 3))


# ---- loading LM checkpoints and the Auto classes --------------------------------------------------------------


def test_lm_checkpoint_loads_into_the_heads_through_the_auto_classes(tmp_path, heads):
    lm = GLMForConditionalGeneration._from_config(reference_config(heads), attn_implementation="sdpa")
    load_reference_weights(lm, {"lm_head.weight"})
    lm.save_pretrained(tmp_path)

    model, info = GLMForMultipleChoice.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    auto = AutoModelForMultipleChoice.from_pretrained(tmp_path).eval()
    assert type(auto) is GLMForMultipleChoice
    assert auto.lm_head.weight.data_ptr() == auto.glm.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        scores = auto(**as_batch(original_rows(heads, 1))).logits
    torch.testing.assert_close(scores[0], heads["multi.1.scores_0.0"], atol=ATOL, rtol=0)

    classifier, info = GLMForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True, num_labels=3)
    assert sorted(info["missing_keys"]) == [
        "classifier.dense.bias",
        "classifier.dense.weight",
        "classifier.out_proj.bias",
        "classifier.out_proj.weight",
    ]
    assert not info["unexpected_keys"]
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is GLMForSequenceClassification


def test_fine_tuned_heads_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GLMForSequenceClassification(tiny_config(num_labels=4, classifier_pool="pad")).eval()
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()) and loaded.config.classifier_pool == "pad" and loaded.config.num_labels == 4
    inputs = {"input_ids": torch.randint(7, 96, (2, 6)), "prefix_length": torch.tensor([4, 6])}
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model(**inputs).logits)


# ---- sequence classification ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("pool", ["cls", "start", "pad"])
def test_sequence_classification_equals_original(heads, pool, attn_implementation):
    config = reference_config(heads, num_labels=3, classifier_pool=pool)
    model = GLMForSequenceClassification._from_config(config, attn_implementation=attn_implementation)
    head = {"classifier.dense": "pool_layer", "classifier.out_proj": "multichoice_head"}  # ours: the original's
    load_reference_weights(model, {f"{ours}.{parameter}" for ours in head for parameter in ("weight", "bias")})
    with torch.no_grad():
        for ours, original in head.items():
            for parameter in ("weight", "bias"):
                model.get_parameter(f"{ours}.{parameter}").copy_(heads[f"classify.{original}.{parameter}"])
        positions = heads["classify.position_ids"]
        logits = model(
            heads["classify.ids"],
            position_ids=positions[:, 0],
            block_position_ids=positions[:, 1],
            prefix_length=heads["classify.sep"],  # the original passes sep as its attention_mask
        ).logits
    torch.testing.assert_close(logits, heads[f"classify.logits_{pool}"], atol=ATOL, rtol=0)


def test_sequence_classification_problem_types():
    torch.manual_seed(0)
    inputs = {"input_ids": torch.randint(7, 96, (3, 7))}

    model = GLMForSequenceClassification(tiny_config(num_labels=1)).eval()
    values = torch.tensor([0.5, -1.0, 2.0])
    output = model(**inputs, labels=values)
    assert output.logits.shape == (3, 1) and model.config.problem_type == "regression"
    torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), values))

    model = GLMForSequenceClassification(tiny_config(num_labels=3)).eval()
    classes = torch.tensor([0, 2, 1])
    output = model(**inputs, labels=classes)
    assert output.logits.shape == (3, 3) and model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, classes))

    model = GLMForSequenceClassification(tiny_config(num_labels=3)).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    output = model(**inputs, labels=targets)
    assert model.config.problem_type == "multi_label_classification"
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, targets)
    torch.testing.assert_close(output.loss, expected)


def test_sequence_classification_pools_and_dropout():
    torch.manual_seed(0)
    assert GLMForSequenceClassification(tiny_config(hidden_dropout_prob=0.3)).classifier.dropout.p == 0.3
    assert GLMForSequenceClassification(tiny_config(classifier_dropout=0.05)).classifier.dropout.p == 0.05
    with pytest.raises(Exception, match="classifier_pool='mean' is not one of 'cls', 'start', 'pad'"):
        tiny_config(classifier_pool="mean")
    input_ids = torch.randint(7, 96, (2, 6))
    with pytest.raises(ValueError, match="pass prefix_length"):
        GLMForSequenceClassification(tiny_config(classifier_pool="pad"))(input_ids=input_ids)
    with pytest.raises(ValueError, match="pad the inputs so that a column follows Part A"):
        GLMForSequenceClassification(tiny_config(classifier_pool="start"))(input_ids=input_ids, prefix_length=6)

    # "start" pools column prefix_length, "pad" column prefix_length - 1: move the pooled column, move the logits.
    model = GLMForSequenceClassification(tiny_config(classifier_pool="start", hidden_dropout_prob=0.0)).eval()
    with torch.no_grad():
        hidden = model.glm(input_ids, prefix_length=torch.tensor([3, 4])).last_hidden_state
        head = model.classifier
        expected = head.out_proj(torch.tanh(head.dense(hidden[[0, 1], [3, 4]])))
        torch.testing.assert_close(model(input_ids, prefix_length=torch.tensor([3, 4])).logits, expected)
        model.config.classifier_pool = "pad"
        expected = head.out_proj(torch.tanh(head.dense(hidden[[0, 1], [2, 3]])))
        torch.testing.assert_close(model(input_ids, prefix_length=torch.tensor([3, 4])).logits, expected)


# ---- Trainer --------------------------------------------------------------------------------------------------


def train_two_steps(model: torch.nn.Module, examples: list[dict[str, torch.Tensor]], output_dir: Path) -> list[float]:
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=arguments, train_dataset=examples).train()
    changed = [name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])]
    assert "glm.layers.0.mlp.dense_h_to_4h.weight" in changed
    return changed


def test_trainer_runs_the_multiple_choice_head(tmp_path):
    torch.manual_seed(0)
    model = GLMForMultipleChoice(tiny_config())
    generator = torch.Generator().manual_seed(0)
    examples = []
    for label in [0, 1, 2, 1]:
        answers = [torch.randint(7, 96, (length,), generator=generator).tolist() + [6] for length in (1, 2, 3)]
        rows = build_cloze_inputs(model.config, [9, 3, 12, 40, 41], answers, pad_to=12)
        rows["target_ids"] = rows.pop("labels")
        examples.append({**rows, "labels": torch.tensor(label)})
    changed = train_two_steps(model, examples, tmp_path)
    assert "glm.word_embeddings.weight" in changed


def test_trainer_runs_the_sequence_classification_head(tmp_path):
    torch.manual_seed(0)
    model = GLMForSequenceClassification(tiny_config(num_labels=3, classifier_pool="pad"))
    generator = torch.Generator().manual_seed(0)
    examples = [
        {
            "input_ids": torch.randint(7, 96, (8,), generator=generator),
            "prefix_length": torch.tensor(6),
            "labels": torch.tensor(label),
        }
        for label in [0, 2, 1, 1]
    ]
    changed = train_two_steps(model, examples, tmp_path)
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= set(changed)


# ---- PEFT prefix tuning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["start", "pad"])
def test_prefix_tuning_reaches_the_heads_and_pools_real_columns(pool):
    """PEFT hands the heads its prefix as `past_key_values` (it only calls a forward that names that argument), and
    `prefix_length` then counts the n cached columns: the pooled / read columns stay those of the real input."""
    peft = pytest.importorskip("peft", reason="peft is not installed")
    num_virtual = 4
    input_ids = torch.randint(7, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    prefix_length = torch.tensor([6, 8])
    real_positions = torch.arange(10).expand(2, -1)

    def by_hand(base: torch.nn.Module, model: Any) -> torch.Tensor:
        """The backbone given PEFT's prefix as a cache, with the positions PEFT's shift gives."""
        return base.glm(
            input_ids=input_ids,
            position_ids=real_positions + num_virtual,
            prefix_length=prefix_length + num_virtual,
            past_key_values=model.get_prompt(batch_size=2),
        ).last_hidden_state

    def prefix_tuning() -> Any:  # a new config per model: get_peft_model fills it in for the model it wraps
        return peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=num_virtual)

    torch.manual_seed(0)
    base = GLMForSequenceClassification(tiny_config(num_labels=3, classifier_pool=pool, hidden_dropout_prob=0.0))
    model = peft.get_peft_model(base.eval(), prefix_tuning()).eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, prefix_length=prefix_length).logits
        columns = prefix_length - int(pool == "pad")
        expected = base.classifier(by_hand(base, model)[[0, 1], columns])
    torch.testing.assert_close(logits, expected)

    base = GLMForMultipleChoice(tiny_config()).eval()
    model = peft.get_peft_model(base, prefix_tuning()).eval()
    verbalizer_ids = torch.tensor([[20, 30], [40, 50]])
    with torch.no_grad():
        scores = model(
            input_ids=input_ids,
            prefix_length=prefix_length,
            mask_positions=prefix_length,
            verbalizer_ids=verbalizer_ids,
        ).logits
        expected = base.lm_head(by_hand(base, model)[[0, 1], prefix_length]).gather(-1, verbalizer_ids)
    torch.testing.assert_close(scores, expected)


# ---- remote code ----------------------------------------------------------------------------------------------

REMOTE_SCRIPT = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "glm_hf" or name.startswith("glm_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification

folder, out = sys.argv[1], sys.argv[2]
inputs = {key: torch.tensor(value) for key, value in json.loads(sys.argv[3]).items()}
torch.set_num_threads(1)
result = {}
for auto in (AutoModelForMultipleChoice, AutoModelForSequenceClassification):
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        if auto is AutoModelForMultipleChoice:
            logits = model(**inputs)
        else:  # the candidate rows as a batch of sequences to classify
            logits = model(input_ids=inputs["input_ids"][0], prefix_length=inputs["prefix_length"][0])
    result[type(model).__module__ + "." + type(model).__name__] = logits.logits.tolist()
result["glm_hf_loaded"] = any(name.split(".")[0] == "glm_hf" for name in sys.modules)
with open(out, "w") as handle:
    json.dump(result, handle)
"""


def test_heads_load_as_remote_code_without_glm_hf(tmp_path):
    """`glm_hf.hub.export_remote_code` maps both heads in `auto_map`; they load and score without glm_hf."""
    import os
    import subprocess
    import sys

    from glm_hf.hub import export_remote_code

    torch.manual_seed(0)
    model = GLMForMultipleChoice(tiny_config(num_labels=2, classifier_pool="pad")).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    export_remote_code(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMultipleChoice"] == "modeling_glm.GLMForMultipleChoice"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_glm.GLMForSequenceClassification"

    rows = build_cloze_inputs(model.config, [9, 3, 12, 40], [[20, 21, 6], [22, 6]])
    inputs = {"input_ids": rows["input_ids"][None], "prefix_length": rows["prefix_length"][None]}
    inputs.update(
        position_ids=rows["position_ids"][None],
        block_position_ids=rows["block_position_ids"][None],
        target_ids=rows["labels"][None],
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    arguments = json.dumps({key: value.tolist() for key, value in inputs.items()})
    process = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "out.json"), arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote.pop("glm_hf_loaded") is False
    by_class = {name.rsplit(".", 1)[-1]: (name, value) for name, value in remote.items()}
    name, scores = by_class["GLMForMultipleChoice"]
    assert name.startswith("transformers_modules.")
    with torch.no_grad():  # fp32 rounding: the subprocess sums on 1 thread, this one on as many as torch has
        torch.testing.assert_close(torch.tensor(scores), model(**inputs).logits, atol=1e-5, rtol=0)
    assert torch.tensor(by_class["GLMForSequenceClassification"][1]).shape == (2, 2)  # 2 rows, num_labels 2


def test_a_cache_of_one_row_per_example_serves_every_candidate_row():
    """Multi-token layout with `past_key_values` `[B]` (e.g. a prefix): the head repeats it for the `B * C` rows."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    model = GLMForMultipleChoice(tiny_config()).eval()
    rows = [build_cloze_inputs(model.config, [9, 3, 12, 40], [[20, 21, 6], [22, 6], [23, 24, 25, 6]])] * 2
    batch = stack_examples(rows, num_choices=3)
    batch.pop("attention_mask", None)  # a padding mask would have to cover the cached columns too
    num_cached = 3

    def prefix_cache(repeats: int = 1) -> DynamicCache:
        generator = torch.Generator().manual_seed(1)
        cache = DynamicCache(config=model.config)
        for layer in range(model.config.num_hidden_layers):
            key, value = torch.randn(2, 2, 4, num_cached, 16, generator=generator)
            cache.update(key.repeat_interleave(repeats, 0), value.repeat_interleave(repeats, 0), layer)
        return cache

    shifted = {**batch, "position_ids": batch["position_ids"] + num_cached}
    shifted["prefix_length"] = batch["prefix_length"] + num_cached
    with torch.no_grad():
        scores = model(**shifted, past_key_values=prefix_cache()).logits
        hidden = model.glm(
            **{key: shifted[key].flatten(0, 1) for key in ("input_ids", "position_ids", "block_position_ids")},
            prefix_length=shifted["prefix_length"].flatten(),
            past_key_values=prefix_cache(repeats=3),
        ).last_hidden_state
        expected = score_cloze_targets(hidden, batch["target_ids"].flatten(0, 1), project=model.lm_head)
        without_cache = model(**batch).logits
    torch.testing.assert_close(scores, expected.view(2, 3))
    assert not torch.allclose(scores, without_cache, atol=1e-3)
