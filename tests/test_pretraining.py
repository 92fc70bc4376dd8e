"""`glm-hf pretrain` (glm_hf.pretraining): arguments, data split, the Part-B-only loss, the run and its outputs."""

from __future__ import annotations

import json
import math
import random
import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from glm_hf.blank_infilling import DataCollatorForBlankInfilling, pack_documents
from glm_hf.cli import main as cli_main
from glm_hf.default_model import default_model_folder
from glm_hf.modeling import GLMConfig, GLMForConditionalGeneration
from glm_hf.pretraining import (
    BlankInfillingTrainer,
    group_lines,
    parse_config_overrides,
    plot_loss_curves,
    single_token_fill_accuracy,
    split_documents,
)

from conftest import ASSETS

WORDS = "the king queen ghost castle night sword father mother son friend speaks walks sleeps sees a of and in".split()
TINY_SHAPE = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,max_position_embeddings=65"


def corpus_lines(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_folder())


def tiny_lm(tokenizer) -> GLMForConditionalGeneration:
    torch.manual_seed(0)
    config = GLMConfig.from_preset("glm-large", **parse_config_overrides(TINY_SHAPE), hidden_dropout_prob=0.0)
    assert len(tokenizer) <= config.vocab_size
    return GLMForConditionalGeneration(config).eval()


def test_config_overrides_are_typed_and_malformed_ones_are_refused():
    assert parse_config_overrides("hidden_size=128, layer_norm_eps=1e-5,block_position_encoding=false,x=y") == {
        "hidden_size": 128,
        "layer_norm_eps": 1e-5,
        "block_position_encoding": False,
        "x": "y",
    }
    assert parse_config_overrides(None) == {}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_config_overrides("hidden_size")


def test_split_is_seeded_disjoint_and_keeps_every_document():
    documents = [f"document {index}" for index in range(40)]
    train, held_out = split_documents(documents, 0.1, seed=3)
    assert (train, held_out) == split_documents(documents, 0.1, seed=3)
    assert len(held_out) == 4 and not set(train) & set(held_out) and len(train) + len(held_out) == 40
    assert split_documents(documents, 0.1, seed=4)[1] != held_out
    with pytest.raises(ValueError, match="at least two"):
        split_documents(["one"], 0.5, seed=0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_documents(documents, 1.0, seed=0)


def test_group_lines_joins_short_lines_into_documents_of_enough_words():
    lines = ["a b c", "d e", "f g h i", "j"]
    assert group_lines(lines, min_words=5) == ["a b c\nd e", "f g h i\nj"]
    assert group_lines(lines, min_words=100) == ["a b c\nd e\nf g h i\nj"]


def test_trainer_loss_on_part_b_columns_equals_the_models_full_loss(tokenizer, tmp_path):
    model = tiny_lm(tokenizer)
    samples = pack_documents(corpus_lines(40), tokenizer, max_length=48)
    batch = DataCollatorForBlankInfilling(tokenizer, max_length=48, bert_prob=1.0, seed=1)(samples[:4])
    from transformers import TrainingArguments

    trainer = BlankInfillingTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )
    with torch.no_grad():
        full = model(**batch).loss
        part_b = trainer.compute_loss(model, batch)
    assert "labels" in batch  # the caller's batch is left as it was
    torch.testing.assert_close(part_b, full, rtol=1e-5, atol=1e-6)


def test_fill_accuracy_counts_one_blank_per_line_and_the_unigram_baseline(tokenizer):
    model = tiny_lm(tokenizer)
    training = ["the king and the ghost of the castle", "the night"]
    held_out = ["the sword", "the king sleeps", "...", "a ghost"]
    result = single_token_fill_accuracy(model, tokenizer, held_out, training, seed=0, words_only=True)
    assert result.blanks == 3  # "..." has no word to hide
    assert result.unigram_token == "the"
    hidden = {"the sword": ["the", "sword"], "the king sleeps": ["the", "king", "sleeps"], "a ghost": ["a", "ghost"]}
    rng = random.Random(0)
    expected = sum(rng.choice(words) == "the" for words in hidden.values()) / 3
    assert result.unigram_accuracy == pytest.approx(expected)
    assert 0.0 <= result.accuracy <= 1.0
    with_punctuation = single_token_fill_accuracy(model, tokenizer, held_out + ["hamletesque"], training, seed=0)
    assert with_punctuation.blanks == 4  # "..." is three one-token marks; "hamletesque" is three pieces, no blank
    with pytest.raises(ValueError, match="no token to count"):
        single_token_fill_accuracy(model, tokenizer, held_out, ["..."], seed=0, words_only=True)


def test_fill_accuracy_is_one_for_a_model_that_knows_the_answer(tokenizer):
    """Logits that put the hidden token first at [sop] score 100%: the measure reads the right column and token."""
    model = tiny_lm(tokenizer)
    held_out = ["the king sleeps", "a ghost walks", "the night"]
    rng = random.Random(0)  # the draws single_token_fill_accuracy makes: every token of these lines is a blank
    hidden = [rng.choice(tokenizer.encode(line, add_special_tokens=False)) for line in held_out]

    def answer_at_sop(module, args, kwargs, output):
        logits = torch.zeros_like(output.logits)
        sop_rows, sop_columns = (kwargs["input_ids"] == model.config.sop_token_id).nonzero(as_tuple=True)
        logits[sop_rows, sop_columns, torch.tensor(hidden)[sop_rows]] = 1.0
        output.logits = logits
        return output

    model.register_forward_hook(answer_at_sop, with_kwargs=True)
    result = single_token_fill_accuracy(model, tokenizer, held_out, ["the the"], seed=0)
    assert result.accuracy == 1.0 and result.blanks == 3


def test_loss_plot_is_written_and_needs_losses(tmp_path):
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.7}]
    path = plot_loss_curves(history, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no losses"):
        plot_loss_curves([{"step": 1}], tmp_path / "none.png")


def test_pretrain_command_trains_evaluates_saves_and_resumes(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in corpus_lines(120)))
    common = [
        "--train_files", str(corpus),
        "--eval_fraction", "0.1",
        "--config", "glm-large",
        "--config_overrides", TINY_SHAPE,
        "--join_lines", "20",
        "--max_length", "48",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "3e-3",
        "--logging_steps", "1",
        "--eval_strategy", "steps",
        "--eval_steps", "2",
        "--save_steps", "2",
        "--report_to", "none",
        "--use_cpu",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    output = tmp_path / "run"
    cli_main(["pretrain", *common, "--output_dir", str(output), "--max_steps", "4"])
    metrics = json.loads((output / "train_metrics.json").read_text())
    assert math.isfinite(metrics["eval_loss"]) and 0 < metrics["eval_loss"] < 20
    assert (output / "loss_curves.png").is_file() and (output / "model.safetensors").is_file()
    assert (output / "tokenizer.json").is_file()
    history = json.loads((output / "log_history.json").read_text())
    assert sum("eval_loss" in entry for entry in history) >= 2

    # Resume from the step-2 checkpoint: the run continues at step 3 instead of starting again.
    resumed = tmp_path / "resumed"
    checkpoint = output / "checkpoint-2"
    cli_main(
        ["pretrain", *common, "--output_dir", str(resumed), "--max_steps", "4"]
        + ["--resume_from_checkpoint", str(checkpoint)]
    )
    resumed_history = json.loads((resumed / "log_history.json").read_text())
    steps = [entry["step"] for entry in resumed_history if "loss" in entry]
    assert steps[0] <= 2 and steps[-1] == 4 and 3 in steps
    assert [path.name for path in resumed.glob("checkpoint-*")] == ["checkpoint-4"]  # a restart would save step 2
    # Exactly the uninterrupted run: the same masks (the collator's draw counter came back with the checkpoint),
    # the same losses and weights.
    assert json.loads((checkpoint / "blank_infilling_collator.json").read_text()) == {"next_draw": 2}

    def losses(entries: list[dict]) -> dict[int, float]:
        return {entry["step"]: entry["loss"] for entry in entries if "loss" in entry and entry["step"] > 2}

    assert losses(resumed_history) == losses(history)
    assert_same_weights(resumed / "model.safetensors", output / "model.safetensors")

    # transformers' spelling for "the last checkpoint in --output_dir": resumes from checkpoint-4 of `resumed`.
    cli_main(
        ["pretrain", *common, "--output_dir", str(resumed), "--max_steps", "4", "--resume_from_checkpoint", "True"]
    )
    with pytest.raises(SystemExit, match="resumes from the last checkpoint-.* but there is none"):
        cli_main(["pretrain", *common, "--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "True"])


def test_pretrain_reports_bad_arguments_clearly(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main(["pretrain", "--train_files", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")])
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines(10)))
    with pytest.raises(SystemExit, match="neither a preset"):
        cli_main(["pretrain", "--train_files", str(corpus), "--config", "glm-huge", "--output-dir", str(tmp_path)])


def test_every_evaluation_draws_the_same_masks_and_leaves_the_training_draws(tokenizer, tmp_path):
    from transformers import TrainingArguments

    samples = pack_documents(corpus_lines(60), tokenizer, max_length=48)
    collator = DataCollatorForBlankInfilling(tokenizer, max_length=48, bert_prob=1.0, seed=2)
    collator([samples[0]])  # a training batch was drawn
    trainer = BlankInfillingTrainer(
        model=tiny_lm(tokenizer),
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, prediction_loss_only=True),
        eval_dataset=samples,
        data_collator=collator,
    )
    first, second = trainer.evaluate()["eval_loss"], trainer.evaluate()["eval_loss"]
    assert first == second and math.isfinite(first)
    assert trainer.data_collator is collator and collator.count == 1


@pytest.mark.parametrize(
    "wrong, named",
    [
        (["--max_step", "2"], "unrecognized arguments: --max_step 2"),  # an abbreviation of --max_steps
        (["--learning_rat", "1e-3"], "unrecognized arguments: --learning_rat 1e-3"),
        (["--max_steps", "two"], "argument --max_steps/--max-steps: invalid int value: 'two'"),
    ],
)
def test_pretrain_refuses_unknown_abbreviated_and_bad_options_with_the_short_usage(
    tmp_path: Path, wrong: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pretrain", "--train_files", "corpus.txt", "--output_dir", str(tmp_path / "o"), *wrong])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert f"glm-hf pretrain: error: {named}" in stderr
    assert len(stderr.splitlines()) == 2  # the short usage, not every TrainingArguments field
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(
    not (ASSETS / "corpora" / "en" / "hamlet_gut.txt").is_file(), reason="needs the shared corpora ($GLM_HF_ASSETS)"
)
def test_the_readme_pretrain_example_runs_as_written_on_a_corpus_of_short_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """The README's command, with its placeholders filled (a verse corpus, the BERT vocabulary) and fewer steps."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    command = re.search(r"glm-hf pretrain (--train-files .*?)\n#", readme, re.DOTALL).group(1)
    argv = shlex.split(re.sub(r"\[[^\]]*\]", "", command.replace("\\\n", " ")))
    values = {"--train-files": [str(ASSETS / "corpora" / "en" / "hamlet_gut.txt")], "--vocab-dir": [str(ASSETS)]}
    values.update({"--output-dir": [str(tmp_path / "run")], "--max-steps": ["4"], "--eval-steps": ["2"]})
    filled: list[str] = []
    for arg in argv:
        if arg.startswith("--"):
            option = arg
            filled.append(arg)
            filled.extend(values.get(option, []))
        elif option not in values:
            filled.append(arg)
    cli_main(["pretrain", *filled])
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert math.isfinite(metrics["eval_loss"])
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not [warning for warning in recwarn if "pin_memory" in str(warning.message)]  # no pinning on a CPU
    # The run folder is ready for the Hub: glm-hf push leaves the Trainer's state behind.
    assert {"training_args.bin", "checkpoint-4"} <= {path.name for path in (tmp_path / "run").iterdir()}
    cli_main(["push", str(tmp_path / "run"), "user/glm-verse", "--dry-run"])
    listed = capsys.readouterr().out
    assert "model.safetensors" in listed and "nothing was uploaded" in listed
    assert "left out (training state or --exclude): checkpoint-4, training_args.bin" in listed


def assert_same_weights(first: Path, second: Path) -> None:
    from safetensors.torch import load_file

    one, two = load_file(first), load_file(second)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name
