"""Reading original THUDM/GLM checkpoints and mapping their weights onto glm-hf models."""

from .keys import ORIGINAL_TO_HF, original_to_hf_key, original_to_hf_state_dict

__all__ = ["ORIGINAL_TO_HF", "original_to_hf_key", "original_to_hf_state_dict"]
