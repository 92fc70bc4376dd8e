"""Train the tiny test GLM with `Trainer` for a few steps and write the losses and final weights.

Run by `tests/test_scale.py` as one process or under `torchrun --nproc_per_node 2` (gloo on CPU): with the same global
batch, both runs must reach the same losses and weights. Deterministic: no dropout, data in order (no shuffling),
every row with the same number of labelled tokens (so the mean of per-process means is the global mean).

    python tests/helpers/train_tiny_glm.py OUTPUT_DIR --per-device-batch-size 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's tiny model and inputs

from conftest import blank_inputs, tiny_model  # noqa: E402


class BlankDataset(Dataset):
    """Rows of `blank_inputs`, with Part B labelled (the same number of labels in every row)."""

    def __init__(self, size: int, part_a: int = 9):
        batch = blank_inputs(batch_size=size, part_a=part_a)
        labels = batch["input_ids"].clone()
        labels[:, :part_a] = -100
        batch["labels"] = labels
        self.rows = [{key: value[i] for key, value in batch.items()} for i in range(size)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


class InOrderTrainer(Trainer):
    """Batches in dataset order, so one process and two processes see the same global batches."""

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> SequentialSampler:
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--per-device-batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = tiny_model(
        seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, embedding_dropout_prob=0.0
    ).train()
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"),
        per_device_train_batch_size=args.per_device_batch_size,
        max_steps=args.steps,
        optim="sgd",  # plain SGD: weight differences stay at the size of float noise (Adam would amplify it)
        learning_rate=0.1,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        dataloader_drop_last=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = InOrderTrainer(model=model, args=training_args, train_dataset=BlankDataset(size=32))
    trainer.train()
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # every rank takes part (unwraps DDP)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {"world_size": training_args.world_size, "losses": losses}
        (args.output_dir / "result.json").write_text(json.dumps(result))
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, args.output_dir / "weights.pt")
    if torch.distributed.is_initialized():  # a clean gloo shutdown: left to interpreter exit, it can abort
        torch.distributed.barrier()  # both ranks done (rank 0 writes the files) before the group goes
        torch.distributed.destroy_process_group()
        # DDP's reducer still holds the gloo group. Freeing it when `main` returns can deadlock (torch 2.13; twice
        # in this project's test runs): the group's destructor joins its worker thread while holding the GIL, and
        # that thread waits for the GIL to free the barrier's tensors. Nothing is left to write: leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
