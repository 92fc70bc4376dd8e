"""The `"text-infilling"` pipeline: `pipeline("text-infilling", model=..., tokenizer=...)("a [MASK] text")`."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .infilling import fill_blanks

TASK = "text-infilling"


class TextInfillingPipeline(Pipeline):
    """Fills every [MASK] / [sMASK] / [gMASK] of a text; generation options (`max_new_tokens`, `num_beams`,
    `do_sample`, ...) pass through to `fill_blanks`. Returns `{"filled_text": str, "spans": list[str]}` per text.
    For many texts call `glm_hf.fill_blanks(..., batch_size=16)` directly: it batches texts of similar length."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, **generate_kwargs: Any) -> tuple[dict, dict, dict]:
        return {}, generate_kwargs, {}

    def preprocess(self, text: str, **_: Any) -> dict[str, str]:
        if not isinstance(text, str):
            raise TypeError(f"text-infilling takes strings, got {type(text).__name__}.")
        return {"text": text}

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        texts = model_inputs["text"]  # one text, or a list of them when the pipeline runs with batch_size > 1
        batch = [texts] if isinstance(texts, str) else texts
        results = fill_blanks(self.model, self.tokenizer, batch, **generate_kwargs)
        if isinstance(texts, str):
            return {"filled_text": results[0].text, "spans": results[0].spans}
        return {"filled_text": [result.text for result in results], "spans": [result.spans for result in results]}

    def postprocess(self, model_outputs: dict[str, Any], **_: Any) -> dict[str, Any]:
        return model_outputs


def register_pipeline() -> None:
    """Make `pipeline("text-infilling", ...)` resolve to `TextInfillingPipeline`."""
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=TextInfillingPipeline, pt_model=AutoModelForSeq2SeqLM)
