"""Fast tokenizers of the four GLM tokenizer families, with the ids of the original `data_utils/tokenization.py`.

The original wraps a text tokenizer (BERT WordPiece, GPT-2 / RoBERTa byte-level BPE or the `cog-pretrain`
SentencePiece BPE) and splits the text on its *command tokens* ([MASK], [gMASK], <|startofpiece|>, ...) before
encoding the pieces in between. Here every family is one `tokenizers.Tokenizer` whose command tokens are special
added tokens with the original ids (and the original whitespace stripping), wrapped in `GLMTokenizerFast`.

Two families give one id to several command strings:

* `roberta`: the RoBERTa special tokens carry the GLM commands ("[CLS]" is `<s>` = 0, "[SEP]" and
  "<|endoftext|>" are `</s>` = 2, "[UNK]" is `<unk>` = 3, "[MASK]" is `<mask>` = 50264). A `tokenizers` vocabulary
  holds one string per id, so the RoBERTa strings are the tokens, and a `Replace` normalizer rewrites the GLM
  strings into them before the (normalized) added tokens are matched. A decoder step writes the GLM strings back,
  as the original decodes them.
* `chinese-sp-10b` (GLM-10B-Chinese, trained without `--fix-command-token`): [gMASK] and <|endofpiece|> are both
  50007. The token at 50007 is "[gMASK]" (the string the original decodes it to), "<|endofpiece|>" is rewritten
  into it, and `eop_token` is "[gMASK]" too. `chinese-sp` (GLM-Large-Chinese, `--fix-command-token`) has
  sop 50006, eop 50007, [sMASK] 50008, [gMASK] 50009.

The Chinese SentencePiece BPE becomes a `tokenizers` BPE whose merges are every split of a piece into two pieces,
ranked by the joined piece's score (what SentencePiece's BPE encoder does), with SentencePiece's own NFKC charsmap
as a `Precompiled` normalizer (read from the model file with a few lines of protobuf wire decoding) and the
user-defined piece "<n>" cut out whole. Known difference from the original: in `roberta`, a text that spells
"<s>", "</s>", "<unk>" or "<mask>" gets those special ids (the original split them into BPE pieces).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordPiece
from transformers import PreTrainedTokenizerFast

TOKENIZER_FAMILIES: tuple[str, ...] = (
    "bert-base-uncased",
    "bert-large-uncased",
    "roberta",
    "gpt2",
    "chinese-sp",
    "chinese-sp-10b",
)

# Files each family reads from `vocab_dir`, under their names in the original repository. Each entry is a tuple of
# alternatives (the first one found is used).
VOCAB_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "bert-base-uncased": (("bert-base-uncased-vocab.txt", "bert-large-uncased-vocab.txt"),),
    "bert-large-uncased": (("bert-large-uncased-vocab.txt", "bert-base-uncased-vocab.txt"),),
    "roberta": (("roberta-vocab.json",), ("gpt2-merges.txt", "roberta-merges.txt")),
    "gpt2": (("gpt2-vocab.json",), ("gpt2-merges.txt",)),
    "chinese-sp": (("cog-pretrain.model",),),
    "chinese-sp-10b": (("cog-pretrain.model",),),
}

SOP, EOP = "<|startofpiece|>", "<|endofpiece|>"
GMASK, SMASK = "[gMASK]", "[sMASK]"
SPACE = "\u2581"  # SentencePiece's whitespace symbol


@dataclass(frozen=True)
class _Command:
    """A command token: its string in the vocabulary, id and whether it eats the whitespace on its left."""

    content: str
    id: int
    lstrip: bool = False
    normalized: bool = False


class GLMTokenizerFast(PreTrainedTokenizerFast):
    """Fast tokenizer of a GLM family (see `TOKENIZER_FAMILIES`); build one with `build_tokenizer`.

    Besides the usual special tokens it has the GLM command tokens `sop_token`, `eop_token`, `gmask_token` and
    `smask_token` (with `*_id`); the BERT family has no [gMASK]/[sMASK] (`None`). No special tokens are added
    around the text: ids are those of the original `EncodeAsIds`. `len(tokenizer)` is the real vocabulary size;
    the padded embedding size lives in the model config.
    """

    SPECIAL_TOKENS_ATTRIBUTES = PreTrainedTokenizerFast.SPECIAL_TOKENS_ATTRIBUTES + [
        "sop_token",
        "eop_token",
        "gmask_token",
        "smask_token",
    ]
    model_input_names = ["input_ids", "attention_mask"]
    slow_tokenizer_class = None

    # No __init__ of its own: then `from_pretrained` hands tokenizer.json to the backend unchanged. The family
    # name travels as the `glm_family` init kwarg (saved in tokenizer_config.json).

    @property
    def glm_family(self) -> str | None:
        """The tokenizer family (one of `TOKENIZER_FAMILIES`)."""
        return self.init_kwargs.get("glm_family")

    @property
    def can_save_slow_tokenizer(self) -> bool:
        return False

    def _use_backend_added_tokens(self) -> None:
        """Point the special-token attributes at the backend's added tokens, keeping their lstrip/normalized flags."""
        added = {token.content: token for token in self._tokenizer.get_added_tokens_decoder().values()}
        for key, value in self._special_tokens_map.items():
            if value is not None and str(value) in added:
                self._special_tokens_map[key] = added[str(value)]

    def _post_init(self) -> None:
        # `from_pretrained` re-adds the special tokens from their strings: reuse the backend's own definitions.
        self._use_backend_added_tokens()
        super()._post_init()

    def build_inputs_for_generation(self, texts: str | Sequence[str], config: Any) -> dict[str, Any]:
        """`[CLS] text [eos] [sop]` prompts, left-padded, for `model.generate(**inputs)` to fill the first blank
        (see `glm_hf.build_generation_inputs`); `config` is the model's `GLMConfig`."""
        from .infilling import build_generation_inputs

        return build_generation_inputs(self, config, [texts] if isinstance(texts, str) else texts)

    def build_inputs_for_multiple_choice(
        self, context: str, answers: Sequence[str], config: Any, eop: bool = True, **options: Any
    ) -> dict[str, Any]:
        """One row per candidate answer of a cloze `context` (which holds a mask), built as the original
        `build_input_from_ids` (see `glm_hf.build_cloze_inputs`, which takes `options`); with `eop`, each answer
        ends with <|endofpiece|> as the original multi-token cloze tasks score it."""
        from .cloze import build_cloze_inputs

        answers_ids = [self.encode(answer, add_special_tokens=False) for answer in answers]
        if eop:
            answers_ids = [[*ids, self.eop_token_id] for ids in answers_ids]
        return build_cloze_inputs(config, self.encode(context, add_special_tokens=False), answers_ids, **options)

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
        # The original encodes a text that is only whitespace as no token at all.
        if not kwargs.get("is_split_into_words", False):
            text, text_pair = _blank_to_empty(text), _blank_to_empty(text_pair)
        return super()._encode_plus(text, text_pair, *args, **kwargs)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        if not (self.glm_family or "").startswith("chinese"):
            return super()._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)
        # As the original: the SentencePiece pieces between command tokens are decoded one run at a time (each run
        # loses its dummy-prefix space) and the command strings are pasted in between, without spaces.
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        commands = {index: token.content for index, token in self._tokenizer.get_added_tokens_decoder().items()}
        pieces: list[str] = []
        run: list[int] = []
        for index in map(int, token_ids):
            if index in commands:
                if run:
                    pieces.append(self._tokenizer.decode(run, skip_special_tokens=False))
                    run = []
                if not skip_special_tokens:
                    pieces.append(commands[index])
            else:
                run.append(index)
        if run:
            pieces.append(self._tokenizer.decode(run, skip_special_tokens=False))
        return "".join(pieces)


def _blank_to_empty(text: Any) -> Any:
    """`""` for a string that is only whitespace (also inside a list of strings); anything else unchanged."""
    if isinstance(text, str):
        return text if text.strip() else ""
    if isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text):
        return type(text)(item if item.strip() else "" for item in text)
    return text


def _find_files(family: str, vocab_dir: str | os.PathLike[str]) -> list[Path]:
    """The vocabulary files of `family` in `vocab_dir`, or a FileNotFoundError naming what was looked for."""
    folder = Path(vocab_dir)
    if not folder.is_dir():
        wanted = " and ".join(" or ".join(names) for names in VOCAB_FILES[family])
        raise FileNotFoundError(f"vocab_dir {str(folder)!r} is not a directory (looking for {wanted}).")
    found, missing = [], []
    for names in VOCAB_FILES[family]:
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            missing.append(" or ".join(names))
        else:
            found.append(path)
    if missing:
        raise FileNotFoundError(
            f"The {family!r} tokenizer needs {' and '.join(missing)} in {str(folder)!r}; not found."
        )
    return found


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """BPE merges of a `merges.txt` (the first line is the `#version` header)."""
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    return [tuple(line.split()) for line in lines if line.strip()]  # type: ignore[misc]


def _with_commands(vocab: dict[str, int], commands: Sequence[_Command], size: int) -> dict[str, int]:
    """`vocab` plus the command strings at their ids; ids left free up to `size` get a placeholder string."""
    full = dict(vocab)
    for command in commands:
        if full.get(command.content, command.id) != command.id:
            raise ValueError(f"{command.content!r} is already in the vocabulary at id {full[command.content]}.")
        full[command.content] = command.id
    taken = set(full.values())
    for index in range(size):
        if index not in taken:
            full[f"<|glm_unused_{index}|>"] = index
    if len(set(full.values())) != len(full):
        raise ValueError("Two vocabulary strings share one id.")
    return full


def _bert_backend(vocab_file: Path) -> tuple[Tokenizer, list[_Command], dict[str, Any]]:
    with open(vocab_file, encoding="utf-8") as lines:
        tokens = [line.strip() for line in lines]  # as the original, one token a line, stripped
    vocab = {token: index for index, token in enumerate(tokens)}
    size = len(tokens)
    commands = [
        _Command("[PAD]", vocab["[PAD]"]),
        _Command("[CLS]", vocab["[CLS]"]),
        _Command("[MASK]", vocab["[MASK]"]),
        _Command("[UNK]", vocab["[UNK]"]),
        _Command("[SEP]", vocab["[SEP]"]),
        _Command(SOP, size),
        _Command(EOP, size + 1),
    ]
    backend = Tokenizer(
        WordPiece(_with_commands(vocab, commands, size + 2), unk_token="[UNK]", max_input_chars_per_word=100)
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    special = {
        "pad_token": "[PAD]",
        "eos_token": "[PAD]",
        "bos_token": "[CLS]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "unk_token": "[UNK]",
        "sop_token": SOP,
        "eop_token": EOP,
    }
    return backend, commands, special


def _byte_level_backend(
    vocab: dict[str, int], merges: list[tuple[str, str]], commands: list[_Command], aliases: dict[str, str]
) -> Tokenizer:
    size = max(command.id for command in commands) + 1
    backend = Tokenizer(BPE(_with_commands(vocab, commands, size), merges, fuse_unk=False))
    if aliases:
        backend.normalizer = normalizers.Sequence(
            [normalizers.Replace(alias, target) for alias, target in aliases.items()]
        )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    steps: list[decoders.Decoder] = []
    for alias, target in aliases.items():
        if alias != "<|endoftext|>":  # the original decodes </s> as "[SEP]"
            steps.append(decoders.Replace(Regex(f"^{re.escape(target)}$"), alias))
    backend.decoder = decoders.Sequence([*steps, decoders.ByteLevel()]) if steps else decoders.ByteLevel()
    return backend


def _gpt2_backend(vocab_file: Path, merges_file: Path) -> tuple[Tokenizer, list[_Command], dict[str, Any]]:
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    size = len(vocab)
    commands = [
        _Command("<|endoftext|>", vocab["<|endoftext|>"]),
        _Command(SOP, size),
        _Command(EOP, size + 1),
        _Command("[CLS]", size + 2),
        _Command("[MASK]", size + 3, lstrip=True),
        _Command("[SEP]", size + 4),
        _Command("[UNK]", size + 5),
        _Command(GMASK, size + 6, lstrip=True),
        _Command(SMASK, size + 7, lstrip=True),
    ]
    backend = _byte_level_backend(vocab, _read_merges(merges_file), commands, {})
    special = {
        "pad_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "bos_token": "[CLS]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "unk_token": "[UNK]",
        "sop_token": SOP,
        "eop_token": EOP,
        "gmask_token": GMASK,
        "smask_token": SMASK,
    }
    return backend, commands, special


def _roberta_backend(vocab_file: Path, merges_file: Path) -> tuple[Tokenizer, list[_Command], dict[str, Any]]:
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    size = len(vocab)
    # normalized=True: the tokens are matched after the Replace normalizer has rewritten the GLM command strings.
    commands = [
        _Command("<s>", vocab["<s>"], normalized=True),
        _Command("</s>", vocab["</s>"], normalized=True),
        _Command("<unk>", vocab["<unk>"], normalized=True),
        _Command("<mask>", vocab["<mask>"], lstrip=True, normalized=True),
        _Command(SOP, size, normalized=True),
        _Command(EOP, size + 1, normalized=True),
        _Command(GMASK, size + 2, lstrip=True, normalized=True),
        _Command(SMASK, size + 3, lstrip=True, normalized=True),
    ]
    aliases = {"<|endoftext|>": "</s>", "[SEP]": "</s>", "[CLS]": "<s>", "[MASK]": "<mask>", "[UNK]": "<unk>"}
    backend = _byte_level_backend(vocab, _read_merges(merges_file), commands, aliases)
    special = {
        "pad_token": "</s>",
        "eos_token": "</s>",
        "bos_token": "<s>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
        "unk_token": "<unk>",
        "sop_token": SOP,
        "eop_token": EOP,
        "gmask_token": GMASK,
        "smask_token": SMASK,
    }
    return backend, commands, special


def _proto_fields(data: bytes) -> dict[int, list[bytes | int]]:
    """Top-level fields of a protobuf message (wire types 0, 1, 2 and 5), without a protobuf dependency."""
    fields: dict[int, list[bytes | int]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        value: bytes | int
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"Unsupported protobuf wire type {wire}.")
        fields.setdefault(number, []).append(value)
    return fields


def _sentencepiece_bpe(
    model_file: Path,
) -> tuple[dict[str, int], list[tuple[str, str]], bytes, list[str], list[str]]:
    """Pieces, merges, NFKC charsmap, user-defined pieces and control/unknown pieces of a SentencePiece BPE model.

    SentencePiece's BPE repeatedly joins the adjacent pair whose concatenation is the highest-scoring piece, so
    the merges are every split of every normal piece into two normal pieces, ranked by the score of the joined piece.
    Control, unknown and user-defined pieces keep their ids but are never produced by a merge.
    """
    try:
        import sentencepiece
    except ImportError as error:  # optional: only building a Chinese tokenizer from the original model file needs it
        raise ImportError("Reading cog-pretrain.model needs sentencepiece: pip install sentencepiece.") from error

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    proto = _proto_fields(processor.serialized_model_proto())
    trainer = _proto_fields(proto[2][0]) if 2 in proto else {}
    normalizer = _proto_fields(proto[3][0]) if 3 in proto else {}
    if trainer.get(3, [1])[0] != 2:
        raise ValueError(f"{model_file} is not a SentencePiece BPE model.")
    if normalizer.get(3, [1])[0] != 1 or normalizer.get(4, [1])[0] != 1:
        raise ValueError(f"{model_file}: only add_dummy_prefix and remove_extra_whitespaces models are supported.")
    if trainer.get(35, [0])[0]:
        raise ValueError(f"{model_file}: byte fallback is not supported.")
    charsmap = normalizer.get(2, [b""])[0]
    assert isinstance(charsmap, bytes)
    size = processor.get_piece_size()
    kinds = [_proto_fields(raw).get(3, [1])[0] for raw in proto[1]]  # 1 normal, 2 unknown, 3 control, 4 user
    vocab = {processor.id_to_piece(index): index for index in range(size)}
    normal = {piece: index for piece, index in vocab.items() if kinds[index] == 1}
    user_defined = [piece for piece, index in vocab.items() if kinds[index] == 4]
    reserved = [piece for piece, index in vocab.items() if kinds[index] in (2, 3)]
    ranked = sorted(normal, key=lambda piece: (-processor.get_score(normal[piece]), normal[piece]))
    merges = [
        (piece[:cut], piece[cut:])
        for piece in ranked
        for cut in range(1, len(piece))
        if piece[:cut] in normal and piece[cut:] in normal
    ]
    return vocab, merges, charsmap, user_defined, reserved


def _chinese_backend(model_file: Path, fixed: bool) -> tuple[Tokenizer, list[_Command], dict[str, Any]]:
    vocab, merges, charsmap, user_defined, reserved = _sentencepiece_bpe(model_file)
    size = len(vocab)
    commands = [
        _Command("<|endoftext|>", size),
        _Command("[SEP]", size + 1),
        _Command("[CLS]", size + 2),
        _Command("[MASK]", size + 3, lstrip=True),
        _Command("[UNK]", size + 4),
        _Command(SOP, size + 6),
    ]
    if fixed:  # --fix-command-token (GLM-Large-Chinese)
        commands += [
            _Command(EOP, size + 7),
            _Command(SMASK, size + 8, lstrip=True),
            _Command(GMASK, size + 9, lstrip=True),
        ]
        aliases: dict[str, str] = {}
    else:  # GLM-10B-Chinese: [gMASK] took eop's id; "<|endofpiece|>" is rewritten into it
        commands += [_Command(GMASK, size + 7, lstrip=True, normalized=True), _Command(SMASK, size + 8, lstrip=True)]
        aliases = {EOP: GMASK}
    total = max(command.id for command in commands) + 1
    # ignore_merges: a word that is a piece is that piece. Every normal piece of cog-pretrain encodes to itself
    # anyway; this also gives the user-defined pieces ("<n>"), which the pre-tokenizer cuts out as words.
    full = _with_commands(vocab, commands, total)
    backend = Tokenizer(BPE(full, merges, unk_token="<unk>", fuse_unk=True, ignore_merges=True))
    steps: list[normalizers.Normalizer] = [normalizers.Replace(a, t) for a, t in aliases.items()]
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    backend.normalizer = normalizers.Sequence(steps)
    # SentencePiece drops extra spaces and starts every word with "▁" (the first one through the dummy prefix);
    # user-defined pieces are matched anywhere, whole, and never merged with their neighbours.
    words: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
    ]
    if user_defined:
        pattern = "|".join(re.escape(piece) for piece in sorted(user_defined, key=len, reverse=True))
        words.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    # ... but a text that spells a control piece ("<s>") or a placeholder is text: cut its first character off
    # so that `ignore_merges` cannot return the reserved piece.
    reserved += [token for token in full if token.startswith("<|glm_unused_")]
    pattern = "|".join(f"{re.escape(token[0])}(?={re.escape(token[1:])}$)" for token in reserved if len(token) > 1)
    if pattern:
        words.append(pre_tokenizers.Split(Regex(f"^(?:{pattern})"), behavior="isolated"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(words)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(Regex("^<unk>$"), " \u2047 "),  # SentencePiece's unknown surface
            decoders.Replace(Regex("^</?s>$"), ""),
            decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
        ]
    )
    special = {
        "pad_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "bos_token": "[CLS]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "unk_token": "[UNK]",
        "sop_token": SOP,
        "eop_token": EOP if fixed else GMASK,
        "gmask_token": GMASK,
        "smask_token": SMASK,
    }
    return backend, commands, special


def build_tokenizer(family: str, vocab_dir: str | os.PathLike[str]) -> GLMTokenizerFast:
    """The GLM tokenizer of `family` (one of `TOKENIZER_FAMILIES`) from the original vocabulary files in `vocab_dir`.

    `vocab_dir` holds the files under their names in the original repository: `bert-base-uncased-vocab.txt` (or
    `bert-large-uncased-vocab.txt`), `gpt2-vocab.json` + `gpt2-merges.txt`, `roberta-vocab.json` +
    `gpt2-merges.txt` (or `roberta-merges.txt`), `cog-pretrain.model`.
    """
    if family not in TOKENIZER_FAMILIES:
        raise ValueError(f"Unknown GLM tokenizer family {family!r}; known families: {', '.join(TOKENIZER_FAMILIES)}.")
    files = _find_files(family, vocab_dir)
    if family.startswith("bert"):
        backend, commands, special = _bert_backend(files[0])
    elif family == "gpt2":
        backend, commands, special = _gpt2_backend(*files)
    elif family == "roberta":
        backend, commands, special = _roberta_backend(*files)
    else:
        backend, commands, special = _chinese_backend(files[0], fixed=family == "chinese-sp")
    backend.add_special_tokens(
        [
            AddedToken(command.content, lstrip=command.lstrip, normalized=command.normalized, special=True)
            for command in commands
        ]
    )
    for command in commands:
        if backend.token_to_id(command.content) != command.id:
            raise AssertionError(f"{command.content!r} did not get id {command.id}.")
    return GLMTokenizerFast(tokenizer_object=backend, glm_family=family, **special)


def register_auto_classes() -> None:
    """Let `AutoTokenizer` find `GLMTokenizerFast` (by the class name in tokenizer_config.json and by GLMConfig)."""
    from transformers import AutoTokenizer

    from .modeling import GLMConfig

    AutoTokenizer.register(GLMConfig, fast_tokenizer_class=GLMTokenizerFast, exist_ok=True)


__all__ = ["GLMTokenizerFast", "TOKENIZER_FAMILIES", "VOCAB_FILES", "build_tokenizer", "register_auto_classes"]
