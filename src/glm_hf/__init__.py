"""glm-hf: the original GLM (THUDM/GLM) as a transformers-native model.

Importing this package registers `GLMConfig` (`model_type="glm_blocklm"`) and the models with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
)

from .cloze import build_cloze_inputs, score_candidates
from .infilling import InfillingResult, build_generation_inputs, fill_blanks
from .modeling import (
    FAMILY_TOKEN_IDS,
    PRESETS,
    GLMConfig,
    GLMForConditionalGeneration,
    GLMModel,
    GLMPreTrainedModel,
    build_glm_attention_mask,
)
from .pipeline import TextInfillingPipeline, register_pipeline
from .tokenization_glm import TOKENIZER_FAMILIES, GLMTokenizerFast, build_tokenizer, register_auto_classes

__version__ = "0.1.0"

AutoConfig.register(GLMConfig.model_type, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
register_auto_classes()
register_pipeline()

__all__ = [
    "FAMILY_TOKEN_IDS",
    "TOKENIZER_FAMILIES",
    "GLMTokenizerFast",
    "build_tokenizer",
    "build_cloze_inputs",
    "score_candidates",
    "InfillingResult",
    "TextInfillingPipeline",
    "build_generation_inputs",
    "fill_blanks",
    "register_pipeline",
    "PRESETS",
    "GLMConfig",
    "GLMForConditionalGeneration",
    "GLMModel",
    "GLMPreTrainedModel",
    "build_glm_attention_mask",
]
