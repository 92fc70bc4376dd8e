"""Fine-tune GLM on a SuperGLUE task with cloze questions, as the original `finetune_glm.py --cloze-eval`.

    python examples/superglue/run_superglue.py --task rte --data-dir DATA/RTE --model FOLDER --output-dir OUT \
        [--pattern-id N] [--max-length N] [--multi-token] [any TrainingArguments option, e.g. --bf16 True]

Unset training options take the task's released recipe (`glm_hf.superglue.TASK_SETTINGS`). Writes the best epoch's
model to OUT/model, OUT/metrics.json and the SuperGLUE submission files OUT/predictions/{val,test}/<Task>.jsonl.
The same job runs as `glm-hf finetune ...`; the logic lives in `glm_hf.superglue.training`.
"""

from glm_hf.superglue.training import main

if __name__ == "__main__":
    main()
