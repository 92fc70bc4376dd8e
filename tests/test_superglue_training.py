"""SuperGLUE fine-tuning end to end: collated batches, the WSC loss, the command line and `Trainer` on real RTE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import glm_hf
from glm_hf.superglue import (
    TASK_SETTINGS,
    ClozeTrainer,
    DataCollatorForCloze,
    SuperGLUEDataset,
    finetune,
    parse_arguments,
    read_split,
)

from conftest import ASSETS

HANDMADE = Path(__file__).parent / "fixtures" / "superglue_handmade"
RTE = ASSETS / "superglue" / "RTE"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
needs_assets = pytest.mark.skipif(
    not (VOCAB.is_file() and (RTE / "train.jsonl").is_file()),
    reason=f"shared assets (BERT vocab, SuperGLUE RTE) not found in {ASSETS}",
)


def small_bert_glm(seed: int = 0) -> tuple[glm_hf.GLMForMultipleChoice, glm_hf.GLMTokenizerFast]:
    """A random 2-layer, 64-wide GLM with the real BERT vocabulary (no dropout), and its tokenizer."""
    tokenizer = glm_hf.build_tokenizer("bert-base-uncased", ASSETS)
    config = glm_hf.GLMConfig(
        vocab_size=30592,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=257,
        embedding_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        **glm_hf.FAMILY_TOKEN_IDS["bert-base-uncased"],
    )
    torch.manual_seed(seed)
    return glm_hf.GLMForMultipleChoice(config), tokenizer


@needs_assets
def test_collator_pads_rows_and_candidates() -> None:
    model, tokenizer = small_bert_glm()
    examples = read_split("record", HANDMADE / "ReCoRD", "val")
    dataset = SuperGLUEDataset(examples, tokenizer, model.config, "record", max_length=128, split="val")
    train = SuperGLUEDataset(
        read_split("record", HANDMADE / "ReCoRD", "train"), tokenizer, model.config, "record", max_length=128
    )
    features = [dataset[0], train[2]]  # 5 and 4 candidates
    batch = DataCollatorForCloze(pad_token_id=0)(features)
    counts = [len(feature["input_ids"]) for feature in features]
    assert batch["input_ids"].shape[:2] == (2, max(counts))
    assert batch["choice_mask"].sum(1).tolist() == counts
    assert batch["prefix_length"].shape == (2, max(counts)) and batch["target_ids"].shape == batch["input_ids"].shape
    assert counts == [5, 4]
    assert batch["labels"].tolist() == [examples[0].meta["candidates"].index("NASA"), 0]
    # Padded candidates repeat the first row; padded columns are eos with no attention and no target.
    short = counts.index(min(counts))
    assert torch.equal(batch["input_ids"][short, -1], batch["input_ids"][short, 0])
    longest = max(len(row) for feature in features for row in feature["input_ids"])
    first_row = features[0]["input_ids"][0]
    assert batch["attention_mask"][0, 0].tolist() == [1] * len(first_row) + [0] * (longest - len(first_row))
    assert (batch["target_ids"][0, 0, len(first_row) :] == -100).all()
    with torch.no_grad():
        output = model(**batch)
    assert output.logits.shape == (2, max(counts))
    assert torch.isfinite(output.loss)
    assert (output.logits[short, min(counts) :] <= torch.finfo(output.logits.dtype).min).all()


@needs_assets
def test_wsc_mix_loss_adds_the_right_referents_score(tmp_path: Path) -> None:
    model, tokenizer = small_bert_glm()
    examples = read_split("wsc", HANDMADE / "WSC", "train")
    dataset = SuperGLUEDataset(examples, tokenizer, model.config, "wsc", split="train")
    assert dataset.max_length == 128 and dataset.pvp.pattern_id == 2  # the released recipe
    batch = DataCollatorForCloze(pad_token_id=0)([dataset[i] for i in range(len(dataset))])
    assert batch["labels"].tolist() == [0, 0, 0]  # span 1 is candidate 0
    args = glm_hf.superglue.default_training_arguments(
        "wsc", tmp_path, use_cpu=True, eval_strategy="no", save_strategy="no", load_best_model_at_end=False
    )
    model.config.cloze_length_penalty = 1.0
    trainer = ClozeTrainer(model=model, args=args, loss_func="mix")
    with torch.no_grad():
        loss, output = trainer.compute_loss(model, dict(batch), return_outputs=True)
        scores = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
    expected = torch.nn.functional.cross_entropy(scores, batch["labels"]) - scores[:, 0].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The length penalty divides each candidate's summed log-probability by its number of target tokens.
    target_counts = (batch["target_ids"] != -100).sum(-1)
    with torch.no_grad():
        summed = model(**{k: v for k, v in batch.items() if k != "labels"}, length_penalty=0.0).logits
    real = batch["choice_mask"].bool()
    assert torch.allclose(scores[real], (summed / target_counts)[real], rtol=1e-5)


def test_command_line_takes_task_defaults_unless_given(tmp_path: Path) -> None:
    options, args = parse_arguments(
        ["--task", "WSC", "--data-dir", str(tmp_path), "--model", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    )
    assert options.task == "wsc"
    wsc = TASK_SETTINGS["wsc"]
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (1e-5, wsc.epochs, 16)
    assert (args.weight_decay, args.warmup_steps, args.metric_for_best_model) == (0.1, 0.1, "accuracy")
    assert args.eval_strategy == "epoch" and args.output_dir == str(tmp_path / "o")
    options, args = parse_arguments(
        ["--task", "multirc", "--data-dir", ".", "--model", ".", "--output-dir", "o", "--pattern-id", "2"]
        + ["--learning_rate", "3e-5", "--num-train-epochs=2", "--eval_strategy", "no", "--load_best_model_at_end",
           "False"]
    )  # fmt: skip
    assert options.pattern_id == 2
    assert (args.learning_rate, args.num_train_epochs, args.eval_strategy) == (3e-5, 2, "no")
    assert args.per_device_train_batch_size == 64 and args.metric_for_best_model == "f1a"
    _, args = parse_arguments(["--task", "rte", "--data-dir", ".", "--model", ".", "--output_dir", "x"])
    assert args.output_dir == "x"  # TrainingArguments' own spelling works like --output-dir


@pytest.mark.parametrize(
    "wrong, named",
    [
        (["--max_step", "2"], "unrecognized arguments: --max_step 2"),  # an abbreviation of --max_steps
        (["--learning_rat", "1e-3"], "unrecognized arguments: --learning_rat 1e-3"),
        (["--max", "2"], "unrecognized arguments: --max 2"),  # would abbreviate --max-length
        (["--learning_rate", "fast"], "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
    ],
)
def test_command_line_refuses_unknown_abbreviated_and_bad_options_with_the_short_usage(
    wrong: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--task", "rte", "--data-dir", ".", "--model", ".", "--output-dir", "o", *wrong]
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv, prog="glm-hf finetune")
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert f"glm-hf finetune: error: {named}" in stderr
    assert stderr.startswith("usage: glm-hf finetune") and len(stderr.splitlines()) < 12  # not every TrainingArgument


@needs_assets
def test_trainer_on_real_rte_lowers_the_loss_and_writes_predictions(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = tmp_path / "RTE"
    data.mkdir()
    lines = (RTE / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:32]) + "\n")
    (data / "val.jsonl").write_text("\n".join((RTE / "val.jsonl").read_text().splitlines()[:8]) + "\n")
    model, tokenizer = small_bert_glm()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    output = tmp_path / "out"
    _, args = parse_arguments(
        ["--task", "rte", "--data-dir", str(data), "--model", str(folder), "--output-dir", str(output)]
        + ["--num_train_epochs", "12", "--per_device_train_batch_size", "32", "--learning_rate", "2e-3"]
        + ["--warmup_steps", "0", "--lr_scheduler_type", "constant", "--eval_strategy", "no", "--save_strategy",
           "no", "--load_best_model_at_end", "False", "--logging_steps", "1", "--logging_strategy", "steps",
           "--use_cpu", "True", "--seed", "0"]
    )  # fmt: skip
    results = finetune("rte", data, folder, output, training_args=args, max_length=128)

    assert results["pattern_id"] == 0 and results["multi_token"] is False
    assert results["train"]["global_step"] == 12  # one batch of the 32 lines per epoch
    losses = results["train"]["losses"]  # one per step: the same 32 examples again and again
    assert len(losses) == 12
    assert losses[-1] < 0.8 * losses[0], losses
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["val"]) == {"accuracy"} and 0.0 <= metrics["val"]["accuracy"] <= 100.0
    predictions = [
        json.loads(line) for line in (output / "predictions" / "val" / "RTE.jsonl").read_text().splitlines()
    ]
    assert [record["idx"] for record in predictions] == list(range(8))
    assert {record["label"] for record in predictions} <= {"entailment", "not_entailment"}
    assert (output / "model" / "config.json").is_file()
    assert results["test_predictions"] is None  # no test.jsonl in the folder


@needs_assets
def test_glm_hf_finetune_evaluates_each_epoch_keeps_the_best_and_predicts_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    from glm_hf.cli import main

    torch.set_num_threads(1)
    data = tmp_path / "RTE"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join((RTE / "train.jsonl").read_text().splitlines()[:8]) + "\n")
    val = (RTE / "val.jsonl").read_text().splitlines()[:4]
    (data / "val.jsonl").write_text("\n".join(val) + "\n")
    unlabeled = [json.dumps({key: value for key, value in json.loads(line).items() if key != "label"}) for line in val]
    (data / "test.jsonl").write_text("\n".join(unlabeled) + "\n")
    model, tokenizer = small_bert_glm()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    output = tmp_path / "out"
    runs: list[str] = []
    evaluation_loop = ClozeTrainer.evaluation_loop

    def counted(self, *args, metric_key_prefix: str = "eval", **kwargs):
        runs.append(metric_key_prefix)
        return evaluation_loop(self, *args, metric_key_prefix=metric_key_prefix, **kwargs)

    monkeypatch.setattr(ClozeTrainer, "evaluation_loop", counted)
    monkeypatch.setattr(transformers.utils.logging.get_logger("transformers"), "propagate", True)  # into caplog
    main(
        ["finetune", "--task", "rte", "--data-dir", str(data), "--model", str(tmp_path / "model")]
        + ["--output-dir", str(output), "--max-length", "96", "--num_train_epochs", "1"]
        + ["--per_device_train_batch_size", "8", "--use_cpu", "True"]
    )
    assert runs == ["eval", "predict"]  # the epoch's evaluation gives the val predictions; test is predicted once
    assert "missing keys" not in caplog.text  # the tied head is no missing key when the best epoch is reloaded
    assert not [warning for warning in recwarn if "pin_memory" in str(warning.message)]  # no pinning on a CPU
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["task"] == "rte" and metrics["max_length"] == 96
    assert metrics["train"]["global_step"] == 1
    test = [json.loads(line) for line in (output / "predictions" / "test" / "RTE.jsonl").read_text().splitlines()]
    assert [record["idx"] for record in test] == [0, 1, 2, 3]
    assert (output / "predictions" / "val" / "RTE.jsonl").is_file()
    state = json.loads(next(output.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] == pytest.approx(metrics["val"]["accuracy"])  # evaluated at the epoch, kept
    with pytest.raises(SystemExit, match="finetune"):
        main(["finetune", "--task", "rte", "--data-dir", str(tmp_path / "missing"), "--model", str(tmp_path / "model")]
             + ["--output-dir", str(tmp_path / "o2")])  # fmt: skip
