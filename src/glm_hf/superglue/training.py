"""Fine-tuning GLM on a SuperGLUE task with `Trainer`, as the original `finetune_glm.py --cloze-eval` does.

`finetune(task, data_dir, model, output_dir, ...)` reads `train.jsonl` / `val.jsonl` (and `test.jsonl` when there),
builds the cloze features with the task's pattern, trains `GLMForMultipleChoice` with `Trainer` (cross-entropy over
the candidate scores; WSC: the original's `--loss-func mix`, that loss plus the negative score of the right
referent, with `--length-penalty 1`), evaluates every epoch, keeps the best epoch by the task's first metric, and
writes `metrics.json` and the prediction files (`predictions/val/<Task>.jsonl`, `predictions/test/<Task>.jsonl`).

The defaults per task are the released `config_tasks/task_*.sh` with `scripts/finetune_superglue.sh`: learning rate
1e-5 with linear decay after a 10% warm-up, weight decay 0.1, gradient clipping 1.0, and the epochs, batch size,
maximum length and pattern id of `settings.TASK_SETTINGS`. Every `TrainingArguments` option the user gives wins.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from ..infill_cli import write_jsonl
from ..progress import bytes_under, is_long_work, transformers_progress_bars
from ..training_arguments import given_fields, strict_parser
from .features import DataCollatorForCloze, SuperGLUEDataset
from .metrics import compute_task_metrics, predicted_labels
from .predictions import write_predictions
from .readers import SPLIT_FILES, TASKS, check_task, read_split
from .settings import LOSS_FUNCTIONS, TASK_SETTINGS


class ClozeTrainer(Trainer):
    """`Trainer` with the original's cloze losses: "cross_entropy" (the model's own loss over the candidate scores),
    "generative" (minus the mean score of the right candidate) or "mix" (their sum, the original's WSC recipe)."""

    def __init__(self, *args: Any, loss_func: str = "cross_entropy", **kwargs: Any):
        if loss_func not in LOSS_FUNCTIONS:
            raise ValueError(f"loss_func must be one of {', '.join(LOSS_FUNCTIONS)}, got {loss_func!r}.")
        super().__init__(*args, **kwargs)
        self.loss_func = loss_func
        # The candidate scores of every evaluation during training, by global step: the final predictions of the
        # validation set are read from here instead of running it once more.
        self.eval_scores: dict[int, np.ndarray] = {}
        if self.compute_metrics is not None:
            compute_metrics = self.compute_metrics

            def recording_compute_metrics(evaluation: Any) -> dict[str, float]:
                self.eval_scores[self.state.global_step] = _scores(evaluation.predictions)
                return compute_metrics(evaluation)

            self.compute_metrics = recording_compute_metrics

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        outputs = model(**inputs)
        loss = outputs.loss
        if self.loss_func != "cross_entropy" and inputs.get("labels") is not None:
            right = outputs.logits.gather(1, inputs["labels"].unsqueeze(1)).squeeze(1)
            generative = -right.float().mean()
            loss = generative if self.loss_func == "generative" else loss + generative
            outputs.loss = loss
        return (loss, outputs) if return_outputs else loss


def num_choices(dataset: SuperGLUEDataset) -> list[int]:
    """The number of real candidates of every example (the columns of its scores that count)."""
    if not dataset.multi_token:
        return [len(dataset.pvp.labels)] * len(dataset)
    return [len(dataset.pvp.candidates(example)) for example in dataset.examples]


def best_choices(scores: np.ndarray, counts: Sequence[int]) -> list[int]:
    """Per example, the index of its best real candidate (columns past its candidate count are ignored; `Trainer`
    pads them with -100, which a long candidate's log-probability can fall below)."""
    if len(scores) != len(counts):
        raise ValueError(f"Got scores for {len(scores)} examples, expected {len(counts)}.")
    return [int(np.argmax(row[:count])) for row, count in zip(scores, counts, strict=True)]


def _scores(predictions: Any) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def make_compute_metrics(dataset: SuperGLUEDataset) -> Any:
    """A `compute_metrics` for `Trainer` on this (evaluation) dataset, in dataset order."""
    counts = num_choices(dataset)

    def compute_metrics(evaluation: Any) -> dict[str, float]:
        choices = best_choices(_scores(evaluation.predictions), counts)
        labels = predicted_labels(dataset.pvp.task, dataset.examples, choices)
        return compute_task_metrics(dataset.pvp.task, dataset.examples, labels)

    return compute_metrics


def predict_labels(
    trainer: Trainer, dataset: SuperGLUEDataset, scores: np.ndarray | None = None
) -> tuple[list[Any], dict[str, float]]:
    """Predicted task labels of a dataset and their metrics ({} for an unlabelled split), from its candidate `scores`
    when the caller has them (an evaluation of the same weights), else from a prediction run."""
    if scores is None:
        compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None  # it belongs to the eval dataset
        try:
            scores = _scores(trainer.predict(dataset, metric_key_prefix="predict").predictions)
        finally:
            trainer.compute_metrics = compute_metrics
    labels = predicted_labels(dataset.pvp.task, dataset.examples, best_choices(scores, num_choices(dataset)))
    return labels, compute_task_metrics(dataset.pvp.task, dataset.examples, labels)


def final_eval_scores(trainer: Trainer) -> np.ndarray | None:
    """The validation scores of the weights training ended with (the best checkpoint's with
    `load_best_model_at_end`), if an evaluation of exactly those weights ran; else None."""
    state = trainer.state
    step = state.best_global_step if trainer.args.load_best_model_at_end else state.global_step
    return getattr(trainer, "eval_scores", {}).get(step)


def default_training_arguments(task: str, output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """`TrainingArguments` with the task's released recipe; `overrides` (TrainingArguments fields) win."""
    settings = TASK_SETTINGS[check_task(task)]
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": settings.warmup,  # below 1: a fraction of the training steps
        "weight_decay": settings.weight_decay,
        "max_grad_norm": 1.0,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": 16,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 1,
        "load_best_model_at_end": True,
        "metric_for_best_model": settings.metric,
        "greater_is_better": True,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "logging_strategy": "epoch",
        "report_to": "none",
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning is for copies to a GPU (torch warns on a CPU)
    }
    values.update(overrides)
    return TrainingArguments(**values)


def _load_model_and_tokenizer(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForMultipleChoice, AutoTokenizer

        import glm_hf  # noqa: F401  (registers the GLM classes with the Auto classes)

        folder = Path(model)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--model {folder} is not a model folder (no config.json in it).")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        # float32 weights: checkpoints are often stored in fp16, and Trainer's --bf16/--fp16 are mixed precision
        # over float32 master weights (training fp16 weights directly overflows).
        with transformers_progress_bars(is_long_work(bytes_under(folder))):
            model = AutoModelForMultipleChoice.from_pretrained(folder, dtype=torch.float32)
    if tokenizer is None:
        raise ValueError("Pass the tokenizer with a model object (or give the model as a folder).")
    return model, tokenizer


def finetune(
    task: str,
    data_dir: str | Path,
    model: Any,
    output_dir: str | Path,
    training_args: TrainingArguments | None = None,
    tokenizer: Any = None,
    pattern_id: int | None = None,
    max_length: int | None = None,
    multi_token: bool | None = None,
    loss_func: str | None = None,
    length_penalty: float | None = None,
    wsc_candidates: str = "siblings",
    train: bool = True,
) -> dict[str, Any]:
    """Fine-tune (and evaluate) a GLM on a SuperGLUE task the way the original `finetune_glm.py` does.

    Args:
        task: one of `TASKS`.
        data_dir: folder with the official `train.jsonl`, `val.jsonl` and optionally `test.jsonl`.
        model: a model folder (loaded with `AutoModelForMultipleChoice`) or a `GLMForMultipleChoice`.
        output_dir: where checkpoints, `metrics.json` and `predictions/{val,test}/<Task>.jsonl` go.
        training_args: `TrainingArguments` (default: `default_training_arguments(task, output_dir)`).
        tokenizer: the model's tokenizer (default: loaded from the model folder).
        pattern_id / max_length / multi_token / loss_func / length_penalty: override the task's recipe.
        wsc_candidates: where WSC's candidates come from when the files have none ("siblings" or "none").
        train: False to only evaluate and predict.

    Returns:
        {"task", "pattern_id", "max_length", "val": {metrics}, "test_predictions": path or None, ...}.
    """
    task = check_task(task)
    settings = TASK_SETTINGS[task]
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder (it should hold train.jsonl and val.jsonl).")
    options = {"wsc_candidates": wsc_candidates} if task == "wsc" else {}
    model, tokenizer = _load_model_and_tokenizer(model, tokenizer)
    model.config.cloze_length_penalty = settings.length_penalty if length_penalty is None else float(length_penalty)
    args = training_args or default_training_arguments(task, output_dir)

    def dataset(split: str) -> SuperGLUEDataset:
        return SuperGLUEDataset(
            read_split(task, data_dir, split, **options), tokenizer, model.config, task,
            pattern_id=pattern_id, max_length=max_length, multi_token=multi_token, split=split,
        )  # fmt: skip

    train_set = dataset("train") if train else None
    val_set = dataset("val")
    test_set = dataset("test") if (data_dir / SPLIT_FILES["test"]).is_file() else None
    pad_id = getattr(model.config, "eos_token_id", None)
    pad_id = pad_id[0] if isinstance(pad_id, (list, tuple)) else pad_id
    trainer = ClozeTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DataCollatorForCloze(pad_token_id=int(pad_id if pad_id is not None else 0)),
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(val_set),
        loss_func=loss_func or settings.loss_func,
    )
    results: dict[str, Any] = {
        "task": task,
        "pattern_id": val_set.pvp.pattern_id,
        "max_length": val_set.max_length,
        "multi_token": val_set.multi_token,
        "loss_func": trainer.loss_func,
        "length_penalty": model.config.cloze_length_penalty,
    }
    if train_set is not None:
        train_output = trainer.train()
        results["train"] = {
            "global_step": train_output.global_step,
            "training_loss": train_output.training_loss,
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        }
        trainer.save_model(str(output_dir / "model"))  # the best epoch's weights when load_best_model_at_end
    val_scores = final_eval_scores(trainer) if train_set is not None else None
    val_labels, results["val"] = predict_labels(trainer, val_set, val_scores)
    test_labels = predict_labels(trainer, test_set)[0] if test_set is not None else None
    if trainer.is_world_process_zero():
        path = write_predictions(task, val_set.examples, val_labels, _folder(output_dir, "val"))
        results["val_predictions"] = str(path)
        results["test_predictions"] = None
        if test_set is not None and test_labels is not None:
            path = write_predictions(task, test_set.examples, test_labels, _folder(output_dir, "test"))
            results["test_predictions"] = str(path)
        write_jsonl(output_dir / "metrics.json", [results])  # one JSON object on one line, written atomically
    return results


def _folder(output_dir: Path, split: str) -> Path:
    folder = output_dir / "predictions" / split
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- command line -------------------------------------------------------------------------------------------------


def build_argument_parser(prog: str = "run_superglue.py") -> argparse.ArgumentParser:
    """The task options; every other option is a `TrainingArguments` field (e.g. --learning_rate 2e-5)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Fine-tune GLM on a SuperGLUE task with cloze patterns (the original finetune_glm.py recipe). "
        "Options not listed here are TrainingArguments fields (--learning_rate, --num_train_epochs, "
        "--per_device_train_batch_size, --bf16, ...); unset ones take the task's released defaults.",
    )
    parser.add_argument("--task", required=True, type=str.lower, choices=TASKS)
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="folder with train.jsonl, val.jsonl[, test.jsonl]"
    )
    parser.add_argument("--model", required=True, type=Path, help="GLM model folder (with its tokenizer)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True, type=Path)
    parser.add_argument("--pattern-id", type=int, default=None, help="default: the released pattern of the task")
    parser.add_argument("--max-length", type=int, default=None, help="default: the task's (128, 256 or 512)")
    parser.add_argument(
        "--multi-token", action=argparse.BooleanOptionalAction, default=None, help="score whole verbalizer texts"
    )
    parser.add_argument("--loss-func", choices=LOSS_FUNCTIONS, default=None, help="default: the task's")
    parser.add_argument("--length-penalty", type=float, default=None, help="default: 1 for WSC, else 0")
    parser.add_argument("--wsc-candidates", choices=("siblings", "none"), default="siblings")
    parser.add_argument("--eval-only", action="store_true", help="evaluate and predict without training")
    return parser


def parse_arguments(
    argv: Sequence[str], prog: str = "run_superglue.py"
) -> tuple[argparse.Namespace, TrainingArguments]:
    """The task options and the `TrainingArguments` (task defaults where the command line sets nothing).

    Options are spelled in full: an unknown or abbreviated one is an error naming it (a misspelled
    `--learning_rat` must not train at the default rate), and errors print this job's usage."""
    task_parser = build_argument_parser(prog)
    options, rest = task_parser.parse_known_args(list(argv))
    explicit_names = given_fields(TrainingArguments, rest, prog, error=task_parser.error)
    (given,) = strict_parser(TrainingArguments, prog, error=task_parser.error).parse_args_into_dataclasses(
        args=[*rest, "--output_dir", str(options.output_dir)]
    )
    explicit = {name: getattr(given, name) for name in explicit_names - {"output_dir"}}
    return options, default_training_arguments(options.task, options.output_dir, **explicit)


def main(argv: Sequence[str] | None = None, prog: str = "run_superglue.py") -> dict[str, Any]:
    """Run `finetune` from command-line arguments and print the validation metrics."""
    import sys

    options, training_args = parse_arguments(sys.argv[1:] if argv is None else argv, prog)
    results = finetune(
        options.task,
        options.data_dir,
        options.model,
        options.output_dir,
        training_args=training_args,
        pattern_id=options.pattern_id,
        max_length=options.max_length,
        multi_token=options.multi_token,
        loss_func=options.loss_func,
        length_penalty=options.length_penalty,
        wsc_candidates=options.wsc_candidates,
        train=not options.eval_only,
    )
    print(json.dumps({"task": results["task"], "val": results["val"]}, indent=1))
    return results


__all__ = [
    "ClozeTrainer",
    "best_choices",
    "default_training_arguments",
    "finetune",
    "main",
    "make_compute_metrics",
    "num_choices",
    "parse_arguments",
    "predict_labels",
]
