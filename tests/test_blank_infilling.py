"""`DataCollatorForBlankInfilling` equals the ORIGINAL `ConstructBlockStrategy`; corpus reading and packing.

The fixture `fixtures/original_blank_infilling.json.gz` holds what the original `construct_blocks` returned for real
text (written by `fixtures/make_original_blank_infilling.py`, which runs the unchanged original); comparing with it
needs the real BERT / GPT-2 vocabularies of the shared assets (their token strings decide the sentence ends).
The statistical and edge-case tests use a tiny word-level tokenizer and need nothing else.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import random
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

import glm_hf
from glm_hf.blank_infilling import (
    IGNORE_INDEX,
    PRETRAINING_MIXTURES,
    DataCollatorForBlankInfilling,
    pack_documents,
    read_corpus,
    sentence_end_ids,
    span_length_weights,
)

from conftest import ASSETS, TINY_WORDS, tiny_model, tiny_word_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "original_blank_infilling.json.gz"
DATA: dict[str, Any] = json.loads(gzip.decompress(FIXTURE.read_bytes()))
HAVE_ASSETS = all((ASSETS / name).is_file() for name in ("bert-base-uncased-vocab.txt", "gpt2-vocab.json"))
NO_ASSETS = f"shared assets (BERT / GPT-2 vocabularies) not found at {ASSETS}; set GLM_HF_ASSETS"
MODES = {"bert": "span", "sentence": "sentence", "gpt": "document"}
# ConstructBlockStrategy's own defaults (the fixture's settings override them).
ORIGINAL_CLASS_DEFAULTS = {"bert_prob": 1.0, "gap_sentence_prob": 0.0}

TOKENS = tiny_word_tokenizer()
CLS, EOS, MASK, SOP, EOP = (
    TOKENS.convert_tokens_to_ids(t) for t in ("[CLS]", "[PAD]", "[MASK]", "<|startofpiece|>", "<|endofpiece|>")
)
PLAIN_WORDS = [TOKENS.convert_tokens_to_ids(w) for w in TINY_WORDS if w not in {".", "!", "?", ";"}]
SENTENCE_ENDS = [TOKENS.convert_tokens_to_ids(w) for w in (".", "!", "?", ";")]


@functools.cache
def family_tokenizer(family: str) -> Any:
    return glm_hf.build_tokenizer(DATA["families"][family]["tokenizer"], ASSETS)


def random_document(rng: random.Random, sentences: int) -> list[int]:
    """Word ids of `sentences` sentences of 3-12 words, each ended by a sentence-end token."""
    ids: list[int] = []
    for _ in range(sentences):
        ids += [rng.choice(PLAIN_WORDS) for _ in range(rng.randint(3, 12))] + [rng.choice(SENTENCE_ENDS)]
    return ids


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [TOKENS.decode(random_document(rng, rng.randint(1, 4))) for _ in range(count)]


def reconstruct(batch: dict[str, torch.Tensor], row: int, mask_ids: set[int]) -> list[int]:
    """The sample a row was made from: each Part A mask replaced by the targets of the Part B span at its position.

    Checks on the way that Part B inputs are `[sop]` + the targets shifted right, a span's positions are all its
    mask's position and its block positions count 1, 2, ...
    """
    length = int(batch["attention_mask"][row].sum())
    prefix = int(batch["prefix_length"][row])
    ids, labels = batch["input_ids"][row, :length].tolist(), batch["labels"][row, :length].tolist()
    positions, blocks = (
        batch["position_ids"][row, :length].tolist(),
        batch["block_position_ids"][row, :length].tolist(),
    )
    assert labels[:prefix] == [IGNORE_INDEX] * prefix
    assert blocks[:prefix] == [0] * prefix
    starts = [column for column in range(prefix, length) if ids[column] == SOP]
    assert starts[:1] == [prefix] if length > prefix else not starts
    spans: dict[int, list[int]] = {}
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else length
        targets = labels[start:end]
        assert IGNORE_INDEX not in targets
        assert ids[start + 1 : end] == targets[:-1]
        assert positions[start:end] == [positions[start]] * (end - start)
        assert blocks[start:end] == list(range(1, end - start + 1))
        spans[positions[start]] = targets[:-1] if targets[-1] == EOP else targets
    text: list[int] = []
    for token, position in zip(ids[:prefix], positions[:prefix], strict=True):
        text += spans.pop(position) if token in mask_ids and position in spans else [token]
    assert not spans, "a Part B span without its mask in Part A"
    return text


# ---- equality with the original -----------------------------------------------------------------------------------


def test_fixture_covers_objectives_drops_splits_and_both_document_forms() -> None:
    calls = [(case, call) for case in DATA["cases"] for call in case["calls"]]
    assert {call["mode"] for _, call in calls} == {"bert", "sentence", "gpt"}
    assert any(len(call["text"]) < len(call["samples"]) for _, call in calls), "no sample dropped by the original"
    assert any(len(call["text"]) > len(call["samples"]) for _, call in calls), "no split_samples call"
    eop = {case["family"]: DATA["families"][case["family"]]["command_ids"]["eop"] for case in DATA["cases"]}
    suffix_rows = placed_rows = 0
    for case, call in calls:
        if call["mode"] == "gpt":
            for target, loss in zip(call["target"], call["loss_mask"], strict=True):
                last = max(i for i, keep in enumerate(loss) if keep)
                placed_rows += target[last] == eop[case["family"]]
                suffix_rows += target[last] != eop[case["family"]]
    assert suffix_rows and placed_rows
    assert {case["family"] for case in DATA["cases"]} == {"bert", "gpt2"}
    single_span = next(case for case in DATA["cases"] if case["settings"].get("single_span_prob"))
    sop = DATA["families"][single_span["family"]]["command_ids"]["sop"]
    assert any(  # a single-span draw: one span in each of two 64-token samples (15% of 64 needs 9 tokens)
        call["mode"] == "bert" and [row.count(sop) for row in call["text"]] == [1, 1] for call in single_span["calls"]
    )


@pytest.mark.skipif(not HAVE_ASSETS, reason=NO_ASSETS)
@pytest.mark.parametrize("case", DATA["cases"], ids=lambda case: case["name"])
def test_batches_equal_the_original(case: dict[str, Any]) -> None:
    """Same samples and batch counter: the same rows (inputs, targets, positions, Part A length) as the original."""
    collator = DataCollatorForBlankInfilling(
        family_tokenizer(case["family"]),
        max_length=case["max_seq_length"],
        **{**ORIGINAL_CLASS_DEFAULTS, **case["settings"]},
    )
    for count, call in enumerate(case["calls"]):
        collator.count = count
        batch = collator([{"input_ids": sample} for sample in call["samples"]])
        assert collator.last_objective == MODES[call["mode"]]
        assert tuple(batch["input_ids"].shape) == (len(call["text"]), len(call["text"][0]))
        assert batch["prefix_length"].tolist() == call["attention_mask"]
        assert ("block_position_ids" in batch) == case["settings"].get("block_position_encoding", True)
        for row, original in enumerate(call["text"]):
            length = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :length].tolist() == original[:length]
            assert original[length:] == [0] * (len(original) - length)  # the original's padding
            expected_labels = [
                target if keep else IGNORE_INDEX
                for target, keep in zip(call["target"][row], call["loss_mask"][row], strict=True)
            ]
            assert batch["labels"][row].tolist() == expected_labels
            assert batch["position_ids"][row, :length].tolist() == call["position_id"][row][0][:length]
            if "block_position_ids" in batch:
                assert batch["block_position_ids"][row, :length].tolist() == call["position_id"][row][1][:length]


@pytest.mark.skipif(not HAVE_ASSETS, reason=NO_ASSETS)
@pytest.mark.parametrize("family", sorted(DATA["families"]))
def test_sentence_ends_equal_the_original(family: str) -> None:
    """The ids whose token string ends a sentence, over the whole vocabulary, equal the original's."""
    assert sorted(sentence_end_ids(family_tokenizer(family))) == DATA["families"][family]["sentence_end_ids"]


def test_span_length_weights_match_scipy_poisson() -> None:
    """Poisson(3) at 1..39 as the original's scipy `poisson.pmf` (to 1e-13 relative: a few ulps of lgamma)."""
    for family in DATA["families"].values():
        original = family["block_length_distribution"]
        ours = span_length_weights(3, 40)
        assert len(ours) == len(original) == 39
        assert all(math.isclose(a, b, rel_tol=1e-13, abs_tol=0) for a, b in zip(ours, original, strict=True))


# ---- the objectives ---------------------------------------------------------------------------------------------


def test_span_masking_statistics() -> None:
    """Over 240 samples of 512 tokens: the masked ratio is within 0.01 of 15% and the mean span length within 0.15
    of the mean of Poisson(3) on 1..39 (3.157). The sampler stops at the span that crosses 15%, so the ratio
    overshoots by part of a span (about 0.002 at 512 tokens); ~5900 spans of standard deviation 1.6 give the mean
    length a standard error of 0.02, so 0.15 is 7 standard errors. (Measured with seed 0: 0.1514 and 3.160.)"""
    rng = random.Random(0)
    samples = [{"input_ids": [CLS, *random_document(rng, 80)[:510], EOS]} for _ in range(240)]
    assert all(len(sample["input_ids"]) == 512 for sample in samples)
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=512, bert_prob=1.0, seed=0)
    ratios, span_lengths = [], []
    for start in range(0, len(samples), 8):
        batch = collator(samples[start : start + 8])
        for row in range(batch["input_ids"].shape[0]):
            prefix, length = int(batch["prefix_length"][row]), int(batch["attention_mask"][row].sum())
            part_b = batch["input_ids"][row, prefix:length].tolist()
            sop_columns = [i for i, token in enumerate(part_b) if token == SOP] + [len(part_b)]
            lengths = [b - a - 1 for a, b in pairwise(sop_columns)]  # [sop] x1..xn per span
            span_lengths += lengths
            ratios.append(sum(lengths) / 512)
    weights = span_length_weights(3, 40)
    expected_span = sum(k * w for k, w in enumerate(weights, start=1)) / sum(weights)
    assert len(ratios) >= 230  # spans that do not fit a sample drop it: rare at 512 tokens
    assert abs(sum(ratios) / len(ratios) - 0.15) < 0.01
    assert abs(sum(span_lengths) / len(span_lengths) - expected_span) < 0.15
    assert len(span_lengths) > 5000


@pytest.mark.parametrize("objective", ["span", "sentence", "document"])
def test_every_target_is_the_token_it_hides(objective: str) -> None:
    """Putting each Part B span back at its mask gives the sample again, for every row of 20 batches."""
    probabilities = {"span": (1.0, 0.0), "sentence": (0.0, 1.0), "document": (0.0, 0.0)}[objective]
    collator = DataCollatorForBlankInfilling(
        TOKENS, max_length=96, bert_prob=probabilities[0], gap_sentence_prob=probabilities[1], task_mask=True, seed=3
    )
    mask_ids = {MASK, collator.generation_mask_id, collator.gap_sentence_mask_id}
    texts = random_texts(400, seed=1)
    if objective == "document":  # one document per sample: the suffix form has no unlabelled [CLS] in Part B
        samples = pack_documents(texts, TOKENS, 96, pack=False)
    else:
        samples = pack_documents(texts, TOKENS, 96)
    assert len(samples) >= 80
    for start in range(0, 80, 4):
        chunk = samples[start : start + 4]
        batch = collator(chunk)
        assert collator.last_objective == objective
        kept = [sample["input_ids"] for sample in chunk]
        rebuilt = [reconstruct(batch, row, mask_ids) for row in range(batch["input_ids"].shape[0])]
        assert all(text in kept for text in rebuilt)
        if objective != "span":  # only span masking drops samples whose spans do not fit
            assert rebuilt == kept


def test_sentence_objective_masks_whole_sentences_covering_15_percent() -> None:
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=128, bert_prob=0.0, gap_sentence_prob=1.0, seed=5)
    samples = pack_documents(random_texts(300, seed=2), TOKENS, 128)
    assert len(samples) >= 40
    for start in range(0, 40, 4):
        batch = collator(samples[start : start + 4])
        for row, sample in enumerate(samples[start : start + 4]):
            prefix, length = int(batch["prefix_length"][row]), int(batch["attention_mask"][row].sum())
            ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
            positions = batch["position_ids"][row].tolist()
            starts = [column for column in range(prefix, length) if ids[column] == SOP] + [length]
            assert sum(b - a - 1 for a, b in pairwise(starts)) >= int(0.15 * len(sample["input_ids"]))
            for a, b in pairwise(starts):
                assert labels[b - 1] == EOP
                # a whole sentence: it ends with a sentence end, or the sample ends inside it (its mask is last)
                assert labels[b - 2] in SENTENCE_ENDS or positions[a] == positions[prefix - 1]


def test_document_objective_blanks_one_span_of_half_to_all_of_a_document() -> None:
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=96, bert_prob=0.0, gap_sentence_prob=0.0, seed=2)
    samples = pack_documents(random_texts(60, seed=3), TOKENS, 96, pack=False)
    assert len(samples) >= 30
    for sample in samples[:30]:
        batch = collator([sample])
        prefix, labels = int(batch["prefix_length"][0]), batch["labels"][0]
        span_tokens = int((labels != IGNORE_INDEX).sum() - (labels == EOP).sum())  # the placed form ends with [eop]
        assert (batch["input_ids"][0, prefix:] == SOP).sum() == 1
        assert int(0.5 * len(sample["input_ids"])) <= span_tokens <= len(sample["input_ids"]) - 2


def test_task_mask_uses_smask_and_gmask() -> None:
    samples = pack_documents(random_texts(40, seed=4), TOKENS, 64)[:3]
    for objective, probabilities, mask_token in (("sentence", (0.0, 1.0), "[sMASK]"), ("document", (0, 0), "[gMASK]")):
        collator = DataCollatorForBlankInfilling(
            TOKENS, max_length=64, bert_prob=probabilities[0], gap_sentence_prob=probabilities[1], task_mask=True
        )
        batch = collator(samples)
        assert collator.last_objective == objective
        prefix = int(batch["prefix_length"][0])
        assert TOKENS.convert_tokens_to_ids(mask_token) in batch["input_ids"][0, :prefix].tolist()
        assert MASK not in batch["input_ids"][0, :prefix].tolist()


# ---- reproducibility, workers, Trainer ----------------------------------------------------------------------------


def test_same_seed_same_batches_other_calls_and_seeds_differ() -> None:
    samples = pack_documents(random_texts(60, seed=5), TOKENS, 64)[:4]

    def batches(seed: int) -> list[dict[str, torch.Tensor]]:
        collator = DataCollatorForBlankInfilling(TOKENS, max_length=64, seed=seed)
        return [collator(samples) for _ in range(3)]

    first, again, other = batches(0), batches(0), batches(1)
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(first[0]["input_ids"], first[1]["input_ids"])  # the counter moves on
    assert not all(torch.equal(a["input_ids"], c["input_ids"]) for a, c in zip(first, other, strict=True))


def test_dataloader_gives_the_collator_batches() -> None:
    samples = pack_documents(random_texts(60, seed=6), TOKENS, 48)
    loader = DataLoader(samples, batch_size=3, collate_fn=DataCollatorForBlankInfilling(TOKENS, max_length=48))
    direct = DataCollatorForBlankInfilling(TOKENS, max_length=48)
    for number, batch in enumerate(loader):
        expected = direct(samples[3 * number : 3 * number + 3])
        assert all(torch.equal(batch[key], expected[key]) for key in expected)
    assert number + 1 == math.ceil(len(samples) / 3)


def test_dataloader_workers_give_the_same_batches_as_one_process() -> None:
    """Worker w of n draws its k-th batch with the original's seed (k n + w), the batch's index: the same batches
    as without workers (persistent workers keep their counters across epochs)."""
    samples = pack_documents(random_texts(60, seed=6), TOKENS, 48)
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=48)
    single = list(DataLoader(samples, batch_size=3, collate_fn=collator))
    loader = DataLoader(
        samples, batch_size=3, collate_fn=DataCollatorForBlankInfilling(TOKENS, max_length=48), num_workers=2,
        persistent_workers=True, multiprocessing_context="fork",
    )  # fmt: skip
    workers = list(loader)
    assert len(workers) == len(single) > 4
    for a, b in zip(single, workers, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_batch_holds_exactly_the_forward_arguments_and_trainer_trains(tmp_path: Path) -> None:
    """Three `Trainer` steps on packed samples with the default `remove_unused_columns`: finite losses."""
    samples = pack_documents(random_texts(80, seed=7), TOKENS, 48)
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=48, bert_prob=0.5, gap_sentence_prob=0.25)
    assert set(collator(samples[:2])) == {
        "input_ids", "position_ids", "block_position_ids", "attention_mask", "prefix_length", "labels"
    }  # fmt: skip
    model = tiny_model().train()
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=samples, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)


# ---- edge cases ---------------------------------------------------------------------------------------------------


def test_long_short_and_headless_samples() -> None:
    """Over-long samples are cut to max_length, too short ones skipped (counted), a missing [CLS] is added."""
    rng = random.Random(8)
    long_sample = [CLS, *random_document(rng, 30)]
    short_sample = [CLS, EOS]
    headless = random_document(rng, 3) + [EOS]
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=40, bert_prob=0.0, gap_sentence_prob=1.0)
    batch = collator([{"input_ids": long_sample}, {"input_ids": short_sample}, {"input_ids": torch.tensor(headless)}])
    assert batch["input_ids"].shape[0] == 2
    assert collator.truncated_samples == 1 and collator.skipped_samples == 1
    assert reconstruct(batch, 0, {MASK}) == long_sample[:40]
    assert reconstruct(batch, 1, {MASK}) == [CLS, *headless]
    assert int(batch["position_ids"].max()) < 40
    with pytest.raises(ValueError, match="No sample of this batch has 3 tokens or more; pack short documents"):
        collator([{"input_ids": short_sample}, {"input_ids": []}])


def test_batch_whose_spans_never_fit_is_redrawn_or_refused() -> None:
    """Packed short documents: when the spans drawn fit no sample, the original drops every sample (and then fails
    on the empty batch); the collator redraws with the next counter, and refuses samples that never hold a span."""
    seven_words = [t for start in range(6) for t in (CLS, *PLAIN_WORDS[start : start + 7], EOS)][:48]
    collator = DataCollatorForBlankInfilling(TOKENS, max_length=48, bert_prob=1.0)
    batch = collator([{"input_ids": seven_words}])
    assert collator.count > 1  # the first draws (counter 0, 1, ...) left no blank
    assert reconstruct(batch, 0, {MASK}) == seven_words
    one_word = [token for word in PLAIN_WORDS[:16] for token in (CLS, word, EOS)]
    with pytest.raises(ValueError, match=r"100 draws left no blank in this batch.*median 1 tokens.*--join-lines"):
        DataCollatorForBlankInfilling(TOKENS, max_length=48, bert_prob=1.0)([{"input_ids": one_word}])


def test_settings_are_checked() -> None:
    for settings, message in (
        ({"bert_prob": 0.8, "gap_sentence_prob": 0.4}, "exceeds 1"),
        ({"bert_prob": 1.5}, r"bert_prob=1.5 must be in \[0, 1\]"),
        ({"gpt_min_ratio": 0.0}, "gpt_min_ratio"),
        ({"seed": -1}, "non-negative"),
        ({"short_seq_prob": 0.1, "max_length": 20}, "must be >= 34"),
    ):
        with pytest.raises(ValueError, match=message):
            DataCollatorForBlankInfilling(TOKENS, **settings)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[CLS]": 1, "[MASK]": 2, "<|startofpiece|>": 3, "<|endofpiece|>": 4, "[UNK]": 5}
    no_task_masks = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        pad_token="[PAD]", eos_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", unk_token="[UNK]",
        additional_special_tokens=["<|startofpiece|>", "<|endofpiece|>"],
    )  # fmt: skip
    DataCollatorForBlankInfilling(no_task_masks)
    with pytest.raises(ValueError, match=r"task_mask=True needs \[gMASK\] and \[sMASK\]"):
        DataCollatorForBlankInfilling(no_task_masks, task_mask=True)
    no_sop = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[CLS]": 1, "[MASK]": 2, "[UNK]": 3}, "[UNK]")),
        pad_token="[PAD]", eos_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", unk_token="[UNK]",
    )  # fmt: skip
    with pytest.raises(ValueError, match="The tokenizer has no sop token"):
        DataCollatorForBlankInfilling(no_sop)


def test_pretraining_script_mixtures_and_options() -> None:
    collator = DataCollatorForBlankInfilling.from_pretraining_script("ds_block_10B", TOKENS, max_length=64)
    assert (collator.bert_prob, collator.gap_sentence_prob, collator.gpt_min_ratio) == (0.5, 0.3, 0.25)
    assert collator.task_mask and collator.short_seq_prob == 0.02 and collator.max_length == 64
    assert set(PRETRAINING_MIXTURES) >= {"ds_block_base", "ds_block_large", "ds_block_10B_chinese"}
    with pytest.raises(ValueError, match="Unknown pretraining script 'ds_block_huge'"):
        DataCollatorForBlankInfilling.from_pretraining_script("ds_block_huge", TOKENS)
    samples = pack_documents(random_texts(30, seed=9), TOKENS, 40)[:3]
    batch = DataCollatorForBlankInfilling(TOKENS, max_length=40, block_position_encoding=False, pad_to_multiple_of=16)(
        samples
    )
    assert "block_position_ids" not in batch and batch["input_ids"].shape[1] % 16 == 0
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


# ---- corpus -------------------------------------------------------------------------------------------------------


def test_read_corpus_txt_jsonl_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first document\n\n  \nsecond document\n")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n\n{"text": "  "}\n{"text": "fourth"}\n')
    (tmp_path / "notes.md").write_text("ignored in a folder")
    assert read_corpus(tmp_path / "a.txt") == ["first document", "second document"]
    assert read_corpus([tmp_path / "a.txt", str(tmp_path / "b.jsonl")])[2:] == ["third", "fourth"]
    assert read_corpus(tmp_path) == ["first document", "second document", "third", "fourth"]
    separators = tmp_path / "separators.jsonl"  # JSON strings may hold U+2028 and U+0085 unescaped
    separators.write_text('{"text": "one\u2028line"}\r\n{"text": "next\x85line"}\n', encoding="utf-8")
    assert read_corpus(separators) == ["one\u2028line", "next\x85line"]  # only newlines end lines


def test_read_corpus_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(ValueError, match="holds no text"):
        read_corpus(tmp_path / "blank.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "field.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r'field.jsonl:1: expected an object with a string "text" field'):
        read_corpus(tmp_path / "field.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .txt or .jsonl file"):
        read_corpus(tmp_path / "data.csv")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_corpus(tmp_path / "latin1.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .txt or .jsonl file"):
        read_corpus(tmp_path / "empty")


def test_pack_documents_packs_every_token_once() -> None:
    """Packed samples hold `[CLS] doc [eos]` runs of at most max_length tokens; dropping the [CLS] that restarts a
    split document gives back every document's tokens, in order."""
    texts = random_texts(50, seed=10) + ["", "   ", " ".join(TINY_WORDS[:20] * 6)]  # two empty, one long
    samples = pack_documents(texts, TOKENS, 40)
    assert samples.skipped_empty == 2 and samples.documents == 51 and samples.split_documents > 0
    assert all(len(sample["input_ids"]) <= 40 and sample["input_ids"][0] == CLS for sample in samples)
    assert all(len(sample["input_ids"]) >= 39 for sample in samples[:-1])  # 39: no room for [CLS] + a token
    stream: list[int] = []
    for sample in samples:
        ids = sample["input_ids"]
        stream += ids[1:] if stream and stream[-1] != EOS else ids  # a continuation's [CLS] is not the text's
    expected = [
        t for text in texts if text.strip() for t in [CLS, *TOKENS.encode(text, add_special_tokens=False), EOS]
    ]
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 8  # only a short tail is dropped


def test_pack_documents_one_per_sample_truncates_and_skips_short() -> None:
    texts = ["the king sees the old ship .", "a bird .", " ".join(TINY_WORDS[:30]), "\t"]
    samples = pack_documents(texts, TOKENS, 16, pack=False)
    assert [len(sample["input_ids"]) for sample in samples] == [9, 16]
    assert samples[1]["input_ids"][-1] != EOS  # cut: no [eos], as the original strips long documents
    assert (samples.skipped_short, samples.truncated, samples.skipped_empty) == (1, 1, 1)
    with pytest.raises(ValueError, match="No sample left to train on"):
        pack_documents(["a bird ."], TOKENS, 16)
    with pytest.raises(ValueError, match="text 1 is a int"):
        pack_documents(["a bird .", 3], TOKENS, 16)  # type: ignore[list-item]
