"""`draw_blank_infilling_example` / `glm-hf show-batch`: the PNG is written and its mask is the model's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

import glm_hf
from glm_hf.blank_infilling import DataCollatorForBlankInfilling, pack_documents
from glm_hf.cli import main
from glm_hf.default_model import DEFAULT_MODEL_DIR, REQUIRED_FILES
from glm_hf.visualize import MAX_DRAWN_TOKENS, draw_blank_infilling_example, example_attention_mask, show_batch

from conftest import ASSETS, tiny_model, tiny_word_tokenizer

TOKENS = tiny_word_tokenizer()
TEXTS = [
    "the king sees the old ship . she opens the door ! they walk on the long road .",
    "a bird finds the green tree ; the child reads a word . we keep the stone .",
    "the queen writes . his hand holds the light ; her house is quiet at night .",
]
OBJECTIVES = {"span": (1.0, 0.0), "sentence": (0.0, 1.0), "document": (0.0, 0.0)}
HAVE_DEFAULT_MODEL = all((DEFAULT_MODEL_DIR / name).is_file() for name in REQUIRED_FILES)


def collated(objective: str, max_length: int = 24) -> dict[str, torch.Tensor]:
    bert_prob, gap_sentence_prob = OBJECTIVES[objective]
    collator = DataCollatorForBlankInfilling(
        TOKENS, max_length=max_length, bert_prob=bert_prob, gap_sentence_prob=gap_sentence_prob, seed=1
    )
    return collator(pack_documents(TEXTS, TOKENS, max_length, pack=False))


def model_attends(batch: dict[str, torch.Tensor], row: int) -> torch.Tensor:
    """Where the tiny model's eager attention weights of `row` are non-zero (every layer and head), real tokens."""
    model = tiny_model(attn_implementation="eager")
    with torch.no_grad():
        attentions = model(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True).attentions
    length = int(batch["attention_mask"][row].sum())
    seen = torch.stack([weights[row, :, :length, :length] > 0 for weights in attentions])  # [layers, heads, n, n]
    assert (seen == seen[0, 0]).all()
    return seen[0, 0]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_png_written_and_plotted_mask_is_the_models(objective: str, tmp_path: Path) -> None:
    batch = collated(objective)
    lengths = batch["attention_mask"].sum(-1)
    row = int(lengths.argmin())  # the shortest row: its padding columns must not show
    assert int(lengths[row]) < batch["input_ids"].shape[1]
    figure = draw_blank_infilling_example(batch, TOKENS, tmp_path / "example.png", index=row)
    assert figure.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(figure.path).shape[:2]
    assert height > 300 and width > 300
    assert figure.prefix_length == int(batch["prefix_length"][row])
    assert len(figure.tokens) == figure.attention_mask.shape[0] == int(lengths[row])
    drawn = torch.from_numpy(figure.attention_mask)
    assert torch.equal(drawn, model_attends(batch, row))
    assert torch.equal(drawn, example_attention_mask(batch, row))
    prefix = figure.prefix_length
    assert drawn[:, :prefix].all() and not drawn[:prefix, prefix:].any()  # Part A: seen by all, sees no Part B
    assert torch.equal(drawn[prefix:, prefix:], torch.ones_like(drawn[prefix:, prefix:]).tril())  # Part B causal
    assert [p.name for p in tmp_path.iterdir()] == ["example.png"]  # no staging file left


def test_draw_refuses_bad_paths_indices_and_oversized_examples(tmp_path: Path) -> None:
    batch = collated("span")
    with pytest.raises(ValueError, match="give a path ending in .png"):
        draw_blank_infilling_example(batch, TOKENS, tmp_path / "example.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        draw_blank_infilling_example(batch, TOKENS, tmp_path / "missing" / "example.png")
    with pytest.raises(ValueError, match="index 7 is outside the batch of 3 rows"):
        draw_blank_infilling_example(batch, TOKENS, tmp_path / "example.png", index=7)
    long_texts = [" ".join(TEXTS * 8)]
    big = DataCollatorForBlankInfilling(TOKENS, max_length=200, bert_prob=1.0)(pack_documents(long_texts, TOKENS, 200))
    with pytest.raises(ValueError, match=f"at most {MAX_DRAWN_TOKENS} can be drawn legibly"):
        draw_blank_infilling_example(big, TOKENS, tmp_path / "example.png")
    assert not any(tmp_path.iterdir())


def test_show_batch_from_a_corpus_file(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{text}"}}\n' for text in TEXTS))
    figure = show_batch(None, tmp_path / "batch.png", tokenizer=TOKENS, input_path=corpus, objective="sentence")
    assert figure.path.is_file() and figure.tokens[0] == "[CLS]"
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        show_batch(None, tmp_path / "batch.png", tokenizer=TOKENS, input_path=corpus)
    with pytest.raises(ValueError, match="objective 'words' is not one of span, sentence, document"):
        show_batch(TEXTS, tmp_path / "other.png", tokenizer=TOKENS, objective="words")


def test_cli_show_batch_writes_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    TOKENS.save_pretrained(tmp_path / "tokenizer")
    output = tmp_path / "batch.png"
    arguments = ["show-batch", *TEXTS, "--output", str(output), "--vocab-dir", str(tmp_path / "tokenizer")]
    main([*arguments, "--objective", "document", "--seed", "4", "--max-length", "32"])
    assert output.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {output}" in capsys.readouterr().out
    first = output.read_bytes()
    main([*arguments, "--objective", "document", "--seed", "4", "--max-length", "32", "--overwrite"])
    assert output.read_bytes() == first  # same seed, same picture


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", "{tmp}/x.png", "--input", "{tmp}/missing.txt"], "Corpus path .*missing.txt does not exist"),
        (["--output", "{tmp}/x.gif"], "give a path ending in .png"),
        (["--output", "{tmp}/x.png", "--tokenizer", "gpt2"], "--tokenizer gpt2 needs --vocab-dir"),
        (["--output", "{tmp}/x.png", "--vocab-dir", "{tmp}/nowhere"], "--vocab-dir .*nowhere is not a folder"),
        (["a bird .", "--output", "{tmp}/x.png"], "No sample left to train on"),
    ],
)
def test_cli_show_batch_errors_are_clear(extra: list[str], message: str, tmp_path: Path) -> None:
    TOKENS.save_pretrained(tmp_path / "tokenizer")
    arguments = ["show-batch", *(part.replace("{tmp}", str(tmp_path)) for part in extra)]
    if "--vocab-dir" not in arguments and "--tokenizer" not in arguments:
        arguments += ["--vocab-dir", str(tmp_path / "tokenizer")]
    with pytest.raises(SystemExit, match=message):
        main(arguments)
    assert not (tmp_path / "x.png").exists()


def test_cli_show_batch_default_tokenizer(tmp_path: Path) -> None:
    """Without --vocab-dir the embedded default model's tokenizer is used (a clear error while it is missing)."""
    output = tmp_path / "batch.png"
    if HAVE_DEFAULT_MODEL:
        main(["show-batch", "--output", str(output)])
        assert output.is_file()
    else:
        with pytest.raises(SystemExit, match="embedded default model is incomplete"):
            main(["show-batch", "--output", str(output)])


@pytest.mark.skipif(
    not (ASSETS / "bert-base-uncased-vocab.txt").is_file(), reason=f"BERT vocabulary not found at {ASSETS}"
)
def test_show_batch_with_the_bert_vocabulary(tmp_path: Path) -> None:
    tokenizer = glm_hf.build_tokenizer("bert-base-uncased", ASSETS)
    figure = show_batch(None, tmp_path / "bert.png", tokenizer=tokenizer, max_length=48)
    assert figure.tokens[0] == "[CLS]" and "<|startofpiece|>" in figure.tokens
