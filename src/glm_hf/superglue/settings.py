"""The released fine-tuning recipe of each SuperGLUE task (`config_tasks/task_<task>.sh` with
`scripts/finetune_superglue.sh`): pattern id, maximum length, epochs, batch size, learning rate 1e-5, 10% warm-up,
weight decay 0.1, and WSC's loss ("mix") and length penalty 1."""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import TASK_METRICS

LOSS_FUNCTIONS = ("cross_entropy", "mix", "generative")


@dataclass(frozen=True)
class TaskSettings:
    """The released recipe of one task (`config_tasks/task_<task>.sh`)."""

    task: str
    pattern_id: int
    max_length: int
    epochs: int
    batch_size: int
    learning_rate: float = 1e-5
    warmup: float = 0.1
    weight_decay: float = 0.1
    loss_func: str = "cross_entropy"
    length_penalty: float = 0.0

    @property
    def metric(self) -> str:
        """The metric that picks the best epoch."""
        return TASK_METRICS[self.task][0]


TASK_SETTINGS: dict[str, TaskSettings] = {
    "boolq": TaskSettings("boolq", pattern_id=4, max_length=256, epochs=20, batch_size=16),
    "cb": TaskSettings("cb", pattern_id=3, max_length=256, epochs=50, batch_size=16),
    "copa": TaskSettings("copa", pattern_id=0, max_length=256, epochs=50, batch_size=16),
    "multirc": TaskSettings("multirc", pattern_id=0, max_length=512, epochs=15, batch_size=64),
    "record": TaskSettings("record", pattern_id=0, max_length=512, epochs=5, batch_size=64),
    "rte": TaskSettings("rte", pattern_id=0, max_length=256, epochs=50, batch_size=16),
    "wic": TaskSettings("wic", pattern_id=1, max_length=256, epochs=30, batch_size=16),
    "wsc": TaskSettings(
        "wsc", pattern_id=2, max_length=128, epochs=50, batch_size=16, loss_func="mix", length_penalty=1.0
    ),
}


__all__ = ["LOSS_FUNCTIONS", "TASK_SETTINGS", "TaskSettings"]
