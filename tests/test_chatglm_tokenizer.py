"""The fast ChatGLM-6B tokenizer equals the original `tokenization_chatglm.py` on a small ice_text-like model.

The fixture (`fixtures/make_original_chatglm_tokens.py`) holds the original tokenizer's ids, decodes, padded batches
and chat prompts over `fixtures/chatglm_tiny_ice_text.model`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from glm_hf.tokenization_chatglm import GMASK_TOKEN, chatglm_response, chatglm_tokenizer_from_sentencepiece

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = FIXTURES / "chatglm_tiny_ice_text.model"
FIXTURE = json.loads(gzip.decompress((FIXTURES / "original_chatglm_tokens.json.gz").read_bytes()))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return chatglm_tokenizer_from_sentencepiece(MODEL)


def _messages(history: list[list[str]], query: str) -> list[dict[str, str]]:
    messages = []
    for old_query, response in history:
        messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": response}]
    return [*messages, {"role": "user", "content": query}]


def _mismatches(tokenizer: PreTrainedTokenizerFast, items: list[dict[str, Any]]) -> list[str]:
    """Texts whose ids or decodes differ from the original's (empty when all are equal)."""
    wrong = []
    for item in items:
        ids = tokenizer(item["text"])["input_ids"]
        if ids != item["input_ids"]:
            wrong.append(f"ids of {item['text']!r}: {ids} != {item['input_ids']}")
        for key, skip in (("decode", False), ("decode_skip_special", True)):
            text = tokenizer.decode(item["input_ids"], skip_special_tokens=skip)
            if text != item[key]:
                wrong.append(f"{key} of {item['text']!r}: {text!r} != {item[key]!r}")
    return wrong


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _with_normalizer_flags(model: bytes, add_dummy_prefix: bool, remove_extra_whitespaces: bool) -> bytes:
    """`model` with its normalizer spec's two flags set (the spec is rewritten with fields 3 and 4 last)."""
    out = bytearray()
    for number, value in _raw_fields(model):
        if number == 3:
            kept = b"".join(_field(n, v) for n, v in _raw_fields(value) if n not in (3, 4))
            value = kept + _field(3, int(add_dummy_prefix)) + _field(4, int(remove_extra_whitespaces))
        out += _field(number, value)
    return bytes(out)


def _field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _raw_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """Top-level (field number, value) pairs of a protobuf message holding varints and length-delimited fields."""
    fields: list[tuple[int, bytes | int]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while data[pos] & 0x80:
            value |= (data[pos] & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
        value |= data[pos] << shift
        pos += 1
        return value

    while pos < len(data):
        key = varint()
        if key & 7 == 0:
            fields.append((key >> 3, varint()))
        elif key & 7 == 2:
            length = varint()
            fields.append((key >> 3, data[pos : pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {key & 7}")
    return fields


def test_fixture_model_is_the_one_the_original_ran_on() -> None:
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == FIXTURE["model_sha256"]
    assert MODEL.stat().st_size < 300_000


@pytest.mark.parametrize("kind", ["hand", "corpus"])
def test_ids_and_decodes_equal_the_original(tokenizer: PreTrainedTokenizerFast, kind: str) -> None:
    items = [item for item in FIXTURE["texts"] if item["kind"] == kind]
    assert items
    assert _mismatches(tokenizer, items) == []


@pytest.mark.parametrize("index", range(len(FIXTURE["normalizer_variants"])))
def test_other_sentencepiece_whitespace_settings_equal_the_original(tmp_path: Path, index: int) -> None:
    variant = FIXTURE["normalizer_variants"][index]
    model = tmp_path / "ice_text.model"
    model.write_bytes(
        _with_normalizer_flags(MODEL.read_bytes(), variant["add_dummy_prefix"], variant["remove_extra_whitespaces"])
    )
    assert _mismatches(chatglm_tokenizer_from_sentencepiece(model), variant["texts"]) == []


def test_tied_segmentations_have_the_original_score_and_text(tokenizer: PreTrainedTokenizerFast) -> None:
    """Documented boundary: SentencePiece sums float32 scores, so among equally scored segmentations (runs of a
    repeated character) its pick depends on rounding; the fast tokenizer may pick another one of the same score."""
    scores = [score for _, score in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]]
    items = [item for item in FIXTURE["texts"] if item["kind"] == "tie"]
    assert items
    differing = 0
    for item in items:
        ids = tokenizer(item["text"])["input_ids"]
        differing += ids != item["input_ids"]
        assert sum(scores[i] for i in ids[:-2]) == pytest.approx(sum(scores[i] for i in item["input_ids"][:-2]))
        assert tokenizer.decode(ids) == tokenizer.decode(item["input_ids"]) == item["decode"]
    assert differing < len(items)  # most ties still break as in the original


def test_hand_cases_cover_whitespace_newlines_and_special_strings() -> None:
    texts = [item["text"] for item in FIXTURE["texts"] if item["kind"] == "hand"]
    assert "" in texts and " " * 200 in texts and "a" + " " * 81 + "b" in texts
    assert any("\t" in text for text in texts) and any("\n\n\n" in text for text in texts)
    assert {"[MASK]", "[gMASK]", "<sop>", "<s> </s>", "<image_5>"} <= set(texts)


@pytest.mark.parametrize("name", sorted(FIXTURE["id_lists"]))
def test_decode_of_id_lists_equals_the_original(tokenizer: PreTrainedTokenizerFast, name: str) -> None:
    case = FIXTURE["id_lists"][name]
    assert tokenizer.decode(case["ids"]) == case["decode"]
    assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]


def test_pairs_end_with_gmask_sop_then_the_second_text_and_eop(tokenizer: PreTrainedTokenizerFast) -> None:
    for case in FIXTURE["pairs"]:
        assert tokenizer(case["text"], case["pair"])["input_ids"] == case["input_ids"]


@pytest.mark.parametrize("index", range(len(FIXTURE["batches"])))
def test_batches_are_padded_on_the_left_as_the_original(tokenizer: PreTrainedTokenizerFast, index: int) -> None:
    case = FIXTURE["batches"][index]
    encoded = tokenizer(case["texts"], padding=True)
    assert encoded["input_ids"] == case["input_ids"]
    # The original returns a 3-D mask (True = hidden) whose padded columns are hidden from every row; here the
    # usual 2-D mask marks those columns with 0 (the model derives positions and visibility from the ids).
    for mask, original in zip(encoded["attention_mask"], case["attention_mask"], strict=True):
        hidden_columns = [all(row[column] for row in original[0]) for column in range(len(mask))]
        assert mask == [0 if hidden else 1 for hidden in hidden_columns]
    assert "position_ids" not in encoded


def test_special_tokens_have_the_original_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    special = FIXTURE["special"]
    for name in ("bos_token", "eos_token", "mask_token", "pad_token", "unk_token"):
        assert str(getattr(tokenizer, name)) == special[name]["token"]
        assert getattr(tokenizer, f"{name}_id") == special[name]["id"]
    assert tokenizer.convert_tokens_to_ids(GMASK_TOKEN) == special["gmask_token"]["id"]
    for piece, index in special.items():
        if isinstance(index, int):
            assert tokenizer.convert_tokens_to_ids(piece) == index, piece
    assert sorted(tokenizer.all_special_tokens) == sorted(FIXTURE["all_special_tokens"])
    assert len(tokenizer) == FIXTURE["vocab_size"]
    assert tokenizer.padding_side == FIXTURE["padding_side"] == "left"


def test_num_image_tokens_shifts_every_id(tokenizer: PreTrainedTokenizerFast) -> None:
    unshifted = chatglm_tokenizer_from_sentencepiece(MODEL, num_image_tokens=0)
    item = FIXTURE["texts"][2]
    offset = FIXTURE["num_image_tokens"]
    assert unshifted(item["text"])["input_ids"] == [index - offset for index in item["input_ids"]]
    assert unshifted.decode([index - offset for index in item["input_ids"]]) == item["decode"]


@pytest.mark.parametrize("index", range(len(FIXTURE["chats"])))
def test_chat_template_gives_the_original_chat_prompt(tokenizer: PreTrainedTokenizerFast, index: int) -> None:
    """The rendered text is the original's prompt with the [gMASK] <sop> its tokenizer appends; encoded as
    transformers encodes chat templates (no special tokens added), the ids are the original's."""
    case = FIXTURE["chats"][index]
    messages = _messages(case["history"], case["query"])
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == case["prompt"] + "[gMASK]<sop>"
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"] == case["input_ids"]
    assert tokenizer([case["prompt"]])["input_ids"][0] == case["input_ids"]


def test_chat_template_refuses_a_system_message_and_unordered_roles(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(TemplateError, match="no system prompt"):
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], tokenize=False
        )
    with pytest.raises(TemplateError, match="alternate"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi again"}], tokenize=False
        )


def test_chat_template_renders_complete_rounds_of_a_conversation_ending_with_the_reply(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """As the original's P-Tuning recipe trains on a conversation: prompt, [gMASK] <sop>, the reply, <eop>."""
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "你好[gMASK]<sop>你好！<eop>"
    messages += [{"role": "user", "content": "再见"}, {"role": "assistant", "content": "再见！"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：再见\n答：[gMASK]<sop>再见！<eop>"
    prompt_ids = tokenizer("[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：再见\n答：")["input_ids"]
    reply_ids = tokenizer("再见！", add_special_tokens=False)["input_ids"]
    expected = prompt_ids + reply_ids + [tokenizer.eos_token_id]
    assert tokenizer.apply_chat_template(messages)["input_ids"] == expected


@pytest.mark.parametrize("index", range(len(FIXTURE["responses"])))
def test_chatglm_response_equals_the_original_process_response(index: int) -> None:
    case = FIXTURE["responses"][index]
    assert chatglm_response(case["text"]) == case["processed"]


def test_save_and_auto_load_round_trip_without_remote_code(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left"
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert _mismatches(loaded, [item for item in FIXTURE["texts"] if item["kind"] != "tie"]) == []
    case = FIXTURE["batches"][0]
    assert loaded(case["texts"], padding=True)["input_ids"] == case["input_ids"]
    chat = FIXTURE["chats"][-1]
    rendered = loaded.apply_chat_template(_messages(chat["history"], chat["query"]), tokenize=False)
    assert rendered == chat["prompt"] + "[gMASK]<sop>"


def test_missing_or_corrupt_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ice_text.model"):
        chatglm_tokenizer_from_sentencepiece(tmp_path / "ice_text.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(MODEL.read_bytes()[:1000])
    with pytest.raises(ValueError, match="SentencePiece model"):
        chatglm_tokenizer_from_sentencepiece(corrupt)
    without_tab = tmp_path / "without_tab.model"
    tab_piece = b"\x0a\x07<|tab|>"  # a piece message starts with its field 1, the piece string
    kept = [(n, v) for n, v in _raw_fields(MODEL.read_bytes()) if n != 1 or not v.startswith(tab_piece)]
    without_tab.write_bytes(b"".join(_field(n, v) for n, v in kept))
    with pytest.raises(ValueError, match="lacks the pieces"):
        chatglm_tokenizer_from_sentencepiece(without_tab)
    text = tmp_path / "text.model"
    text.write_text("not a model at all\n")
    with pytest.raises(ValueError, match="SentencePiece model"):
        chatglm_tokenizer_from_sentencepiece(text)
