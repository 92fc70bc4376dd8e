"""Pretrain a GLM with the blank-infilling objective on local .txt/.jsonl files (the same job as `glm-hf pretrain`).

Every `TrainingArguments` flag works (`--bf16`, `--eval_steps`, `--resume_from_checkpoint`, ...), and so does a
multi-process launch: `torchrun --nproc_per_node 2 examples/pretrain.py ...` or `accelerate launch ...`.

Example (a 4-layer model on Hamlet, CPU, a few minutes)::

    python examples/pretrain.py --train_files ../shared/assets/corpora/en/hamlet_gut.txt \
        --tokenizer_family bert-base-uncased --vocab_dir ../shared/assets --config glm-large \
        --config_overrides hidden_size=128,num_hidden_layers=4,num_attention_heads=4,max_position_embeddings=257 \
        --join_lines 80 --max_length 128 \
        --output_dir /tmp/glm-hamlet --max_steps 200 --eval_strategy steps --eval_steps 50 \
        --logging_steps 10 --learning_rate 2e-3 --report_to none
"""

from glm_hf.pretraining import main

if __name__ == "__main__":
    main()
