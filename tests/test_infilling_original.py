"""Blank infilling with the REAL tokenizers builds the prompts of the ORIGINAL `generate_samples.py`.

The reference is `fixtures/original_generation_prompts.json`, written by
`fixtures/make_original_generation_prompts.py`, which runs the original `generate_samples` / `read_context` of
THUDM/GLM (with stand-ins for the distributed and CUDA parts) on ~30 texts per tokenizer family: the prompt text
after the appended mask, the context ids (`[CLS] text [eos]`) and the mask positions in the order they are filled.
Also checked here: the batched generation inputs, `fill_blanks` against a slow cache-free loop with a real
tokenizer, and the tokenizer files `glm-hf convert --vocab-dir` writes. The vocabularies come from the shared
assets (`GLM_HF_ASSETS`, default `../shared/assets` next to the repository).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import glm_hf
from glm_hf.cli import main
from glm_hf.infilling import encode_prompt, fill_blanks, mask_token_ids, prompt_text
from glm_hf.tokenization_glm import GLMTokenizerFast, build_tokenizer

from conftest import ASSETS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "original_generation_prompts.json"
RELEASED = Path(__file__).resolve().parent / "fixtures" / "original_checkpoints" / "released"
MASK_STRING = re.compile(r"\[(?:MASK|sMASK|gMASK)\]")

pytestmark = pytest.mark.skipif(
    not (ASSETS / "cog-pretrain.model").is_file(),
    reason=f"shared assets (vocabularies) not found at {ASSETS}; set GLM_HF_ASSETS",
)

FIXTURE_DATA = json.loads(FIXTURE.read_text(encoding="utf-8"))
FAMILIES = FIXTURE_DATA["families"]


@functools.cache
def tokenizer_of(family: str) -> GLMTokenizerFast:
    return build_tokenizer(family, ASSETS)


@functools.cache
def config_of(family: str) -> glm_hf.GLMConfig:
    return glm_hf.GLMConfig.from_preset(FAMILIES[family]["preset"])


def known_difference(family: str, text: str) -> str | None:
    """Why glm-hf's prompt differs from the original's on this text (None: it must not differ)."""
    if "MASK]" in text and not MASK_STRING.search(text):
        return (
            "the original appends no mask when 'MASK]' is anywhere in the text (so it has no blank to fill); "
            "glm-hf appends one unless a real [MASK]/[sMASK]/[gMASK] is there"
        )
    return None


def _prompt_cases() -> list:
    cases = []
    for family, data in FAMILIES.items():
        for index, prompt in enumerate(data["prompts"]):
            reason = known_difference(family, prompt["text"])
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(family, index, marks=marks, id=f"{family}-{index}"))
    return cases


def test_fixture_was_made_from_these_vocabularies():
    for name, sha in FIXTURE_DATA["vocab_sha256"].items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == sha, name
    assert min(len(data["prompts"]) for data in FAMILIES.values()) >= 30


@pytest.mark.parametrize(("family", "index"), _prompt_cases())
def test_prompt_ids_and_blank_positions_equal_the_original(family, index):
    prompt = FAMILIES[family]["prompts"][index]
    tokenizer, config = tokenizer_of(family), config_of(family)
    appended = prompt["raw_text"] != prompt["text"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = prompt_text(prompt["text"], config)
    assert text == prompt["raw_text"]
    # a text without a mask warns that the mask is appended; a text with one does not warn
    assert len([warning for warning in caught if "appending" in str(warning.message)]) == int(appended)
    ids = encode_prompt(tokenizer, config, text)
    assert ids == prompt["context_ids"]
    masks = set(mask_token_ids(config))
    # the blanks fill_blanks fills, in order: the positions of the mask ids
    assert [position for position, token in enumerate(ids) if token in masks] == prompt["mask_positions"]


def test_original_appends_the_family_mask_to_texts_without_one():
    """The fixture itself: without a mask the original appends ' [gMASK]' (task masks) or ' [MASK]' (BERT)."""
    for family, data in FAMILIES.items():
        appended = " [gMASK]" if data["task_mask"] else " [MASK]"
        plain = [prompt for prompt in data["prompts"] if "MASK]" not in prompt["text"]]
        assert len(plain) >= 5, family
        for prompt in plain:
            assert prompt["raw_text"] == prompt["text"] + appended
            assert len(prompt["mask_positions"]) == 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_build_inputs_for_generation_pads_left_and_starts_the_first_blank(family):
    tokenizer, config = tokenizer_of(family), config_of(family)
    usable = [
        prompt
        for prompt in FAMILIES[family]["prompts"]
        if prompt["mask_positions"] and known_difference(family, prompt["text"]) is None
    ]
    by_length = sorted(usable, key=lambda prompt: len(prompt["context_ids"]))
    chosen = [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    assert len({len(prompt["context_ids"]) for prompt in chosen}) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # texts without a mask warn
        inputs = tokenizer.build_inputs_for_generation([prompt["text"] for prompt in chosen], config)
    width = max(len(prompt["context_ids"]) for prompt in chosen)
    assert inputs["input_ids"].shape == (3, width + 1)
    for row, prompt in enumerate(chosen):
        context, pads = prompt["context_ids"], width - len(prompt["context_ids"])
        assert inputs["input_ids"][row].tolist() == [config.pad_token_id] * pads + context + [config.sop_token_id]
        assert inputs["attention_mask"][row].tolist() == [0] * pads + [1] * (len(context) + 1)
        assert inputs["position_ids"][row, pads:-1].tolist() == list(range(len(context)))
        assert inputs["position_ids"][row, -1].item() == prompt["mask_positions"][0]
        assert inputs["block_position_ids"][row].tolist() == [0] * width + [1]
    assert inputs["prefix_length"].tolist() == [width] * 3


# ---- fill_blanks with a real tokenizer against a slow reference ------------------------------------------------


def _tiny_model(preset: str, seed: int) -> glm_hf.GLMForConditionalGeneration:
    torch.manual_seed(seed)
    config = glm_hf.GLMConfig.from_preset(
        preset, num_hidden_layers=2, hidden_size=64, num_attention_heads=4, initializer_range=0.5
    )
    return glm_hf.GLMForConditionalGeneration(config).eval()


@torch.no_grad()
def _reference_fill(model, context: list[int], max_new_tokens: int) -> list[list[int]]:
    """Greedy, one token at a time, full recomputation without a cache: Part A is the context (bidirectional);
    each blank is [sop] + its tokens at the mask's position with block positions 1.., after the earlier spans."""
    config = model.config
    masks = set(mask_token_ids(config))
    ends = {config.eop_token_id, config.eos_token_id}
    ids, positions, blocks = list(context), list(range(len(context))), [0] * len(context)
    spans = []
    for mask_position in [index for index, token in enumerate(context) if token in masks]:
        span: list[int] = []
        while len(span) < max_new_tokens:
            block = [config.sop_token_id, *span]
            logits = model(
                input_ids=torch.tensor([ids + block]),
                position_ids=torch.tensor([positions + [mask_position] * len(block)]),
                block_position_ids=torch.tensor([blocks + list(range(1, len(block) + 1))]),
                prefix_length=len(context),
                use_cache=False,
            ).logits[0, -1]
            token = int(logits.argmax())
            if token in ends:
                break
            span.append(token)
        spans.append(span)
        block = [config.sop_token_id, *span]
        ids, positions, blocks = (
            ids + block,
            positions + [mask_position] * len(block),
            blocks + list(range(1, len(block) + 1)),
        )
    return spans


def _replace_masks(text: str, spans: list[str]) -> str:
    pieces = iter(spans)
    return MASK_STRING.sub(lambda _: next(pieces), text)


@torch.no_grad()
def _make_end_token_likely(model, end_id: int, like: int) -> None:
    """Make the (tied) embedding of an end token a slightly longer copy of a token greedy decoding picks, so that
    spans stop early at the end token instead of always running to max_new_tokens."""
    weight = model.get_output_embeddings().weight
    assert weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    weight[end_id] = 1.05 * weight[like]


@pytest.mark.parametrize(
    ("family", "preset", "end", "texts"),
    [
        (
            "gpt2",
            "glm-2b",
            "eop_token_id",
            ["The recipe needs flour, [sMASK], and two eggs. Bake it for [MASK] minutes.", "A short story: [gMASK]"],
        ),
        (
            "chinese-sp",
            "glm-large-chinese",
            "eos_token_id",
            ["这本书的作者是[sMASK]，出版于[MASK]年。", "请写一篇关于春天的短文。[gMASK]"],
        ),
    ],
)
def test_fill_blanks_with_a_real_tokenizer_equals_a_cache_free_reference(family, preset, end, texts):
    tokenizer = tokenizer_of(family)
    model = _tiny_model(preset, seed=0)
    config = model.config
    assert config.vocab_size == config_of(family).vocab_size  # the preset's padded vocabulary
    max_new_tokens = 6
    contexts = [encode_prompt(tokenizer, config, text) for text in texts]
    # the [gMASK] text's prompt holds no [eos], so its greedy path reaches the copied token unchanged
    _make_end_token_likely(model, getattr(config, end), _reference_fill(model, contexts[-1], max_new_tokens)[0][2])

    results = fill_blanks(model, tokenizer, texts, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    references = [_reference_fill(model, context, max_new_tokens) for context in contexts]
    for text, result, reference in zip(texts, results, references, strict=True):
        decoded = [tokenizer.decode(span, skip_special_tokens=True).strip() for span in reference]
        assert result.spans == decoded
        assert result.text == _replace_masks(text, decoded)
    lengths = [len(span) for reference in references for span in reference]
    # meaningful only if spans have tokens and some stop at the end token before max_new_tokens
    assert max(lengths) > 0 and min(lengths) < max_new_tokens, lengths


# ---- glm-hf convert --vocab-dir ---------------------------------------------------------------------------------


def test_convert_writes_tokenizer_files_that_autotokenizer_loads(tmp_path, capsys):
    output = tmp_path / "converted"
    main(
        ["convert", str(RELEASED), str(output), "--num-attention-heads", "4"]
        + ["--tokenizer", "bert-base-uncased", "--vocab-dir", str(ASSETS)]
    )
    capsys.readouterr()
    loaded = AutoTokenizer.from_pretrained(output)
    assert isinstance(loaded, GLMTokenizerFast)
    built = tokenizer_of("bert-base-uncased")
    for prompt in FAMILIES["bert-base-uncased"]["prompts"]:
        assert loaded.encode(prompt["raw_text"], add_special_tokens=False) == built.encode(
            prompt["raw_text"], add_special_tokens=False
        )
    for attribute in ("pad_token_id", "cls_token_id", "mask_token_id", "sop_token_id", "eop_token_id"):
        assert getattr(loaded, attribute) == getattr(built, attribute), attribute
    assert len(loaded) == len(built)


def test_convert_with_an_empty_vocab_dir_fails_naming_the_file_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "converted"
    with pytest.raises(SystemExit) as raised:
        main(
            ["convert", str(RELEASED), str(output), "--num-attention-heads", "4"]
            + ["--tokenizer", "bert-base-uncased", "--vocab-dir", str(empty)]
        )
    assert "bert-base-uncased-vocab.txt" in str(raised.value)
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no staging folder left behind
