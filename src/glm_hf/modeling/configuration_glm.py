"""Configuration of the original GLM (THUDM/GLM, Du et al. 2021): blank infilling with 2D positions; with four
switches, also of ChatGLM-6B (THUDM/chatglm-6b), which keeps GLM's design with rotary positions and DeepNorm."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# Special-token ids of each tokenizer family, at the ids the original `data_utils/tokenization.py` gives them.
# `None` marks a token the family does not have.
FAMILY_TOKEN_IDS: dict[str, dict[str, int | None]] = {
    # BERT WordPiece (glm-base, glm-large, glm-410m, glm-515m): [PAD] doubles as eos.
    "bert-base-uncased": {
        "pad_token_id": 0,
        "eos_token_id": 0,
        "bos_token_id": 101,
        "cls_token_id": 101,
        "sep_token_id": 102,
        "mask_token_id": 103,
        "unk_token_id": 100,
        "sop_token_id": 30522,
        "eop_token_id": 30523,
        "gmask_token_id": None,
        "smask_token_id": None,
    },
    # RoBERTa BPE (glm-roberta-large): </s> is pad, eos and [SEP]; <s> is [CLS].
    "roberta": {
        "pad_token_id": 2,
        "eos_token_id": 2,
        "bos_token_id": 0,
        "cls_token_id": 0,
        "sep_token_id": 2,
        "mask_token_id": 50264,
        "unk_token_id": 3,
        "sop_token_id": 50265,
        "eop_token_id": 50266,
        "gmask_token_id": 50267,
        "smask_token_id": 50268,
    },
    # GPT-2 BPE (glm-2b, glm-10b): <|endoftext|> is pad and eos, the command tokens follow the BPE vocabulary.
    "gpt2": {
        "pad_token_id": 50256,
        "eos_token_id": 50256,
        "bos_token_id": 50259,
        "cls_token_id": 50259,
        "sep_token_id": 50261,
        "mask_token_id": 50260,
        "unk_token_id": 50262,
        "sop_token_id": 50257,
        "eop_token_id": 50258,
        "gmask_token_id": 50263,
        "smask_token_id": 50264,
    },
    # Chinese SentencePiece with the fixed command tokens (glm-large-chinese).
    "chinese-sp": {
        "pad_token_id": 50000,
        "eos_token_id": 50000,
        "bos_token_id": 50002,
        "cls_token_id": 50002,
        "sep_token_id": 50001,
        "mask_token_id": 50003,
        "unk_token_id": 50004,
        "sop_token_id": 50006,
        "eop_token_id": 50007,
        "gmask_token_id": 50009,
        "smask_token_id": 50008,
    },
    # Chinese SentencePiece as glm-10b-chinese was trained (no fixed command tokens): [gMASK] shares 50007 with eop.
    "chinese-sp-10b": {
        "pad_token_id": 50000,
        "eos_token_id": 50000,
        "bos_token_id": 50002,
        "cls_token_id": 50002,
        "sep_token_id": 50001,
        "mask_token_id": 50003,
        "unk_token_id": 50004,
        "sop_token_id": 50006,
        "eop_token_id": 50007,
        "gmask_token_id": 50007,
        "smask_token_id": 50008,
    },
}
FAMILY_TOKEN_IDS["bert-large-uncased"] = FAMILY_TOKEN_IDS["bert-base-uncased"]  # the same vocabulary file

# Shapes of the released checkpoints: (layers, hidden, heads, padded vocabulary, max sequence length, family).
# The position tables hold max sequence length + 1 rows, as the original allocates them.
PRESETS: dict[str, tuple[int, int, int, int, int, str]] = {
    "glm-base": (12, 768, 12, 30592, 512, "bert-base-uncased"),
    "glm-large": (24, 1024, 16, 30592, 512, "bert-base-uncased"),
    "glm-410m": (30, 1024, 16, 30592, 512, "bert-base-uncased"),
    "glm-515m": (30, 1152, 18, 30592, 512, "bert-base-uncased"),
    "glm-roberta-large": (24, 1024, 16, 50304, 512, "roberta"),
    "glm-large-chinese": (24, 1024, 16, 50048, 1024, "chinese-sp"),
    "glm-2b": (36, 2048, 32, 50304, 1024, "gpt2"),
    "glm-10b": (48, 4096, 64, 50304, 1024, "gpt2"),
    "glm-10b-chinese": (48, 4096, 64, 50048, 1024, "chinese-sp-10b"),
}

# ChatGLM-6B (THUDM/chatglm-6b's config.json) in this configuration's terms. The released config has no
# `tie_word_embeddings` key, so transformers ties `lm_head` to the word embeddings when it loads the original.
CHATGLM_6B: dict[str, Any] = {
    "vocab_size": 130528,
    "hidden_size": 4096,
    "num_hidden_layers": 28,
    "num_attention_heads": 32,
    "intermediate_size": 16384,
    "max_position_embeddings": 2048,
    "position_embedding_type": "rotary",
    # The original's blocks are built without their `num_layers` argument, so every ChatGLM uses the default 28.
    "deepnorm_alpha": (2.0 * 28) ** 0.5,
    "positions_from_ids": True,
    "shifted_loss": True,
    "embedding_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "hidden_dropout_prob": 0.0,
    "pad_token_id": 3,
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "sop_token_id": 130004,
    "eop_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "smask_token_id": 130002,
    "cls_token_id": None,
    "sep_token_id": None,
    "unk_token_id": 0,
}
SWITCH_PRESETS: dict[str, dict[str, Any]] = {"chatglm-6b": CHATGLM_6B}
POSITION_EMBEDDING_TYPES = ("learned", "rotary")

# Keys that must be positive whole numbers, and dropout probabilities (in [0, 1]).
POSITIVE_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
PROBABILITIES = (
    "embedding_dropout_prob",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "classifier_dropout",
)

# Tokens `GLMForSequenceClassification` can pool, as the original's `--pool-token` choices.
CLASSIFIER_POOLS = ("cls", "start", "pad")


@strict
class GLMConfig(PreTrainedConfig):
    r"""Configuration of a GLM blank-infilling model (the defaults are GLM-Large with the BERT vocabulary).

    Args:
        vocab_size: rows of the word embedding (the padded vocabulary of the released checkpoints).
        hidden_size: width of the residual stream.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: attention heads; every released model uses head size 64.
        intermediate_size: width of the MLP; `None` means 4 x `hidden_size`, as in the original.
        max_position_embeddings: rows of the position table and of the block-position table. The original
            allocates max sequence length + 1 rows (513 for the 512-token models). Rotary positions have no table:
            there it is only the trained length (ChatGLM-6B's `max_sequence_length`), not enforced.
        block_position_encoding: whether positions are 2-D (position and block position); every released GLM and
            ChatGLM-6B are. Without it (ChatGLM's `position_encoding_2d false`), positions alone.
        position_embedding_type: "learned" (GLM: two tables added to the word embeddings) or "rotary" (ChatGLM-6B:
            each head's query and key rotated, the first half by the position, the second by the block position).
        deepnorm_alpha: with a value, ChatGLM-6B's DeepNorm residual `LN(x) * alpha + f(LN(x))` instead of GLM's
            `x + f(LN(x))`; ChatGLM's alpha is sqrt(2 * 28) whatever `num_layers` says (the original never passes
            its layer count to the blocks, which default to 28: the released model's count).
        positions_from_ids: derive positions, block positions and the bidirectional context from the ids when none
            are given (ChatGLM-6B: the context is everything before a row's first [sop], positions from [sop] on
            are the index of its [gMASK], else [MASK]); GLM instead makes the whole first input bidirectional.
        shifted_loss: the loss compares `logits[:, :-1]` with `labels[:, 1:]` (ChatGLM-6B's convention); GLM's
            labels are aligned with the inputs (Part B targets are already the next tokens).
        layer_norm_eps: LayerNorm epsilon.
        hidden_act: MLP activation; the original uses the tanh approximation of GELU.
        embedding_dropout_prob / attention_probs_dropout_prob / hidden_dropout_prob: dropout after the embedding
            sum, on the attention probabilities and on the attention / MLP outputs.
        initializer_range: std of the normal initialisation (output projections are scaled by 1/sqrt(2 layers)).
        tie_word_embeddings: the LM head reuses the word embedding, as in the original.
        *_token_id: special tokens of the tokenizer family (`None` where the family lacks one).
        cloze_length_penalty: `GLMForMultipleChoice` divides a multi-token candidate's summed log-probability by
            (number of target tokens) ** penalty; 0 keeps the sum (the original's `--length-penalty`, 1 for WSC).
        classifier_pool: the token `GLMForSequenceClassification` pools, as the original's `--pool-token`: "cls"
            (column 0), "start" (the first column after Part A) or "pad" (the last column of Part A, its [eos]).
        classifier_dropout: dropout before the classifier's last layer; `None` means `hidden_dropout_prob`.
    """

    model_type = "glm_blocklm"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 30592
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int | None = None
    max_position_embeddings: int = 513
    block_position_encoding: bool = True
    position_embedding_type: str = "learned"
    deepnorm_alpha: float | None = None
    positions_from_ids: bool = False
    shifted_loss: bool = False
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_pytorch_tanh"
    embedding_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | list[int] | None = 0
    sop_token_id: int | None = 30522
    eop_token_id: int | None = 30523
    mask_token_id: int | None = 103
    gmask_token_id: int | None = None
    smask_token_id: int | None = None
    cls_token_id: int | None = 101
    sep_token_id: int | None = 102
    unk_token_id: int | None = 100
    cloze_length_penalty: float = 0.0
    classifier_pool: str = "cls"
    classifier_dropout: float | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.check_values()
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def check_values(self) -> None:
        """Refuse values no GLM can be built or run with, naming the key (ValueError): a width, depth, head count
        or table size that is not a positive whole number, a LayerNorm epsilon that is not positive, a dropout
        outside [0, 1]. Without this they fail deep inside the model, or load and give NaN."""
        for key in POSITIVE_SIZES:
            value = getattr(self, key)
            if key == "intermediate_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GLMConfig {key}={value!r}: it must be a positive whole number.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"GLMConfig hidden_size={self.hidden_size} must be a multiple of num_attention_heads="
                f"{self.num_attention_heads} (each head takes hidden_size / num_attention_heads columns)."
            )
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"GLMConfig layer_norm_eps={self.layer_norm_eps!r}: it must be a positive number.")
        for key in PROBABILITIES:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0):
                raise ValueError(f"GLMConfig {key}={value!r}: a dropout probability must be in [0, 1].")
        if not isinstance(self.initializer_range, (int, float)) or self.initializer_range < 0:
            raise ValueError(f"GLMConfig initializer_range={self.initializer_range!r}: it must be 0 or more.")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"GLMConfig position_embedding_type={self.position_embedding_type!r}: choose "
                f"{' or '.join(map(repr, POSITION_EMBEDDING_TYPES))}."
            )
        if self.position_embedding_type == "rotary" and self.hidden_size // self.num_attention_heads % 4:
            raise ValueError(
                f"GLMConfig: rotary positions rotate pairs in each half of a head, so the head size "
                f"({self.hidden_size // self.num_attention_heads}) must be a multiple of 4."
            )
        if self.deepnorm_alpha is not None and not (
            isinstance(self.deepnorm_alpha, (int, float)) and self.deepnorm_alpha > 0
        ):
            raise ValueError(f"GLMConfig deepnorm_alpha={self.deepnorm_alpha!r}: it must be a positive number.")
        if self.positions_from_ids:
            needed = ("mask_token_id", "gmask_token_id", "sop_token_id")
            missing = [key for key in needed if getattr(self, key) is None]
            if missing:
                raise ValueError(f"GLMConfig positions_from_ids=True reads [MASK], [gMASK] and [sop]: set {missing}.")

    def validate_classifier_pool(self) -> None:
        """Reject a pooling token the classification head does not know."""
        if self.classifier_pool not in CLASSIFIER_POOLS:
            raise ValueError(
                f"classifier_pool={self.classifier_pool!r} is not one of {', '.join(map(repr, CLASSIFIER_POOLS))}."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GLMConfig:
        """The configuration of a released checkpoint, e.g. `GLMConfig.from_preset("glm-10b")` or "chatglm-6b"."""
        if name in SWITCH_PRESETS:
            return cls(**{**SWITCH_PRESETS[name], **overrides})
        if name not in PRESETS:
            known = ", ".join([*PRESETS, *SWITCH_PRESETS])
            raise ValueError(f"Unknown GLM preset {name!r}; known presets: {known}.")
        layers, hidden, heads, vocab, max_length, family = PRESETS[name]
        values: dict[str, Any] = {
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "vocab_size": vocab,
            "max_position_embeddings": max_length + 1,
            **FAMILY_TOKEN_IDS[family],
        }
        values.update(overrides)
        return cls(**values)


__all__ = ["CHATGLM_6B", "CLASSIFIER_POOLS", "FAMILY_TOKEN_IDS", "GLMConfig", "PRESETS", "SWITCH_PRESETS"]
