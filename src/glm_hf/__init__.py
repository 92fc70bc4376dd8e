"""glm-hf: the original GLM (THUDM/GLM) as a transformers-native model.

Importing this package registers `GLMConfig` (`model_type="glm_blocklm"`) and the models with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
)

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

__version__ = "0.1.0"

AutoConfig.register(GLMConfig.model_type, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
register_pipeline()

__all__ = [
    "FAMILY_TOKEN_IDS",
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
