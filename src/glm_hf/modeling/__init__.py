"""The GLM configuration and model classes (importing only torch and transformers)."""

from .configuration_glm import FAMILY_TOKEN_IDS, PRESETS, GLMConfig
from .modeling_glm import (
    GLMDynamicCache,
    GLMForConditionalGeneration,
    GLMForMultipleChoice,
    GLMForSequenceClassification,
    GLMModel,
    GLMPreTrainedModel,
    build_glm_attention_mask,
    score_cloze_targets,
)

__all__ = [
    "FAMILY_TOKEN_IDS",
    "PRESETS",
    "GLMConfig",
    "GLMDynamicCache",
    "GLMForConditionalGeneration",
    "GLMForMultipleChoice",
    "GLMForSequenceClassification",
    "GLMModel",
    "GLMPreTrainedModel",
    "build_glm_attention_mask",
    "score_cloze_targets",
]
