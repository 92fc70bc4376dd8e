"""ChatGLM-6B's tokenizer as a fast tokenizer, with the ids and decodes of the original `tokenization_chatglm.py`.

The original (remote code of THUDM/chatglm-6b) wraps the SentencePiece unigram model `ice_text.model`:

* before SentencePiece, "\\n" becomes "<n>", "\\t" becomes "<|tab|>" and each run of 2 to 80 spaces becomes
  "<|blank_N|>" (longer runs: blocks of 80 from the left, then the rest; a rest of one space stays a space);
* the SentencePiece ids are shifted by `num_image_tokens` (20000 in the code; the image tokens take the ids below);
* <sop> <eop> [MASK] <pad> <unk> are special: the text is cut at them and the whitespace around them is dropped
  (transformers 4.27's default for special tokens); [gMASK] and the other appended pieces are plain pieces;
* every encoded text ends with `[gMASK] <sop>` (a pair: `A [gMASK] <sop> B <eop>`), batches are padded on the left;
* decoding drops pad ids, turns the pieces back into text (SentencePiece's rules: the first "▁" is dropped, unknown
  ids read " ⁇ ", control pieces nothing) and reverses the replacements; transformers 4.27's
  `clean_up_tokenization` then removes spaces before punctuation.

Here all of that is one `tokenizers.Tokenizer`: a `Unigram` model over the shifted ids (placeholders below
them), a normalizer doing the replacements and SentencePiece's normalization (its precompiled
character map, whitespace squeezing and dummy prefix, read from the model file), special added tokens that strip
their neighbours' whitespace, a template post-processor and a decoder reversing it all.

Control pieces of the model (<s>, </s>) and the image ids are named "<s> (control)" and "<image 5>" in the fast
vocabulary: names holding a space, which no normalized text contains, so that a text spelling "<s>" or "<image_5>"
is split into pieces as the original splits it (the decoder still writes "<image_5>" and nothing for a control
id). Known differences from the original: `convert_ids_to_tokens` gives those names; the original's padded
batches also carry a 3-D boolean attention mask and 2-D position ids, where this tokenizer returns the usual 2-D
`attention_mask` (the model derives positions and visibility from the ids); [gMASK] is no named special token
(see `chatglm_tokenizer_from_sentencepiece`); `do_lower_case` and `remove_space` (both off in the release) are not
supported; models with byte fallback are untested (their byte pieces keep the names "<0xNN>").

Ties: where two segmentations score exactly the same (runs of one repeated character: "。。。。" as
"。。。" + "。" or as "。" + "。。。"), SentencePiece's pick depends on the rounding of its float32
sums, and the fast unigram model (float64) may pick the other one: same text and score, other ids
(3 of 3000 perturbed corpus lines in a check against the original).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast

from .tokenization_glm import _proto_fields

NUM_IMAGE_TOKENS = 20000
GMASK_TOKEN = "[gMASK]"
MAX_BLANK_LENGTH = 80
# Pieces the original ChatGLM tokenizer expects in the SentencePiece vocabulary.
REQUIRED_PIECES: tuple[str, ...] = (
    "<n>",
    "<|tab|>",
    "[MASK]",
    "[gMASK]",
    "<sop>",
    "<eop>",
    "<pad>",
    "<unk>",
    *(f"<|blank_{length}|>" for length in range(2, MAX_BLANK_LENGTH + 1)),
)
SPACE = "\u2581"  # SentencePiece's whitespace symbol
UNKNOWN_SURFACE = " \u2047 "  # what SentencePiece decodes an unknown id to

# The chat() / stream_chat() prompt of the original modeling_chatglm.py: the lone query without history, else
# "[Round i]\n问：{query}\n答：{response}\n" per past turn and "[Round n]\n问：{query}\n答：", followed by the
# "[gMASK]<sop>" the original tokenizer appends (transformers' convention: the rendered text holds the special tokens,
# and apply_chat_template(tokenize=True) encodes it without adding more). The prompt always ends ready for the reply,
# so add_generation_prompt changes nothing. A conversation ending with the assistant renders as the original's
# P-Tuning recipe trains on it: prompt, [gMASK] <sop>, the reply, <eop>.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ raise_exception('ChatGLM-6B has no system prompt; put the instructions in the first user message.') }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
    "{{ raise_exception('ChatGLM-6B conversations alternate user and assistant messages, starting with user.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set query_index = (messages | length - 1) // 2 * 2 -%}"
    "{%- if query_index == 0 -%}"
    "{{ messages[0]['content'] }}"
    "{%- else -%}"
    "{%- for message in messages[:query_index] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '[Round ' ~ (loop.index0 // 2) ~ ']\n问：' ~ message['content'] ~ '\n答：' }}"
    "{%- else -%}"
    "{{ message['content'] ~ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '[Round ' ~ (query_index // 2) ~ ']\n问：' ~ messages[query_index]['content'] ~ '\n答：' }}"
    "{%- endif -%}"
    "{{ '[gMASK]<sop>' }}"
    "{%- if messages | length > query_index + 1 -%}"
    "{{ messages[query_index + 1]['content'] ~ '<eop>' }}"
    "{%- endif -%}"
)

# The original's special tokens (transformers 4.27 cuts them out of the text and drops the whitespace around them).
SPECIAL_TOKENS = {
    "bos_token": "<sop>",
    "eos_token": "<eop>",
    "mask_token": "[MASK]",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}
_SPECIAL_CONTENTS = frozenset(SPECIAL_TOKENS.values())

# ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED = 1, 2, 3, 4, 5


def _read_model(path: Path) -> tuple[list[tuple[str, float, int]], dict[int, list[bytes | int]], bool]:
    """(piece, score, type) of every piece, the normalizer spec fields and byte fallback of a unigram model file.

    Read with a few lines of protobuf wire decoding (as `tokenization_glm` reads cog-pretrain.model), so building
    the tokenizer needs no sentencepiece or protobuf package.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"ChatGLM SentencePiece model {str(path)!r} not found (the release names it ice_text.model)."
        )
    try:
        proto = _proto_fields(path.read_bytes())
        pieces = []
        for raw in proto.get(1, []):
            fields = _proto_fields(raw)  # type: ignore[arg-type]
            (score,) = struct.unpack("<f", fields.get(2, [bytes(4)])[0])  # type: ignore[arg-type]
            kind = fields.get(3, [_NORMAL])[0]
            pieces.append((fields[1][0].decode("utf-8"), float(score), int(kind)))  # type: ignore[union-attr,arg-type]
        trainer = _proto_fields(proto[2][0]) if 2 in proto else {}  # type: ignore[arg-type]
        normalizer = _proto_fields(proto[3][0]) if 3 in proto else {}  # type: ignore[arg-type]
    except (IndexError, KeyError, AttributeError, TypeError, UnicodeDecodeError, ValueError, struct.error) as error:
        raise ValueError(f"{path} is not a readable SentencePiece model file ({error!r}).") from error
    if not pieces:
        raise ValueError(f"{path} is not a SentencePiece model file (it holds no pieces).")
    if trainer.get(3, [1])[0] != 1:
        raise ValueError(f"{path} is not a SentencePiece unigram model (ChatGLM-6B's ice_text.model is one).")
    return pieces, normalizer, bool(trainer.get(35, [0])[0])


def _normalizer(spec: dict[int, list[bytes | int]]) -> normalizers.Normalizer:
    """The original's replacements, then SentencePiece's own normalization as the model file configures it."""
    steps: list[normalizers.Normalizer] = [normalizers.Replace("\n", "<n>"), normalizers.Replace("\t", "<|tab|>")]
    # As the original: longest runs first, each a literal replace from the left.
    steps += [normalizers.Replace(" " * length, f"<|blank_{length}|>") for length in range(MAX_BLANK_LENGTH, 1, -1)]
    charsmap = spec.get(2, [b""])[0]
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if spec.get(4, [1])[0]:  # remove_extra_whitespaces
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", SPACE))
    if spec.get(3, [1])[0]:  # add_dummy_prefix
        steps.append(normalizers.Prepend(SPACE))
    return normalizers.Sequence(steps)


def _decoder(spec: dict[int, list[bytes | int]], byte_fallback: bool) -> decoders.Decoder:
    """SentencePiece's decoding of the pieces, then the original's `postprocess` (the replacements reversed)."""
    steps: list[decoders.Decoder] = [
        decoders.Replace(Regex("^<unk>$"), UNKNOWN_SURFACE),
        decoders.Replace(Regex(r"^(?:<pad>|.* \(control\))$"), ""),  # the original drops pads, SentencePiece controls
        decoders.Replace(Regex("^<image "), "<image_"),  # the original reads an image id as its name
    ]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    # SentencePiece drops the "▁" starting the text (never the space of an unknown surface): with
    # remove_extra_whitespaces, that of every piece while the text is still empty ("▁" alone decodes to nothing),
    # else only with add_dummy_prefix and only one.
    if spec.get(4, [1])[0]:
        steps.append(decoders.Strip(SPACE, 1 << 20, 0))
    elif spec.get(3, [1])[0]:
        steps.append(decoders.Strip(SPACE, 1, 0))
    steps += [decoders.Replace(SPACE, " "), decoders.Replace("<n>", "\n"), decoders.Replace("<|tab|>", "\t")]
    steps += [decoders.Replace(f"<|blank_{length}|>", " " * length) for length in range(2, MAX_BLANK_LENGTH + 1)]
    return decoders.Sequence(steps)


def chatglm_tokenizer_from_sentencepiece(
    path: str | os.PathLike[str], num_image_tokens: int = NUM_IMAGE_TOKENS
) -> PreTrainedTokenizerFast:
    """ChatGLM-6B's tokenizer from its SentencePiece model file (`ice_text.model`), with the original's ids.

    `num_image_tokens` is the original `ChatGLMTokenizer` argument: 20000 is the code's default (and matches the
    defaults of the original configuration_chatglm.py, gmask_token_id 150001); pass the value of the release's
    tokenizer_config.json when it sets one. The result is a plain `PreTrainedTokenizerFast` (left padding,
    `chat_template` set to the original chat prompt), so `save_pretrained` / `AutoTokenizer.from_pretrained` need
    no remote code; it has `bos_token` <sop>, `eos_token` <eop>, `mask_token` [MASK], `pad_token` and `unk_token`
    as the original.
    [gMASK] (`GMASK_TOKEN`, id `tokenizer.convert_tokens_to_ids(GMASK_TOKEN)`) is no special token, as in the
    original: transformers 5 would cut a named special token out of the text and drop it from
    `decode(..., skip_special_tokens=True)`, where the original encodes "[gMASK]" in a text as a plain piece and
    keeps it in such decodes.
    """
    pieces, spec, byte_fallback = _read_model(Path(path))
    # Placeholders that no text can match: the normalizer turns every space into "▁" (see the module docstring).
    vocab = [(f"<image {index}>", 0.0) for index in range(num_image_tokens)]
    # SentencePiece gives a user-defined piece `length * max_score - 0.1`, max_score being at least 0 (FLT_MIN).
    max_score = max([0.0] + [score for _, score, kind in pieces if kind == _NORMAL])
    for piece, score, kind in pieces:
        if kind == _USER_DEFINED:
            score = len(piece) * max_score - 0.1
        elif kind != _NORMAL:
            score = 0.0
        if kind in (_CONTROL, _UNUSED) and piece not in _SPECIAL_CONTENTS:
            piece = f"{piece} (control)"
        vocab.append((piece, score))
    ids = {piece: index for index, (piece, _) in enumerate(vocab)}
    missing = [piece for piece in REQUIRED_PIECES if piece not in ids]
    if missing:
        raise ValueError(f"{path} lacks the pieces {missing} that ChatGLM-6B's tokenizer needs.")
    unknown = [piece for piece, _, kind in pieces if kind == _UNKNOWN]

    backend = Tokenizer(Unigram(vocab, unk_id=ids[unknown[0]] if unknown else None, byte_fallback=byte_fallback))
    backend.normalizer = _normalizer(spec)
    backend.decoder = _decoder(spec, byte_fallback)
    special: dict[str, AddedToken] = {
        name: AddedToken(content, lstrip=True, rstrip=True, normalized=False, special=True)
        for name, content in SPECIAL_TOKENS.items()
    }
    backend.add_special_tokens(list(special.values()))
    backend.post_processor = processors.TemplateProcessing(
        single="$A:0 [gMASK]:0 <sop>:0",
        pair="$A:0 [gMASK]:0 <sop>:0 $B:1 <eop>:1",
        special_tokens=[(token, ids[token]) for token in ("[gMASK]", "<sop>", "<eop>")],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
        **special,
    )
    return tokenizer


def chatglm_response(text: str) -> str:
    """The original `process_response`: the decoded reply stripped, "[[训练时间]]" read as "2023年", and the ASCII
    punctuation , ! : ; ? next to a CJK ideograph made full-width (the tokenizer's NFKC made it ASCII)."""
    text = text.strip().replace("[[训练时间]]", "2023年")
    for ascii_mark, full_width in ((",", "，"), ("!", "！"), (":", "："), (";", "；"), ("?", "？")):
        mark = re.escape(ascii_mark)
        text = re.sub(rf"([\u4e00-\u9fff]){mark}", rf"\1{full_width}", text)
        text = re.sub(rf"{mark}([\u4e00-\u9fff])", rf"{full_width}\1", text)
    return text


__all__ = [
    "CHAT_TEMPLATE",
    "GMASK_TOKEN",
    "SPECIAL_TOKENS",
    "chatglm_response",
    "chatglm_tokenizer_from_sentencepiece",
]
