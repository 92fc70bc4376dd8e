"""The rest of `GenerationMixin` on GLM, and the transformers releases the model must work with.

transformers' own common generation tests exercise these paths on every model: assisted and prompt-lookup decoding,
`generate()` without `input_ids`, continuing from a returned cache, streaming. Each is checked against plain greedy
decoding of the same prompt (GLM's Part B positions included). The last section pins the private generation hooks
the model overrides, so that a transformers release that changes one fails here by name.
"""

from __future__ import annotations

import inspect
from threading import Thread

import pytest
import torch
from test_generation import EOP, build_prompt, default_prompt, make_model, random_text
from transformers import GenerationMixin, TextIteratorStreamer
from transformers.cache_utils import StaticCache
from transformers.generation.streamers import BaseStreamer

from glm_hf.modeling.chatglm_positions import chatglm_position_ids
from glm_hf.modeling.modeling_glm import CACHE_OUTPUT_FIELD, GENERATE_CACHE_KWARG

from conftest import blank_inputs, tiny_chatglm, tiny_model, tiny_word_tokenizer

GREEDY = {"do_sample": False}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return tiny_word_tokenizer()  # the command ids of `make_model`'s config


def blank_prompt_settings(new_tokens: int = 8) -> tuple[torch.Tensor, dict]:
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    return input_ids, {**settings, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, **GREEDY}


# ---- assisted and prompt-lookup decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("assistant_seed", [0, 3])  # the same weights (every draft accepted), other weights
def test_assisted_greedy_equals_plain_greedy(assistant_seed: int) -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    plain = model.generate(input_ids, **settings)
    assisted = model.generate(input_ids, assistant_model=make_model(seed=assistant_seed), **settings)
    assert assisted.tolist() == plain.tolist()


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_prompt_lookup_greedy_equals_plain_greedy(cache_implementation: str) -> None:
    """Prompt lookup verifies its drafts in one step, also past max_length (transformers drops the extra tokens
    afterwards): a static cache has room for them."""
    model = make_model()
    # A prompt that repeats itself, so that prompt lookup finds drafts to propose.
    text = random_text(4, seed=5)
    input_ids, position_ids, block_position_ids, n = build_prompt(text + text, text)
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    settings.update(max_new_tokens=8, min_new_tokens=8, cache_implementation=cache_implementation, **GREEDY)
    plain = model.generate(input_ids, **settings)
    try:
        looked_up = model.generate(input_ids, prompt_lookup_num_tokens=3, **settings)
    except ValueError as error:
        if "not supported with Static cache" not in str(error):
            raise
        pytest.skip(f"this transformers release refuses assisted generation on a static cache: {error}")
    assert looked_up.tolist() == plain.tolist()
    assert model.generate(input_ids, prompt_lookup_num_tokens=10, **settings).tolist() == plain.tolist()
    assert model.generate(input_ids, prompt_lookup_num_tokens=3).tolist() == model.generate(input_ids).tolist()
    # Drafts found near the end: the verification step reaches past max_length.
    inputs = {name: value[:1] for name, value in blank_inputs(part_b=1).items()}
    options = {"max_new_tokens": 8, "min_new_tokens": 8, "cache_implementation": cache_implementation, **GREEDY}
    plain = tiny_model().generate(**inputs, **options)
    assert tiny_model().generate(**inputs, prompt_lookup_num_tokens=3, **options).tolist() == plain.tolist()


def test_chunked_prefill_is_refused_part_a_is_bidirectional() -> None:
    """Refused where transformers would prefill in chunks; prompt lookup, which never does, ignores the option as
    transformers does (it may come from a saved generation config)."""
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    with pytest.raises(ValueError, match="prefill_chunk_size=4 is not supported by GLM: Part A"):
        model.generate(input_ids, prefill_chunk_size=4, **settings)
    with pytest.raises(ValueError, match="prefill_chunk_size=4 is not supported by GLM: Part A"):
        model.generate(input_ids, prefill_chunk_size=4, num_beams=2, **settings)
    plain = model.generate(input_ids, prompt_lookup_num_tokens=3, **settings)
    assert model.generate(input_ids, prompt_lookup_num_tokens=3, prefill_chunk_size=4, **settings).tolist() == (
        plain.tolist()
    )


def test_no_internal_flag_reaches_the_model_kwargs() -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings(new_tokens=2)
    seen: list[set[str]] = []
    original = model.prepare_inputs_for_generation

    def record(*args, **kwargs):
        seen.append(set(kwargs))
        return original(*args, **kwargs)

    model.prepare_inputs_for_generation = record
    model.generate(input_ids, **settings)
    forward_parameters = set(inspect.signature(model.forward).parameters)
    generation_parameters = set(inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters)
    unknown = set().union(*seen) - forward_parameters - generation_parameters - {"cache_position"}
    assert unknown == set()


# ---- generate() without input_ids -----------------------------------------------------------------------------------


def test_generate_from_the_bos_token_equals_generate_from_a_bos_prompt() -> None:
    model = make_model()
    bos = torch.tensor([[model.config.bos_token_id]])
    from_nothing = model.generate(max_new_tokens=4, **GREEDY)
    assert from_nothing.tolist() == model.generate(bos, max_new_tokens=4, **GREEDY).tolist()


def test_generate_without_input_or_bos_says_what_is_missing_and_ends_the_run() -> None:
    """No prompt and no bos id: `_bos_prompt` gives none, positions are left to transformers, which names the
    missing bos id; the run's flags are given back (a later run is not taken for one nested in it)."""
    model = tiny_model()
    model.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        model.generate(max_new_tokens=2)
    assert model.glm.run_flags.thread is None and not model.glm.run_flags.nested


def test_generate_from_inputs_embeds_alone_equals_generate_from_ids() -> None:
    model = make_model()
    input_ids = default_prompt()[0]
    from_ids = model.generate(input_ids, max_new_tokens=5, min_new_tokens=5, **GREEDY)
    embeds = model.get_input_embeddings()(input_ids)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=5, min_new_tokens=5, **GREEDY)
    assert from_embeds.tolist() == from_ids[:, input_ids.shape[1] :].tolist()


# ---- continuing from a returned cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("blank_prompt", [True, False])
def test_continuing_from_a_returned_cache_equals_generating_in_one_go(blank_prompt: bool) -> None:
    """transformers' test_generate_continue_from_past_key_values: the second call gets the whole sequence and the
    cache; the cached run's positions (and prefix_length) carry on, so the tokens and the cache equal one run."""
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    if not blank_prompt:  # the default prompt: all of it is Part A, new tokens count block positions up
        settings = {"max_new_tokens": 8, "min_new_tokens": 8, **GREEDY}
    one_go = model.generate(input_ids, return_dict_in_generate=True, **settings)
    first = model.generate(
        input_ids, return_dict_in_generate=True, **{**settings, "max_new_tokens": 5, "min_new_tokens": 5}
    )
    continued = model.generate(
        first.sequences,
        **{GENERATE_CACHE_KWARG: first[CACHE_OUTPUT_FIELD]},
        return_dict_in_generate=True,
        max_new_tokens=3,
        min_new_tokens=3,
        **GREEDY,
    )
    assert continued.sequences.tolist() == one_go.sequences.tolist()
    for whole, parts in zip(one_go[CACHE_OUTPUT_FIELD].layers, continued[CACHE_OUTPUT_FIELD].layers, strict=True):
        torch.testing.assert_close(parts.keys, whole.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts.values, whole.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("block_position_encoding", [True, False], ids=["2-D", "1-D"])
def test_chatglm_continued_from_its_returned_cache_equals_one_run(
    block_position_encoding: bool, cache_implementation: str
) -> None:
    """A ChatGLM prompt's positions come from its ids; a 1-D ChatGLM's new tokens keep the mask's index (held
    positions), which the second call, with no [gMASK] among its new columns, gets from the cached run."""
    model = tiny_chatglm(block_position_encoding)
    ids = torch.tensor([[20, 30, 40, 90, 5], [21, 31, 41, 90, 5]])
    settings = {"return_dict_in_generate": True, "output_logits": True}
    one_go = model.generate(ids, max_new_tokens=8, min_new_tokens=8, **settings, **GREEDY)
    # The first run's cache must hold the second run's columns too: a static one is made for both.
    cache = StaticCache(config=model.config, max_cache_len=16) if cache_implementation == "static" else None
    first = model.generate(ids, past_key_values=cache, max_new_tokens=5, min_new_tokens=5, **settings, **GREEDY)
    continued = model.generate(
        first.sequences,
        **{GENERATE_CACHE_KWARG: first[CACHE_OUTPUT_FIELD]},
        return_dict_in_generate=True,
        output_logits=True,
        max_new_tokens=3,
        min_new_tokens=3,
        **GREEDY,
    )
    assert continued.sequences.tolist() == one_go.sequences.tolist()
    for whole, parts in zip(one_go.logits[5:], continued.logits, strict=True):
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_a_1d_chatglm_gives_new_tokens_the_mask_index_with_its_positions_given_too() -> None:
    """The positions the model would read from the ids, given: the same logits ([MASK] and [gMASK] rows); drafts
    (assisted or prompt-lookup decoding, whose positions transformers numbers up) are refused."""
    model = tiny_chatglm(block_position_encoding=False)
    ids = torch.tensor([[20, 21, 89, 22, 23, 24, 5], [30, 31, 32, 33, 34, 90, 5]])
    settings = {"return_dict_in_generate": True, "output_logits": True, "max_new_tokens": 5, **GREEDY}
    read = model.generate(ids, **settings)
    config = model.config
    positions = chatglm_position_ids(ids, config.mask_token_id, config.gmask_token_id, 5, position_encoding_2d=False)
    given = model.generate(ids, position_ids=positions, **settings)
    for expected, got in zip(read.logits, given.logits, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not supported for a 1-D ChatGLM"):
        model.generate(ids, prompt_lookup_num_tokens=3, max_new_tokens=5, **GREEDY)


def test_continuing_from_inputs_embeds_and_a_cache_equals_generating_in_one_go() -> None:
    """transformers' test_generate_continue_from_inputs_embeds."""
    model = make_model()
    embed = model.get_input_embeddings()
    prompt = embed(default_prompt()[0])
    one_go = model.generate(inputs_embeds=prompt, max_new_tokens=8, min_new_tokens=8, **GREEDY)
    first = model.generate(
        inputs_embeds=prompt, max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, **GREEDY
    )
    continued = model.generate(
        inputs_embeds=torch.cat([prompt, embed(first.sequences)], dim=1),
        **{GENERATE_CACHE_KWARG: first[CACHE_OUTPUT_FIELD]},
        max_new_tokens=3,
        min_new_tokens=3,
        **GREEDY,
    )
    assert torch.cat([first.sequences, continued], dim=1).tolist() == one_go.tolist()


def test_explicit_positions_for_the_first_columns_continue_by_the_part_b_rule() -> None:
    """A second call may pass the prompt's own position ids (shorter than the sequence): later columns follow GLM's
    rule, as they did in the first call."""
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    one_go = model.generate(input_ids, **settings)
    first = model.generate(
        input_ids, return_dict_in_generate=True, **{**settings, "max_new_tokens": 5, "min_new_tokens": 5}
    )
    cache = first[CACHE_OUTPUT_FIELD]
    del cache.glm_generation_run  # only the positions given here describe the run
    continued = model.generate(
        first.sequences, **{GENERATE_CACHE_KWARG: cache}, **{**settings, "max_new_tokens": 3, "min_new_tokens": 3}
    )
    assert continued.tolist() == one_go.tolist()


def test_a_given_static_cache_too_small_for_the_run_is_refused_naming_the_sizes() -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings(new_tokens=4)
    first = model.generate(input_ids, cache_implementation="static", return_dict_in_generate=True, **settings)
    cache = first[CACHE_OUTPUT_FIELD]
    needed = first.sequences.shape[1] + 6 - 1
    with pytest.raises(ValueError, match=rf"holds {cache.get_max_length()} columns; this run writes {needed}"):
        model.generate(first.sequences, **{GENERATE_CACHE_KWARG: cache}, max_new_tokens=6, **GREEDY)


# ---- streaming ------------------------------------------------------------------------------------------------------


class TokenRecorder(BaseStreamer):
    """Records what `generate()` streams: the prompt first, then each new token; and the calls to `end`."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.chunks.append(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ended += 1


def test_generate_streams_each_new_token() -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    recorder = TokenRecorder()
    output = model.generate(input_ids, streamer=recorder, **settings)
    assert recorder.chunks[0] == input_ids[0].tolist()
    assert [token for chunk in recorder.chunks[1:] for token in chunk] == output[0, input_ids.shape[1] :].tolist()
    assert recorder.ended == 1


def test_fill_blanks_streams_every_blank_and_ends_once(tiny_tokenizer) -> None:
    from glm_hf import fill_blanks

    model = make_model()
    recorder = TokenRecorder()
    text = "the old king of the [MASK] house was a [MASK] man ."
    [streamed] = fill_blanks(model, tiny_tokenizer, text, streamer=recorder, max_new_tokens=4)
    [plain] = fill_blanks(model, tiny_tokenizer, text, max_new_tokens=4)
    assert streamed == plain
    assert recorder.ended == 1
    # Only generated tokens are streamed (no prompt), one blank after the other.
    streamed_text = tiny_tokenizer.decode(
        [token for chunk in recorder.chunks for token in chunk if token != EOP], skip_special_tokens=True
    )
    assert streamed_text.split() == " ".join(plain.spans).split()


def test_fill_blanks_with_a_streamer_takes_one_text_at_a_time(tiny_tokenizer) -> None:
    from glm_hf import fill_blanks

    with pytest.raises(ValueError, match="one text at a time"):
        fill_blanks(make_model(), tiny_tokenizer, ["a [MASK] b", "c [MASK] d"], streamer=TokenRecorder())


def test_text_iterator_streamer_yields_the_generated_text(tiny_tokenizer) -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    streamer = TextIteratorStreamer(tiny_tokenizer, skip_prompt=True)
    thread = Thread(target=model.generate, kwargs={"inputs": input_ids, "streamer": streamer, **settings})
    thread.start()
    text = "".join(streamer)
    thread.join()
    expected = model.generate(input_ids, **settings)[0, input_ids.shape[1] :]
    assert text.split() == tiny_tokenizer.decode(expected).split()


# ---- both names of the cache ---------------------------------------------------------------------------------------


def test_forward_takes_the_cache_under_both_names_and_returns_it_in_the_installed_field() -> None:
    model = make_model()
    input_ids, settings = blank_prompt_settings()
    prompt = {key: settings[key] for key in ("position_ids", "block_position_ids", "prefix_length")}
    caches = [model(input_ids, **prompt, use_cache=True)[CACHE_OUTPUT_FIELD] for _ in range(3)]
    assert caches[0].get_seq_length() == input_ids.shape[1]
    step = {"position_ids": prompt["position_ids"][:, -1:], "block_position_ids": prompt["block_position_ids"][:, -1:]}
    token = torch.tensor([[9]])
    by_new_name = model(token, **step, cache=caches[0], use_cache=True)
    by_old_name = model(token, **step, past_key_values=caches[1], use_cache=True)
    torch.testing.assert_close(by_new_name.logits, by_old_name.logits, rtol=0, atol=0)
    assert by_new_name[CACHE_OUTPUT_FIELD] is caches[0]
    with pytest.raises(ValueError, match="not both"):
        model(token, **step, cache=caches[1], past_key_values=caches[2])


# ---- the private hooks the model relies on --------------------------------------------------------------------------

# GenerationMixin methods GLM overrides that transformers does not document as public hooks, with the parameters our
# overrides take and pass on. A release that renames or reorders them must fail here, naming the hook.
PRIVATE_HOOKS = {
    "_prepare_cache_for_generation": [
        "self",
        "generation_config",
        "model_kwargs",
        "generation_mode",
        "batch_size",
        "max_cache_length",
    ],
    "_update_model_kwargs_for_generation": ["self", "outputs", "model_kwargs", "is_encoder_decoder", "num_new_tokens"],
    "_prepare_attention_mask_for_generation": ["self", "inputs_tensor", "generation_config", "model_kwargs"],
    "_prefill": ["self", "input_ids", "generation_config", "model_kwargs", "is_first_iteration"],
    "_extract_generation_mode_kwargs": [
        "self",
        "custom_generate",
        "kwargs",
        "synced_gpus",
        "assistant_model",
        "streamer",
    ],
    "_sample": [
        "self",
        "input_ids",
        "logits_processor",
        "stopping_criteria",
        "generation_config",
        "synced_gpus",
        "streamer",
        "model_kwargs",
    ],
}


@pytest.mark.parametrize("hook", sorted(PRIVATE_HOOKS))
def test_the_private_generation_hooks_keep_their_signature(hook: str) -> None:
    method = getattr(GenerationMixin, hook, None)
    assert method is not None, f"transformers no longer has GenerationMixin.{hook}, which GLM overrides"
    parameters = list(inspect.signature(method).parameters)
    assert parameters[: len(PRIVATE_HOOKS[hook])] == PRIVATE_HOOKS[hook], (
        f"GenerationMixin.{hook} now takes {parameters}; GLMForConditionalGeneration.{hook} was written for "
        f"{PRIVATE_HOOKS[hook]}: adapt the override to this transformers release."
    )
