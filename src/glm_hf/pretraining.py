"""Pretraining a GLM with the blank-infilling objective on local text, with `Trainer` (`glm-hf pretrain`).

The data path is the original's: documents are read from .txt/.jsonl files, tokenized and packed into samples of at
most `max_length` tokens (`pack_documents`), and `DataCollatorForBlankInfilling` turns each batch into Part A / Part B
inputs as `blocklm_utils.ConstructBlockStrategy` does. Everything else (progress bar, periodic evaluation, resumable
checkpoints, bf16/fp16, multi-process launch with `torchrun` or `accelerate launch`) is `Trainer`'s, configured by
the usual `TrainingArguments` flags.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .blank_infilling import DataCollatorForBlankInfilling, pack_documents, read_corpus
from .modeling import FAMILY_TOKEN_IDS, PRESETS, GLMConfig, GLMForConditionalGeneration
from .progress import bytes_under, is_long_work, transformers_progress_bars
from .tokenization_glm import build_tokenizer
from .training_arguments import given_fields, strict_parser
from .visualize import write_atomic


@dataclass
class PretrainingArguments:
    """What to train on and which model to build; the optimisation settings are `TrainingArguments`."""

    train_files: list[str] = field(metadata={"help": ".txt (a document per non-empty line) or .jsonl files"})
    eval_files: list[str] | None = field(default=None, metadata={"help": "held-out files (default: a split)"})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "share of the training documents held out when no --eval_files are given"}
    )
    config: str = field(
        default="glm-large",
        metadata={"help": f"a preset ({', '.join(PRESETS)}), a config.json, or a model folder to continue"},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "comma-separated config fields, e.g. hidden_size=128,num_hidden_layers=4"}
    )
    tokenizer_family: str | None = field(default=None, metadata={"help": "tokenizer family, with --vocab_dir"})
    vocab_dir: str | None = field(default=None, metadata={"help": "folder with the family's vocabulary files"})
    tokenizer_folder: str | None = field(
        default=None, metadata={"help": "a saved tokenizer folder (default: the model folder's, or the packaged one)"}
    )
    join_lines: int = field(
        default=0,
        metadata={"help": "join consecutive documents (e.g. verse lines) into ones of at least this many words"},
    )
    max_length: int = field(default=512, metadata={"help": "tokens per packed sample"})
    bert_prob: float = field(default=1.0, metadata={"help": "share of batches with span masking ([MASK])"})
    gap_sentence_prob: float = field(default=0.0, metadata={"help": "share of sentence-level batches ([sMASK])"})
    gpt_infill_prob: float = field(default=0.5, metadata={"help": "document-level: share that keep the suffix"})
    task_mask: bool = field(default=False, metadata={"help": "use [sMASK]/[gMASK] for the sentence/document tasks"})
    loss_plot: str | None = field(
        default="loss_curves.png", metadata={"help": "PNG of the training/eval losses in --output_dir (empty: none)"}
    )


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`"hidden_size=128,layer_norm_eps=1e-5"` -> typed values (ints, floats, booleans, strings)."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--config_overrides: {item!r} is not NAME=VALUE.")
        overrides[name.strip()] = _typed(value.strip())
    return overrides


def _typed(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def load_tokenizer(args: PretrainingArguments) -> PreTrainedTokenizerBase:
    """The tokenizer named by the arguments: a family + vocabulary folder, a saved folder, or the packaged default."""
    if args.tokenizer_family is not None:
        if args.vocab_dir is None:
            raise ValueError("--tokenizer_family needs --vocab_dir, the folder with the family's vocabulary files.")
        return build_tokenizer(args.tokenizer_family, args.vocab_dir)
    folder = args.tokenizer_folder
    if folder is None and Path(args.config).is_dir():
        folder = args.config
    if folder is None:
        from .default_model import default_model_folder

        folder = str(default_model_folder())
    return AutoTokenizer.from_pretrained(folder)


def build_model(args: PretrainingArguments, tokenizer: PreTrainedTokenizerBase) -> GLMForConditionalGeneration:
    """A model folder continues its weights; a preset or config.json starts from the original's initialisation."""
    overrides = parse_config_overrides(args.config_overrides)
    source = Path(args.config)
    if source.is_dir():
        # float32 master weights whatever the folder stores (--bf16/--fp16 are Trainer's mixed precision)
        return GLMForConditionalGeneration.from_pretrained(source, dtype=torch.float32, **overrides)
    if source.suffix == ".json":
        if not source.is_file():
            raise FileNotFoundError(f"--config {source} does not exist.")
        config = GLMConfig.from_json_file(source)
        for name, value in overrides.items():
            setattr(config, name, value)
    elif args.config in PRESETS:
        family = getattr(tokenizer, "glm_family", None)
        family_ids = FAMILY_TOKEN_IDS.get(family, {}) if isinstance(family, str) else {}
        config = GLMConfig.from_preset(args.config, **{**family_ids, **overrides})
    else:
        raise ValueError(f"--config {args.config!r} is neither a preset ({', '.join(PRESETS)}) nor a file/folder.")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the config only {config.vocab_size} embedding rows; "
            "raise vocab_size with --config_overrides."
        )
    return GLMForConditionalGeneration(config)


def split_documents(texts: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of the documents into training and held-out ones (at least one of each)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"--eval_fraction must be between 0 and 1, got {eval_fraction}.")
    if len(texts) < 2:
        raise ValueError("Holding out evaluation documents needs at least two documents; pass --eval_files.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    held_out = set(order[: max(1, math.ceil(len(texts) * eval_fraction))])
    train = [text for index, text in enumerate(texts) if index not in held_out]
    evaluation = [text for index, text in enumerate(texts) if index in held_out]
    return train, evaluation


def group_lines(lines: Sequence[str], min_words: int = 80) -> list[str]:
    """Consecutive lines joined (by newlines) into documents of at least `min_words` words (the last may be
    shorter): a verse line or a lone sentence is too short a document for 15% span masking, a run of them is not."""
    documents: list[str] = []
    current: list[str] = []
    words = 0
    for line in lines:
        current.append(line.strip())
        words += len(line.split())
        if words >= min_words:
            documents.append("\n".join(current))
            current, words = [], 0
    if current:
        documents.append("\n".join(current))
    return documents


def plot_loss_curves(log_history: Sequence[dict[str, Any]], path: str | Path, title: str = "GLM pretraining") -> Path:
    """Training and evaluation loss against the step, as a PNG (from `Trainer.state.log_history`), written whole or
    not at all. Drawn off-screen (the Agg canvas), leaving pyplot's backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    if not train and not evaluation:
        raise ValueError("The log history holds no losses to plot; set --logging_steps / --eval_steps.")
    figure = Figure(figsize=(6, 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for points, label in ((train, "training loss"), (evaluation, "evaluation loss")):
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (Part B tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    write_atomic(path, lambda file: figure.savefig(file, format="png"))
    return path


@dataclass
class FillAccuracy:
    """Held-out single-token blank filling: the model's top-1 accuracy against the unigram baseline's."""

    accuracy: float
    unigram_accuracy: float
    unigram_token: str
    blanks: int


def _blank_positions(tokens: Sequence[str], words_only: bool) -> list[int]:
    """Indices of tokens that can be a one-token blank: a whole word or punctuation mark (not a `##` piece and not
    followed by one), alphabetic only with `words_only`."""
    return [
        index
        for index, token in enumerate(tokens)
        if not token.startswith("##")
        and (index + 1 == len(tokens) or not tokens[index + 1].startswith("##"))
        and (token.isalpha() or not words_only)
    ]


@torch.no_grad()
def single_token_fill_accuracy(
    model: GLMForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    held_out_lines: Sequence[str],
    training_texts: Sequence[str],
    seed: int = 0,
    words_only: bool = False,
    batch_size: int = 64,
) -> FillAccuracy:
    """Hide one random token per held-out line behind [MASK] (a whole word or punctuation mark; only words with
    `words_only`) and compare the model's top-1 fill, its logits at [sop], with the hidden token. The unigram
    baseline always answers the most frequent such token of `training_texts`."""
    from .cloze import build_cloze_inputs

    rng = random.Random(seed)
    config = model.config
    counts: dict[int, int] = {}
    for text in training_texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for index in _blank_positions(tokenizer.convert_ids_to_tokens(ids), words_only):
            counts[ids[index]] = counts.get(ids[index], 0) + 1
    if not counts:
        raise ValueError("The training texts hold no token to count for the unigram baseline.")
    unigram_id = max(counts, key=counts.__getitem__)

    rows, targets = [], []
    for line in held_out_lines:
        ids = tokenizer.encode(line, add_special_tokens=False)[: config.max_position_embeddings - 4]
        positions = _blank_positions(tokenizer.convert_ids_to_tokens(ids), words_only)
        if not positions:
            continue
        position = rng.choice(positions)
        targets.append(ids[position])
        masked = ids[:position] + [config.mask_token_id] + ids[position + 1 :]
        rows.append(build_cloze_inputs(config, masked, [[ids[position]]]))
    if not rows:
        raise ValueError("No held-out line has a token to hide.")

    correct = 0
    device = model.device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(row["input_ids"].shape[1] for row in chunk)
        batch = {
            key: torch.cat([_pad_row(row[key], width, fill) for row in chunk]).to(device)
            for key, fill in (
                ("input_ids", config.eos_token_id),
                ("position_ids", 0),
                ("block_position_ids", 0),
                ("attention_mask", 0),
                ("labels", -100),
            )
        }
        batch["prefix_length"] = torch.cat([row["prefix_length"] for row in chunk]).to(device)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        predicted = logits[labels != -100].argmax(-1)
        correct += int((predicted == labels[labels != -100]).sum())
    unigram_correct = sum(target == unigram_id for target in targets)
    return FillAccuracy(
        accuracy=correct / len(targets),
        unigram_accuracy=unigram_correct / len(targets),
        unigram_token=tokenizer.convert_ids_to_tokens(unigram_id),
        blanks=len(targets),
    )


def _pad_row(values: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """Right-pad a `[1, T]` row to `width` columns."""
    return torch.nn.functional.pad(values, (0, width - values.shape[-1]), value=fill)


# Written into every checkpoint folder: the blank-infilling collator's draw counter for the next batch.
COLLATOR_STATE_FILE = "blank_infilling_collator.json"


class _CollatorStateCallback(TrainerCallback):
    """Saves the draw counter of the next batch into each checkpoint (see `BlankInfillingTrainer`)."""

    def __init__(self, trainer: BlankInfillingTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            next_draw = self.trainer.first_draw + self.trainer.batches_trained
            (folder / COLLATOR_STATE_FILE).write_text(json.dumps({"next_draw": next_draw}) + "\n")


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: a path, or "True" (transformers' spelling for the last checkpoint in
    `output_dir`); None to start afresh."""
    if resume_from_checkpoint in (None, False, "", "False", "false"):
        return None
    if resume_from_checkpoint in (True, "True", "true"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(
                f"--resume_from_checkpoint True resumes from the last checkpoint-* in --output_dir {output_dir}, "
                "but there is none: run without it to start, or give a checkpoint folder."
            )
        return last
    if not Path(resume_from_checkpoint).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint} is not a checkpoint folder.")
    return str(resume_from_checkpoint)


class BlankInfillingTrainer(Trainer):
    """`Trainer` whose loss reads the logits of the Part B columns only.

    The collator puts every Part B after Part A, so the columns from the earliest labelled one to the end hold all
    targets: the vocabulary projection runs on those (`logits_to_keep`), about a quarter of a packed sample, instead
    of on every column. The loss is the same token mean as the model's own.

    Every evaluation masks the held-out samples with the same draws (a copy of the collator from batch 0), so the
    evaluation losses of a run compare like with like and evaluating does not move the training draws.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        collator = self.data_collator
        # The collator's draw counter when training started, and the batches trained since: their sum is the draw
        # of the next batch, which a checkpoint keeps so that a resumed run draws as an uninterrupted one. (The
        # collator's own counter runs ahead: the data loader collates the next batch before the current one trains.)
        self.first_draw = collator.count if isinstance(collator, DataCollatorForBlankInfilling) else 0
        self.batches_trained = 0
        self.add_callback(_CollatorStateCallback(self))

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.batches_trained += 1
        return super().training_step(*args, **kwargs)

    def resume_collator(self, checkpoint: str | Path) -> None:
        """Restore the draw counter a checkpoint saved (`COLLATOR_STATE_FILE`), so that the resumed run masks its
        batches as the uninterrupted run did."""
        state_path = Path(checkpoint) / COLLATOR_STATE_FILE
        if isinstance(self.data_collator, DataCollatorForBlankInfilling) and state_path.is_file():
            self.data_collator.count = int(json.loads(state_path.read_text())["next_draw"])
            self.first_draw, self.batches_trained = self.data_collator.count, 0

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        training_collator = self.data_collator
        if isinstance(training_collator, DataCollatorForBlankInfilling):
            self.data_collator = dataclasses.replace(training_collator, count=0)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.data_collator = training_collator

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        labelled_columns = (labels != -100).any(dim=0).nonzero()
        first = int(labelled_columns[0]) if len(labelled_columns) else labels.shape[1] - 1
        kept = labels.shape[1] - first
        outputs = model(**inputs, logits_to_keep=kept)
        loss = torch.nn.functional.cross_entropy(
            outputs.logits.float().flatten(0, 1), labels[:, first:].flatten(), ignore_index=-100
        )
        return (loss, outputs) if return_outputs else loss


def check_first_batches(
    collator: DataCollatorForBlankInfilling,
    train_samples: Sequence[dict[str, Any]],
    eval_samples: Sequence[dict[str, Any]],
    training_args: TrainingArguments,
) -> None:
    """Collate a first training and evaluation batch on a copy of the collator (its draw counter untouched), so
    that a corpus the objective cannot use (documents too short for a blank) fails now, not at the first evaluation
    minutes into training."""
    probe = copy.deepcopy(collator)
    probe(list(train_samples[: training_args.per_device_train_batch_size]))
    if len(eval_samples):
        probe(list(eval_samples[: training_args.per_device_eval_batch_size]))


def run_pretraining(args: PretrainingArguments, training_args: TrainingArguments) -> dict[str, float]:
    """Train, evaluate, save the model and tokenizer to `output_dir`; returns the final metrics.

    transformers' weight loading and saving bars show only for a large model (Trainer's own training bar stays)."""
    source = Path(args.config) if args.config else None
    large = source is not None and source.is_dir() and is_long_work(bytes_under(source))
    with transformers_progress_bars(large):
        return _train(args, training_args)


def _train(args: PretrainingArguments, training_args: TrainingArguments) -> dict[str, float]:
    tokenizer = load_tokenizer(args)
    texts = read_corpus(args.train_files)
    if args.join_lines > 0:
        texts = group_lines(texts, args.join_lines)
    if args.eval_files:
        eval_texts = read_corpus(args.eval_files)
        train_texts = texts
        if args.join_lines > 0:
            eval_texts = group_lines(eval_texts, args.join_lines)
    else:
        train_texts, eval_texts = split_documents(texts, args.eval_fraction, training_args.seed)
    train_samples = pack_documents(train_texts, tokenizer, args.max_length)
    eval_samples = pack_documents(eval_texts, tokenizer, args.max_length)

    model = build_model(args, tokenizer)
    if args.max_length > model.config.max_position_embeddings - 1:
        raise ValueError(
            f"--max_length {args.max_length} needs max_position_embeddings >= {args.max_length + 1}, the model has "
            f"{model.config.max_position_embeddings}."
        )
    collator = DataCollatorForBlankInfilling(
        tokenizer,
        max_length=args.max_length,
        bert_prob=args.bert_prob,
        gap_sentence_prob=args.gap_sentence_prob,
        gpt_infill_prob=args.gpt_infill_prob,
        task_mask=args.task_mask,
        seed=training_args.seed,
    )
    check_first_batches(collator, train_samples, eval_samples, training_args)
    training_args.prediction_loss_only = True  # evaluation reports the loss; logits of a whole set would not fit
    trainer = BlankInfillingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_samples,
        eval_dataset=eval_samples,
        data_collator=collator,
        processing_class=tokenizer,
    )
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if checkpoint is not None:
        trainer.resume_collator(checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    metrics.update(trainer.evaluate())
    trainer.save_model()
    if trainer.is_world_process_zero():
        output = Path(training_args.output_dir)
        for name, value in (("train_metrics.json", metrics), ("log_history.json", trainer.state.log_history)):
            data = (json.dumps(value, indent=1) + "\n").encode()
            write_atomic(output / name, lambda file, data=data: file.write(data))
        if args.loss_plot:
            plot_loss_curves(trainer.state.log_history, output / args.loss_plot)
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """`glm-hf pretrain` / `examples/pretrain.py`: parse `PretrainingArguments` + `TrainingArguments`, train."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    types = (PretrainingArguments, TrainingArguments)
    given = given_fields(types, argv, prog="glm-hf pretrain")  # refuses unknown options with their names
    args, training_args = strict_parser(types, prog="glm-hf pretrain").parse_args_into_dataclasses(args=list(argv))
    if "dataloader_pin_memory" not in given:
        training_args.dataloader_pin_memory = torch.cuda.is_available()  # pinning is for copies to a GPU
    torch.manual_seed(training_args.seed)
    return run_pretraining(args, training_args)


__all__ = [
    "BlankInfillingTrainer",
    "FillAccuracy",
    "group_lines",
    "PretrainingArguments",
    "build_model",
    "load_tokenizer",
    "main",
    "parse_config_overrides",
    "plot_loss_curves",
    "run_pretraining",
    "single_token_fill_accuracy",
    "split_documents",
]
