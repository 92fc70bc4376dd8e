"""glm-hf: the original GLM (THUDM/GLM) as a transformers-native model.

Importing this package registers `GLMConfig` (`model_type="glm_blocklm"`) and the models with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from .blank_infilling import DataCollatorForBlankInfilling, pack_documents, read_corpus
from .cloze import build_cloze_inputs, pack_cloze_candidates, score_candidates
from .infilling import InfillingResult, build_generation_inputs, fill_blanks
from .modeling import (
    FAMILY_TOKEN_IDS,
    PRESETS,
    GLMConfig,
    GLMDynamicCache,
    GLMForConditionalGeneration,
    GLMForMultipleChoice,
    GLMForSequenceClassification,
    GLMModel,
    GLMPreTrainedModel,
    build_glm_attention_mask,
)
from .peft_integration import register_glm_with_peft
from .pipeline import TextInfillingPipeline, register_pipeline
from .tokenization_chatglm import chatglm_response, chatglm_tokenizer_from_sentencepiece
from .tokenization_glm import TOKENIZER_FAMILIES, GLMTokenizerFast, build_tokenizer, register_auto_classes

__version__ = "0.1.0"

AutoConfig.register(GLMConfig.model_type, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForMultipleChoice.register(GLMConfig, GLMForMultipleChoice, exist_ok=True)
AutoModelForSequenceClassification.register(GLMConfig, GLMForSequenceClassification, exist_ok=True)
register_auto_classes()
register_pipeline()
register_glm_with_peft()  # default LoRA targets and GLM positions under prompt learning, when peft is installed

__all__ = [
    "DataCollatorForBlankInfilling",
    "pack_documents",
    "read_corpus",
    "FAMILY_TOKEN_IDS",
    "TOKENIZER_FAMILIES",
    "GLMTokenizerFast",
    "build_tokenizer",
    "chatglm_response",
    "chatglm_tokenizer_from_sentencepiece",
    "build_cloze_inputs",
    "pack_cloze_candidates",
    "score_candidates",
    "InfillingResult",
    "TextInfillingPipeline",
    "build_generation_inputs",
    "fill_blanks",
    "register_pipeline",
    "PRESETS",
    "GLMConfig",
    "GLMDynamicCache",
    "GLMForConditionalGeneration",
    "GLMForMultipleChoice",
    "GLMForSequenceClassification",
    "GLMModel",
    "GLMPreTrainedModel",
    "build_glm_attention_mask",
]
