"""`generate()` of GLMForConditionalGeneration against hand-written, cache-free decoding loops.

Every test uses a tiny random model (large init so that greedy outputs are not degenerate repeats) and a prompt
built like the original GLM builds one: `[CLS] text [MASK] text [eos] [sop]`. Part A (everything before [sop])
has positions 0..n-1 and block position 0; [sop] takes the [MASK]'s position and block position 1; new tokens keep
that position and count block positions up. `prefix_length = n`, so [sop] and the new tokens are causal.
"""

from __future__ import annotations

import json

import pytest
import torch

from glm_hf import GLMConfig, GLMForConditionalGeneration

VOCAB = 96
PAD, EOS, CLS, SEP, MASK, UNK, SOP, EOP = 0, 0, 1, 2, 3, 4, 5, 6
FIRST_TEXT_ID = 7


def make_model(seed: int = 0) -> GLMForConditionalGeneration:
    config = GLMConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=65,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=CLS,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
        unk_token_id=UNK,
        sop_token_id=SOP,
        eop_token_id=EOP,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return GLMForConditionalGeneration(config).eval()


def random_text(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TEXT_ID, VOCAB, (length,), generator=generator).tolist()


def build_prompt(
    before: list[int], after: list[int], part_b: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """`[CLS] before [MASK] after [eos] [sop] part_b` -> input_ids, position_ids, block_position_ids [1, T] and the
    Part A length. `part_b` is an already started span (its tokens keep the [MASK]'s position)."""
    part_a = [CLS, *before, MASK, *after, EOS]
    n = len(part_a)
    mask_position = 1 + len(before)
    span = len(part_b) + 1
    input_ids = torch.tensor([[*part_a, SOP, *part_b]])
    position_ids = torch.tensor([[*range(n)] + [mask_position] * span])
    block_position_ids = torch.tensor([[0] * n + [*range(1, span + 1)]])
    return input_ids, position_ids, block_position_ids, n


def default_prompt(seed: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    return build_prompt(random_text(5, seed), random_text(4, seed + 100))


def extend_positions(
    position_ids: torch.Tensor, block_position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One more Part B token: same position as the last one, next block position."""
    return (
        torch.cat([position_ids, position_ids[:, -1:]], dim=-1),
        torch.cat([block_position_ids, block_position_ids[:, -1:] + 1], dim=-1),
    )


@torch.no_grad()
def greedy_reference(
    model: GLMForConditionalGeneration,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    block_position_ids: torch.Tensor,
    prefix_length: int,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (EOP, EOS),
    banned_ids: tuple[int, ...] = (),
) -> list[int]:
    """Greedy decoding that recomputes the whole sequence every step (no cache); stops after a stop id.

    `banned_ids` never win (what `min_new_tokens` does to the eos ids in `generate()`).
    """
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=input_ids,
            position_ids=position_ids,
            block_position_ids=block_position_ids,
            prefix_length=prefix_length,
            use_cache=False,
        ).logits
        scores = logits[0, -1].clone()
        scores[list(banned_ids)] = -float("inf")
        next_token = int(scores.argmax())
        new_tokens.append(next_token)
        if next_token in stop_ids:
            break
        input_ids = torch.cat([input_ids, torch.tensor([[next_token]])], dim=-1)
        position_ids, block_position_ids = extend_positions(position_ids, block_position_ids)
    return new_tokens


@torch.no_grad()
def beam_reference(
    model: GLMForConditionalGeneration,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    block_position_ids: torch.Tensor,
    prefix_length: int,
    num_beams: int,
    steps: int,
) -> tuple[list[int], float]:
    """Cache-free beam search without eos: keep the top `num_beams` log-prob sums over beams x vocab each step.

    All hypotheses have the same length, so the best sum wins whatever the length penalty. Returns the new tokens
    of the best beam and its sum of log-probabilities.
    """
    beams = input_ids
    sums = torch.zeros(1)
    for _ in range(steps):
        n_beams = beams.shape[0]
        logits = model(
            input_ids=beams,
            position_ids=position_ids.expand(n_beams, -1),
            block_position_ids=block_position_ids.expand(n_beams, -1),
            prefix_length=prefix_length,
            use_cache=False,
        ).logits[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        totals = (sums[:, None] + log_probs).reshape(-1)
        sums, flat_index = totals.topk(num_beams)
        beam_index, token = flat_index // VOCAB, flat_index % VOCAB
        beams = torch.cat([beams[beam_index], token[:, None]], dim=-1)
        position_ids, block_position_ids = extend_positions(position_ids, block_position_ids)
    return beams[0, input_ids.shape[1] :].tolist(), float(sums[0])


def new_tokens_of(output: torch.Tensor, prompt_length: int) -> list[list[int]]:
    return output[:, prompt_length:].tolist()


# ---- 1. greedy with cache == cache-free hand loop, both stopping at [eop] -------------------------------------------


@torch.no_grad()
def test_greedy_with_cache_matches_cache_free_loop_and_stops_at_eop() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    prompt_length = input_ids.shape[1]

    # Without stopping: the free-running greedy continuation must be non-degenerate (else the test proves little).
    free = greedy_reference(model, input_ids, position_ids, block_position_ids, n, 12, stop_ids=())
    assert len(set(free)) >= 4, free
    assert EOP not in free and EOS not in free, "pick another prompt: the free run already ends"

    # Make [eop] the argmax at step `eop_step` (and possibly earlier) by rewriting its (tied) embedding row: hidden
    # states do not depend on that row until [eop] is an input, so earlier steps are unchanged.
    eop_step = 6
    sequence = torch.cat([input_ids, torch.tensor([free[:eop_step]])], dim=-1)
    positions, blocks = position_ids, block_position_ids
    for _ in range(eop_step):
        positions, blocks = extend_positions(positions, blocks)
    out = model(
        input_ids=sequence,
        position_ids=positions,
        block_position_ids=blocks,
        prefix_length=n,
        use_cache=False,
        output_hidden_states=True,
    )
    hidden = out.hidden_states[-1][0, -1]
    target_logit = out.logits[0, -1].max() + 5.0
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.get_input_embeddings().weight[EOP] = hidden * target_logit / hidden.dot(hidden)

    reference = greedy_reference(model, input_ids, position_ids, block_position_ids, n, 12)
    assert reference[-1] == EOP and len(reference) <= eop_step + 1, reference
    assert EOS not in reference

    output = model.generate(
        input_ids,
        position_ids=position_ids,
        block_position_ids=block_position_ids,
        prefix_length=n,
        max_new_tokens=12,
        do_sample=False,
        use_cache=True,
    )
    generated = new_tokens_of(output, prompt_length)[0]
    assert generated == reference  # same tokens, and generate() stopped right after the first [eop]

    # Also without stopping: the whole 12-token continuation matches.
    model.get_input_embeddings().weight[EOP] = 0.0
    output = model.generate(
        input_ids,
        position_ids=position_ids,
        block_position_ids=block_position_ids,
        prefix_length=n,
        min_new_tokens=12,
        max_new_tokens=12,
        do_sample=False,
        use_cache=True,
    )
    reference = greedy_reference(
        model, input_ids, position_ids, block_position_ids, n, 12, stop_ids=(), banned_ids=(EOP, EOS)
    )
    assert new_tokens_of(output, prompt_length)[0] == reference


# ---- 2. beam search with cache == cache-free hand-written beam search -----------------------------------------------


@torch.no_grad()
def test_beam_search_with_cache_matches_cache_free_beam_search() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    steps, num_beams = 10, 3
    reference, reference_sum = beam_reference(model, input_ids, position_ids, block_position_ids, n, num_beams, steps)
    greedy = greedy_reference(model, input_ids, position_ids, block_position_ids, n, steps, stop_ids=())
    assert reference != greedy, "beam search should differ from greedy on this prompt, else the test proves little"

    output = model.generate(
        input_ids,
        position_ids=position_ids,
        block_position_ids=block_position_ids,
        prefix_length=n,
        max_new_tokens=steps,
        num_beams=num_beams,
        length_penalty=1.0,
        do_sample=False,
        eos_token_id=None,  # no hypothesis can end early: all have `steps` new tokens
        # Explicit: with eos disabled, transformers would infer the padding mask from the pad id (0), which is
        # also the prompt's [eos] token, and hide that Part A token.
        attention_mask=torch.ones_like(input_ids),
        use_cache=True,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert new_tokens_of(output.sequences, input_ids.shape[1])[0] == reference
    # transformers scores a hypothesis as sum / new_length ** length_penalty.
    assert float(output.sequences_scores[0]) == pytest.approx(reference_sum / steps, abs=1e-4)


# ---- 3. use_cache=True == use_cache=False ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        {"do_sample": False},
        {"do_sample": False, "num_beams": 3, "num_return_sequences": 3},
        {"do_sample": True, "top_k": 0, "temperature": 1.0},
    ],
    ids=["greedy", "beam", "sampling"],
)
@torch.no_grad()
def test_generate_with_cache_matches_generate_without_cache(mode: dict) -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(1234)
        outputs.append(
            model.generate(
                input_ids,
                position_ids=position_ids,
                block_position_ids=block_position_ids,
                prefix_length=n,
                min_new_tokens=10,
                max_new_tokens=10,
                use_cache=use_cache,
                **mode,
            )
        )
    assert outputs[0].shape == outputs[1].shape
    assert outputs[0].tolist() == outputs[1].tolist()


# ---- 4. batched, left-padded generation == each prompt alone --------------------------------------------------------


@torch.no_grad()
def test_left_padded_batch_matches_single_prompts() -> None:
    model = make_model()
    # The second prompt continues a started span, so the rows' prefix lengths (pads + Part A) differ.
    prompts = [default_prompt(), build_prompt(random_text(9, 7), random_text(6, 8), part_b=(40, 41))]
    lengths = [p[0].shape[1] for p in prompts]
    width = max(lengths)
    assert lengths[0] != lengths[1]

    ids_rows, pos_rows, blk_rows, mask_rows, prefixes = [], [], [], [], []
    for (input_ids, position_ids, block_position_ids, n), length in zip(prompts, lengths, strict=True):
        pads = width - length
        ids_rows.append(torch.cat([torch.full((1, pads), PAD), input_ids], dim=-1))
        pos_rows.append(torch.cat([torch.zeros(1, pads, dtype=torch.long), position_ids], dim=-1))
        blk_rows.append(torch.cat([torch.zeros(1, pads, dtype=torch.long), block_position_ids], dim=-1))
        mask_rows.append(
            torch.cat([torch.zeros(1, pads, dtype=torch.long), torch.ones(1, length, dtype=torch.long)], -1)
        )
        prefixes.append(pads + n)
    assert prefixes[0] != prefixes[1]

    settings = {"do_sample": False, "min_new_tokens": 8, "max_new_tokens": 8}
    batched = model.generate(
        torch.cat(ids_rows),
        position_ids=torch.cat(pos_rows),
        block_position_ids=torch.cat(blk_rows),
        attention_mask=torch.cat(mask_rows),
        prefix_length=torch.tensor(prefixes),
        **settings,
    )
    batched_new = new_tokens_of(batched, width)

    for row, (input_ids, position_ids, block_position_ids, n) in enumerate(prompts):
        alone = model.generate(
            input_ids, position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n, **settings
        )
        assert batched_new[row] == new_tokens_of(alone, input_ids.shape[1])[0], f"row {row}"
        # and both agree with the cache-free reference
        reference = greedy_reference(
            model, input_ids, position_ids, block_position_ids, n, 8, stop_ids=(), banned_ids=(EOP, EOS)
        )
        assert batched_new[row] == reference, f"row {row}"


# ---- 5. without prefix_length the whole prompt is Part A ------------------------------------------------------------


@torch.no_grad()
def test_default_prefix_length_is_the_prompt() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    prompt_length = input_ids.shape[1]
    settings = {"do_sample": False, "min_new_tokens": 8, "max_new_tokens": 8}

    # The choice matters on this prompt: with [sop] in Part A the last logits differ from [sop] being causal.
    logits = [
        model(
            input_ids=input_ids,
            position_ids=position_ids,
            block_position_ids=block_position_ids,
            prefix_length=prefix,
            use_cache=False,
        ).logits[0, -1]
        for prefix in (n, prompt_length)
    ]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)

    default = model.generate(input_ids, position_ids=position_ids, block_position_ids=block_position_ids, **settings)
    explicit = model.generate(
        input_ids,
        position_ids=position_ids,
        block_position_ids=block_position_ids,
        prefix_length=prompt_length,
        **settings,
    )
    reference = greedy_reference(
        model, input_ids, position_ids, block_position_ids, prompt_length, 8, stop_ids=(), banned_ids=(EOP, EOS)
    )
    assert default.tolist() == explicit.tolist()
    assert new_tokens_of(default, prompt_length)[0] == reference


# ---- 6. stacked [B, 2, T] position ids ------------------------------------------------------------------------------


@torch.no_grad()
def test_stacked_position_ids_match_separate_ones() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = {"do_sample": False, "min_new_tokens": 8, "max_new_tokens": 8, "prefix_length": n}
    separate = model.generate(input_ids, position_ids=position_ids, block_position_ids=block_position_ids, **settings)
    stacked = model.generate(
        input_ids, position_ids=torch.stack([position_ids, block_position_ids], dim=1), **settings
    )
    assert stacked.tolist() == separate.tolist()
    reference = greedy_reference(
        model, input_ids, position_ids, block_position_ids, n, 8, stop_ids=(), banned_ids=(EOP, EOS)
    )
    assert new_tokens_of(stacked, input_ids.shape[1])[0] == reference


# ---- 7. the saved generation config ---------------------------------------------------------------------------------


@torch.no_grad()
def test_saved_generation_config_stops_at_eop_and_eos(tmp_path) -> None:
    model = make_model()
    model.save_pretrained(tmp_path)
    generation_config = json.loads((tmp_path / "generation_config.json").read_text())
    eos = generation_config["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert EOP in eos and EOS in eos
    assert generation_config["pad_token_id"] == PAD

    loaded = GLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert set(loaded.generation_config.eos_token_id) == {EOP, EOS}
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = {"do_sample": False, "max_new_tokens": 10, "prefix_length": n}
    before = model.generate(input_ids, position_ids=position_ids, block_position_ids=block_position_ids, **settings)
    after = loaded.generate(input_ids, position_ids=position_ids, block_position_ids=block_position_ids, **settings)
    assert after.tolist() == before.tolist()


def test_eos_inside_the_prompt_is_not_taken_for_padding() -> None:
    """GLM prompts hold [eos] (here also the pad id) in Part A; without a mask nothing is padding, whatever eos is."""
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    settings.update(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    default = model.generate(input_ids, **settings)
    assert default.tolist() == model.generate(input_ids, **settings, eos_token_id=None).tolist()
    assert default.tolist() == model.generate(input_ids, **settings, eos_token_id=EOP).tolist()
    assert new_tokens_of(default, input_ids.shape[1])[0] == greedy_reference(
        model, input_ids, position_ids, block_position_ids, n, max_new_tokens=6, stop_ids=(), banned_ids=(EOP, EOS)
    )


def test_generation_continues_past_the_position_rows_while_positions_fit() -> None:
    """New tokens keep the [MASK]'s position, so a prompt filling the position table can still be continued."""
    model = make_model()
    model.config.max_position_embeddings = 65  # the table; the prompt below uses it all
    before = random_text(59, 3)
    input_ids, position_ids, block_position_ids, n = build_prompt(before, random_text(2, 4))
    assert input_ids.shape[1] == 65
    output = model.generate(
        input_ids,
        position_ids=position_ids,
        block_position_ids=block_position_ids,
        prefix_length=n,
        max_new_tokens=4,
        min_new_tokens=4,
        do_sample=False,
    )
    assert output.shape[1] == 69
    too_far = block_position_ids.clone()
    too_far[0, -1] = 65
    with pytest.raises(ValueError, match="max_position_embeddings=65"):
        model(input_ids, position_ids=position_ids, block_position_ids=too_far, prefix_length=n)


def test_left_padded_batch_without_position_ids_counts_positions_from_the_first_token() -> None:
    """With only an attention_mask, as HF users pass it, positions skip the pads (forward and generate)."""
    model = make_model()
    short = torch.tensor([[CLS, 20, 21, MASK, EOS]])
    long = torch.tensor([[CLS, 30, 31, 32, 33, MASK, 34, EOS]])
    batch = torch.cat([torch.nn.functional.pad(short, (3, 0), value=PAD), long])
    attention_mask = (torch.arange(8) >= torch.tensor([[3], [0]])).long()
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    together = model.generate(batch, attention_mask=attention_mask, **settings)
    alone = model.generate(short, **settings)
    assert together[0, 8:].tolist() == alone[0, 5:].tolist()
    with torch.no_grad():
        padded_logits = model(batch, attention_mask=attention_mask).logits[0, 3:]
        torch.testing.assert_close(padded_logits, model(short).logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_generates_like_the_dynamic_cache(num_beams: int) -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    settings.update(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=num_beams)
    dynamic = model.generate(input_ids, **settings)
    static = model.generate(input_ids, cache_implementation="static", **settings)
    assert static.tolist() == dynamic.tolist()


def test_generation_from_inputs_embeds_equals_generation_from_ids() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, prefix_length=n)
    settings.update(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    from_ids = model.generate(input_ids, **settings)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(input_ids), **settings)
    assert from_embeds.tolist() == from_ids[:, input_ids.shape[1] :].tolist()


def test_zero_dim_prefix_length_works_with_beam_search() -> None:
    model = make_model()
    input_ids, position_ids, block_position_ids, n = default_prompt()
    settings = dict(position_ids=position_ids, block_position_ids=block_position_ids, max_new_tokens=4)
    as_int = model.generate(input_ids, prefix_length=n, num_beams=3, **settings)
    as_tensor = model.generate(input_ids, prefix_length=torch.tensor(n), num_beams=3, **settings)
    assert as_tensor.tolist() == as_int.tolist()
