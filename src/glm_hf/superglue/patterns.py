"""The original pattern-verbalizer pairs (PVPs) of GLM's SuperGLUE cloze fine-tuning (`tasks/superglue/pvp.py`).

A pattern turns an example into a cloze text with one blank: two lists of parts (Part A's text a and text b; most
tasks use only the first), each part a fixed string, a `Shortenable` string (what is cut, one token at a time from
the end of the last one, when the input is too long) or `MASK`. A verbalizer names each label with a word the model
should put in the blank. Tasks whose answers are texts (COPA's choices, WSC's referents, ReCoRD's entities) are
multi-token: every candidate is scored as a whole (its tokens and [eop]); the classification tasks are single-token
by default (the logits of the blank restricted to the verbalizer tokens) and multi-token on request, as the
original's `--multi-token`. The texts, spaces included, are the original's, so the token ids equal the original's
(`tests/test_superglue_patterns.py` checks them against the original code's output). Continuous prompts (the
original's `--continuous-prompt` P-Tuning) are not part of these patterns; PEFT's P-Tuning takes their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .readers import TASK_LABELS, SuperGLUEExample, check_task, strip_final_punctuation


class Shortenable(str):
    """A part of a pattern that may be cut (from its end) to fit the maximum length."""


class _Mask:
    """The blank of a pattern."""

    def __repr__(self) -> str:
        return "MASK"


MASK = _Mask()
Part = str | _Mask  # a plain str is fixed; a `Shortenable` may be cut


@dataclass(frozen=True)
class ClozeCandidate:
    """One candidate row: the pattern's parts (text a, text b) and the answer that fills the blank.

    `answer_single_token`: the answer must be one token (COPA pattern 2 scores " because" / " so" this way).
    """

    parts_a: list[Part]
    parts_b: list[Part]
    answer: str
    answer_single_token: bool = False


def lowercase_first(text: str) -> str:
    """The text with its first character lower-cased (the original's `lowercase_first`)."""
    return text[0].lower() + text[1:]


class PVP:
    """A task's patterns and verbalizer. Subclasses set `task`, `pattern_ids`, `multi_token` and define `parts`."""

    task: ClassVar[str]
    pattern_ids: ClassVar[tuple[int, ...]] = (0,)
    multi_token: ClassVar[bool] = False  # the task's default (True where the answers are texts)
    verbalizers: ClassVar[dict[Any, str]] = {}

    def __init__(self, pattern_id: int = 0):
        if pattern_id not in self.pattern_ids:
            raise ValueError(
                f"{self.task}: no pattern {pattern_id}; the original has patterns "
                f"{', '.join(map(str, self.pattern_ids))}."
            )
        self.pattern_id = pattern_id

    @property
    def labels(self) -> list[Any]:
        return TASK_LABELS[self.task]

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        """The pattern applied to the example: (parts of text a, parts of text b)."""
        raise NotImplementedError

    def verbalize(self, label: Any) -> str:
        """The word for a label (a single token for single-token clozes)."""
        return self.verbalizers[label]

    def answers(self, example: SuperGLUEExample) -> list[str]:
        """The candidate texts of a multi-token cloze (default: the verbalizer of every label, in label order)."""
        return [self.verbalize(label) for label in self.labels]

    def candidates(self, example: SuperGLUEExample) -> list[ClozeCandidate]:
        """One `ClozeCandidate` per candidate answer of a multi-token cloze."""
        parts_a, parts_b = self.parts(example)
        return [ClozeCandidate(parts_a, parts_b, answer) for answer in self.answers(example)]

    def target_index(self, example: SuperGLUEExample, split: str) -> int:
        """The index of the right candidate, the label of the loss (0 for a test example, which has none)."""
        index = example.label_index
        if index is None and split != "test":
            raise ValueError(f"{example.source or example.guid}: a {split} example without a label cannot be scored.")
        return index or 0


class RtePVP(PVP):
    task = "rte"
    pattern_ids = (0, 1, 2, 3, 4)
    verbalizers = {"not_entailment": " No", "entailment": " Yes"}

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        premise = example.text_a
        hypothesis = strip_final_punctuation(example.text_b or "")
        if self.pattern_id == 0:
            return ['"', Shortenable(hypothesis), '" ?'], [MASK, ",", ' "', Shortenable(premise), '"']
        if self.pattern_id == 1:
            return [Shortenable(hypothesis), "?"], [MASK, ",", Shortenable(" " + premise)]
        if self.pattern_id == 2:
            return ['"', Shortenable(hypothesis), '" ?'], [MASK, '. "', Shortenable(premise), '"']
        if self.pattern_id == 3:
            return [Shortenable(hypothesis), "?"], [MASK, ".", Shortenable(" " + premise)]
        return [
            Shortenable(premise),
            " question:",
            Shortenable(" " + hypothesis),
            " True or False?",
            " answer:",
            MASK,
        ], []

    def verbalize(self, label: Any) -> str:
        if self.pattern_id == 4:
            return " true" if label == "entailment" else " false"
        return self.verbalizers[label]


class CbPVP(RtePVP):
    task = "cb"
    verbalizers = {"contradiction": " No", "entailment": " Yes", "neutral": " Maybe"}

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        if self.pattern_id == 4:  # unlike RTE's, the hypothesis keeps its final punctuation here
            return [
                Shortenable(example.text_a),
                " question:",
                Shortenable(" " + (example.text_b or "")),
                " true, false or neither?",
                " answer:",
                MASK,
            ], []
        return super().parts(example)

    def verbalize(self, label: Any) -> str:
        if self.pattern_id == 4:
            return {"entailment": " true", "contradiction": " false"}.get(label, " neither")
        return self.verbalizers[label]


class BoolQPVP(PVP):
    task = "boolq"
    pattern_ids = (0, 1, 2, 3, 4, 5)

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        passage, question = example.text_a, example.text_b or ""
        if self.pattern_id < 2:
            return [Shortenable(passage), " Question:", Shortenable(" " + question), "? Answer:", MASK, "."], []
        if self.pattern_id < 4:
            return [
                Shortenable(passage),
                " Based on the previous passage,",
                Shortenable(" " + question),
                "?",
                MASK,
                ".",
            ], []
        return [
            "Based on the following passage",
            Shortenable(" " + question),
            "?",
            MASK,
            ".",
            Shortenable(" " + passage),
        ], []

    def verbalize(self, label: Any) -> str:
        if self.pattern_id in (0, 2, 4):
            return {"false": " No", "true": " Yes"}[label]
        return {"false": " false", "true": " true"}[label]


class WicPVP(PVP):
    task = "wic"
    pattern_ids = (0, 1, 2)

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        sentence1, sentence2, word = example.text_a, example.text_b or "", example.meta["word"]
        if self.pattern_id == 0:
            return [
                Shortenable('"' + sentence1 + '" / "' + sentence2 + '"'),
                ' Similar sense of "' + word + '"?',
                MASK,
                ".",
            ], []
        if self.pattern_id == 1:
            return [
                Shortenable(sentence1),
                Shortenable(" " + sentence2),
                " Does " + word + " have the same meaning in both sentences?",
                MASK,
            ], []
        return [word, " .", ' Sense (1) (a) "', Shortenable(sentence1), '"', " (", MASK, ') "', sentence2, '"'], []

    def verbalize(self, label: Any) -> str:
        if self.pattern_id == 2:
            return {"false": "2", "true": "b"}[label]
        return {"false": " No", "true": " Yes"}[label]


class MultiRcPVP(PVP):
    task = "multirc"
    pattern_ids = (0, 1, 2, 3, 4)
    verbalizers = {0: " No", 1: " Yes"}

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        passage = Shortenable(strip_final_punctuation(example.text_a.rstrip()))
        question = strip_final_punctuation((example.text_b or "").rstrip())
        answer = example.meta["answer"]
        if self.pattern_id == 0:
            return [passage, ".", " Question:", " " + question + "?", " Is it", " " + answer, "?", MASK, "."], []
        if self.pattern_id == 1:
            return [
                passage,
                ".",
                " Question:",
                " " + question,
                "?",
                ' Is the correct answer "',
                answer,
                '"?',
                MASK,
                ".",
            ], []
        if self.pattern_id == 2:
            return [
                passage,
                ". Based on the previous passage,",
                " " + question,
                "?",
                ' Is "',
                answer,
                '" a correct answer?',
                MASK,
                ".",
            ], []
        if self.pattern_id == 3:
            return [passage, " " + question, "- [", MASK, "]", answer], []
        return [passage, ".", " Question:", " " + question, "?", " " + answer, "?", MASK, "."], []

    def verbalize(self, label: Any) -> str:
        if self.pattern_id == 3:
            return " False" if label == 0 else " True"
        return self.verbalizers[label]


class CopaPVP(PVP):
    task = "copa"
    pattern_ids = (0, 1, 2)
    multi_token = True

    @staticmethod
    def _choices(example: SuperGLUEExample) -> tuple[str, str]:
        return tuple(  # type: ignore[return-value]
            strip_final_punctuation(lowercase_first(example.meta[key])) for key in ("choice1", "choice2")
        )

    def answers(self, example: SuperGLUEExample) -> list[str]:
        return [" " + choice for choice in self._choices(example)]

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        choice1, choice2 = self._choices(example)
        premise = Shortenable(strip_final_punctuation(" " + example.text_a))
        joiner = " because" if example.meta["question"] == "cause" else ", so"
        if self.pattern_id == 0:
            return ['"', choice1, '" or "', choice2, '"?', premise, joiner, MASK, "."], []
        return [choice1, " or", " " + choice2, "?", premise, joiner, MASK, "."], []

    def candidates(self, example: SuperGLUEExample) -> list[ClozeCandidate]:
        if self.pattern_id < 2:
            return super().candidates(example)
        # Pattern 2: the choice follows the blank and the model scores the connective " because" / " so".
        choice1, choice2 = self._choices(example)
        premise = Shortenable(strip_final_punctuation(example.text_a))
        joiner = " because" if example.meta["question"] == "cause" else " so"
        parts: list[Part] = ['"', choice1, '" or "', choice2, '"?', premise, MASK]
        return [
            ClozeCandidate([part for part in [*parts, " " + choice] if part], [], joiner, answer_single_token=True)
            for choice in (choice1, choice2)
        ]

    def verbalize(self, label: Any) -> str:
        raise ValueError("COPA has no verbalizer: its candidates are the two choices (a multi-token cloze).")


class WscPVP(PVP):
    task = "wsc"
    pattern_ids = (0, 1, 2)
    multi_token = True

    def answers(self, example: SuperGLUEExample) -> list[str]:
        return [" " + example.meta["span1_text"], *(" " + text for text in example.meta.get("candidates", []))]

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        pronoun, pronoun_index = example.meta["span2_text"], example.meta["span2_index"]
        words = example.text_a.split()
        words[pronoun_index] = "*" + words[pronoun_index] + "*"
        text = Shortenable(" ".join(words))
        if self.pattern_id == 0:
            return [text, " The pronoun '*" + pronoun + "*' refers to", MASK, "."], []
        if self.pattern_id == 1:
            return [text, " In the previous sentence, the pronoun '*" + pronoun + "*' refers to", MASK, "."], []
        return [
            text,
            " Question: In the passage above, what does the pronoun '*" + pronoun + "*' refer to?",
            " Answer:",
            MASK,
            ".",
        ], []

    def target_index(self, example: SuperGLUEExample, split: str) -> int:
        # Candidate 0 is span 1: the right referent of a positive example (training keeps only those). The
        # example's True/False label is decided by whether candidate 0 outranks the others (see `metrics`).
        return 0

    def verbalize(self, label: Any) -> str:
        raise ValueError("WSC has no verbalizer: its candidates are the referents (a multi-token cloze).")


class RecordPVP(PVP):
    task = "record"
    multi_token = True

    def answers(self, example: SuperGLUEExample) -> list[str]:
        return [" " + candidate for candidate in example.meta["candidates"]]

    def parts(self, example: SuperGLUEExample) -> tuple[list[Part], list[Part]]:
        before, after = (example.text_b or "").split("@placeholder")
        return [Shortenable(example.text_a), " " + before.rstrip(), MASK, after], []

    def target_index(self, example: SuperGLUEExample, split: str) -> int:
        # Training examples put their answer first; evaluation examples point at their first gold entity.
        answers = set(example.meta.get("answers", []))
        return next((i for i, entity in enumerate(example.meta["candidates"]) if entity in answers), 0)

    def verbalize(self, label: Any) -> str:
        raise ValueError("ReCoRD has no verbalizer: its candidates are the passage's entities (a multi-token cloze).")


PVPS: dict[str, type[PVP]] = {
    "boolq": BoolQPVP,
    "cb": CbPVP,
    "copa": CopaPVP,
    "multirc": MultiRcPVP,
    "record": RecordPVP,
    "rte": RtePVP,
    "wic": WicPVP,
    "wsc": WscPVP,
}


def get_pvp(task: str, pattern_id: int = 0) -> PVP:
    """The PVP of a task with the given pattern id (see `PVPS[task].pattern_ids`)."""
    return PVPS[check_task(task)](pattern_id)


__all__ = ["MASK", "PVP", "PVPS", "ClozeCandidate", "Shortenable", "get_pvp", "lowercase_first"]
