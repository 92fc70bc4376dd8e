"""SuperGLUE fine-tuning with cloze questions, as the original GLM (`tasks/superglue`, `finetune_glm.py`).

* `readers`: the official jsonl files of the eight tasks -> `SuperGLUEExample`s (file:line errors);
* `patterns`: the original pattern-verbalizer pairs (pattern ids, verbalizers, single- vs multi-token);
* `features`: examples -> `GLMForMultipleChoice` features (`SuperGLUEDataset`) and `DataCollatorForCloze`;
* `metrics`: accuracy, F1 (CB macro, MultiRC F1a/EM), ReCoRD EM/F1, computed locally;
* `predictions`: SuperGLUE submission files, written atomically;
* `settings`: the released recipe of each task (`TASK_SETTINGS`: pattern, lengths, epochs, loss);
* `training`: `ClozeTrainer` and `finetune()` behind
  `examples/superglue/run_superglue.py` and `glm-hf finetune`.
"""

from .features import DataCollatorForCloze, SuperGLUEDataset, encode_example, truncate_parts
from .metrics import (
    TASK_METRICS,
    accuracy,
    compute_task_metrics,
    f1_binary,
    f1_macro,
    multirc_exact_match,
    normalize_answer,
    predicted_labels,
    record_score,
)
from .patterns import MASK, PVP, PVPS, ClozeCandidate, Shortenable, get_pvp
from .predictions import submission_records, write_predictions
from .readers import (
    SPLITS,
    TASK_DIRS,
    TASK_LABELS,
    TASKS,
    SuperGLUEDataError,
    SuperGLUEExample,
    read_examples,
    read_split,
    standardize_punctuation,
)
from .settings import TASK_SETTINGS, TaskSettings
from .training import (
    ClozeTrainer,
    default_training_arguments,
    finetune,
    make_compute_metrics,
    parse_arguments,
    predict_labels,
)

__all__ = [
    "MASK",
    "PVP",
    "PVPS",
    "SPLITS",
    "TASKS",
    "TASK_DIRS",
    "TASK_LABELS",
    "TASK_METRICS",
    "TASK_SETTINGS",
    "ClozeCandidate",
    "ClozeTrainer",
    "DataCollatorForCloze",
    "Shortenable",
    "SuperGLUEDataError",
    "SuperGLUEDataset",
    "SuperGLUEExample",
    "TaskSettings",
    "accuracy",
    "compute_task_metrics",
    "default_training_arguments",
    "encode_example",
    "f1_binary",
    "f1_macro",
    "finetune",
    "get_pvp",
    "make_compute_metrics",
    "multirc_exact_match",
    "normalize_answer",
    "parse_arguments",
    "predict_labels",
    "predicted_labels",
    "read_examples",
    "read_split",
    "record_score",
    "standardize_punctuation",
    "submission_records",
    "truncate_parts",
    "write_predictions",
]
