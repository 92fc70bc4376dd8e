"""`generate()`'s greedy / sampling loop on a static cache, with the decode step replayed from a CUDA graph.

On a GPU a batch-1 decode step of glm-2b reads its 3.84 GB of weights in about 1 ms, while an eager step spends
more host time than that (~40 dispatched ops in each of 36 layers), and transformers' loop then waits for the device
at every step (its stop check reads a device flag). Here, on a static cache:

- the step (one new token per row through the model) reads everything from fixed buffers: the tokens, a column
  counter on the device, the positions of every column and the padding mask (both set before the first step), the
  prefix length; the cache advances its own counters. On CUDA it is captured once as a CUDA graph and replayed: one
  launch per token. The graph and its buffers stay with the cache, so a later `generate()` on the same cache (the
  one `generate()` keeps for its own static runs, or a caller's) replays it without recording again, unless the
  weights moved, the cache's tensors were replaced (`cache_pointers`: a beam search on it reorders them into new
  ones) or a module is set otherwise (`module_settings`: adapters switched off or merged, training mode, another
  forward or attention implementation), which a replay, running no Python, would not see;
- where transformers would compile the step (`cache_implementation="static"`), it is compiled first, without
  torch.compile's own CUDA graphs (the graph here holds the whole step);
- on CUDA the stop check reads the previous step's flag, so the host queues a step while the device still runs the
  last one (transformers' `DeferredStopCheck`, which it uses on MPS). The one step too many is undone, its random
  numbers included (a seeded run leaves the generator as transformers' loop does); its logits processors and
  stopping criteria have seen it, as transformers' deferred check lets them. Where the cache outlives the call (a
  caller's or a returned one), or a streamer reads every token anyway, the flag is read at every step instead, so
  that the cache holds exactly the columns transformers' loop would leave.

A step that cannot be captured (a host read somewhere in the forward) runs eagerly, with a warning naming the error.
A run with a forward hook set on the model runs its steps eagerly too, every one: a replayed graph runs no Python,
so the hook would see only the steps before the capture (by default such a run takes transformers' loop instead).
So does a run under `torch.autocast`: a graph captured there would hold the weights' casts, which autocast frees
when its context ends, and one captured without it would not cast.

On the CPU the same loop runs the step eagerly and checks the stop flag at every step (nothing runs ahead of the
host there). Token selection, logits processors, stopping criteria and streamers are transformers' own, called as
`GenerationMixin._sample` calls them: the tokens are the same.
"""

from __future__ import annotations

import types
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.generation import GenerateDecoderOnlyOutput, GenerationConfig
from transformers.utils import logging

if TYPE_CHECKING:
    from .modeling_glm import GLMForConditionalGeneration

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the output field that holds the cache (`past_key_values` before).
GENERATE_OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
)
# Eager steps before the capture: lazy initialisations (cuBLAS handles, a compiled step's first run) happen outside.
WARMUP_STEPS = 1
COMPILED_WARMUP_STEPS = 2


def static_cache_loop_applies(
    model: GLMForConditionalGeneration,
    cache: Cache | None,
    generation_config: GenerationConfig,
    model_kwargs: dict[str, Any],
    synced_gpus: bool,
) -> bool:
    """Whether this greedy / sampling run takes the loop here: a static cache that stays where it is (an offloading
    one moves every layer off the device and back in each forward: no fixed buffers for a graph), weights on a
    device (not on `meta`, offloaded by accelerate's hooks: the step's buffers would have no data), and nothing that
    needs transformers' loop (per-step attentions or hidden states, synced GPUs, an assistant's run, PEFT's own
    per-step inputs)."""
    return (
        cache is not None
        and model.device.type != "meta"
        and cache.is_compileable
        and not getattr(cache, "offloading", False)
        and model_kwargs.get("position_ids") is not None
        and not synced_gpus
        and not generation_config.output_attentions
        and not generation_config.output_hidden_states
        and not generation_config.is_assistant
        and "prepare_inputs_for_generation" not in vars(model)  # PEFT's prompt learning patches it per run
    )


def last_column_logits(model: nn.Module, **inputs: Any) -> torch.Tensor:
    """The model's float32 logits of the last column, [B, V]: the decode step's output."""
    return model(**inputs, return_dict=True).logits[:, -1].float()


def compiled_last_column_logits(model: GLMForConditionalGeneration, generation_config: GenerationConfig) -> Any:
    """`last_column_logits` compiled with the generation config's options, minus torch.compile's CUDA graphs (the
    captured step is one graph already), kept on the model so that later runs reuse the compiled code."""
    options = generation_config.compile_config.to_dict() if generation_config.compile_config is not None else {}
    options = {key: options[key] for key in ("fullgraph", "dynamic", "backend", "mode", "options") if key in options}
    if options.get("options"):  # inductor options instead of a mode (torch.compile takes one of the two)
        options.pop("mode", None)
    else:
        mode = options.get("mode") or "default"
        options["mode"] = "max-autotune-no-cudagraphs" if mode.startswith("max-autotune") else "default"
    key = tuple(sorted((name, repr(value)) for name, value in options.items()))
    cached = getattr(model, "_compiled_decode_step", None)
    if cached is None or cached[0] != key:
        cached = (key, torch.compile(last_column_logits, **options))
        model._compiled_decode_step = cached
    return cached[1]


class CapturedDecodeStep:
    """One decode step on a static cache from fixed buffers, eager at first and then replayed from a CUDA graph.

    Buffers span the cache's capacity, so a run of any length up to it reuses the graph: `begin()` copies the run's
    positions, padding mask and prefix length in, and sets the column counter to the run's first new column.
    """

    def __init__(
        self,
        model: GLMForConditionalGeneration,
        cache: Cache,
        batch_size: int,
        capacity: int,
        has_blocks: bool,
        has_mask: bool,
        forward: Any,
    ) -> None:
        device = model.device
        # Weakly: the model keeps its steps, so a strong reference would make a cycle that only the garbage
        # collector frees (with the weights, the cache and the graph's memory: `del model` would free no GPU memory).
        self.model_ref = weakref.ref(model)
        self.cache = weakref.ref(cache)  # the model keeps its steps by cache: a strong reference would keep both
        self.forward = forward
        self.tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = torch.zeros((batch_size, capacity), dtype=torch.long, device=device)
        self.block_positions = torch.zeros_like(self.positions) if has_blocks else None
        self.attention_mask = torch.ones_like(self.positions) if has_mask else None
        self.prefix_length = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        # When captured: the model's `module_settings`, the cache's `cache_pointers`.
        self.settings_at_capture: tuple[Any, ...] | None = None
        self.cache_pointers_at_capture: tuple[int, ...] | None = None
        self.capture = device.type == "cuda" and graph_capture_supported(model)
        self.warmup_left = COMPILED_WARMUP_STEPS if forward is not last_column_logits else WARMUP_STEPS
        self.parameter_pointers = parameter_pointers(model)
        self.inference_mode = torch.is_inference_mode_enabled()  # its buffers can only be written in the same mode

    @property
    def model(self) -> GLMForConditionalGeneration:
        model = self.model_ref()
        if model is None:
            raise ReferenceError("The model of this decode step is gone.")
        return model

    def takes(self, batch_size: int, has_blocks: bool, has_mask: bool, forward: Any, weights: tuple[int, ...]) -> bool:
        """Whether this step's buffers and forward serve a run with these inputs: the same batch and kinds of
        inputs, forward and inference mode, and the model's weights (`parameter_pointers`) where they were when it
        was built. A captured graph also needs `captured_over`."""
        return (
            batch_size == self.tokens.shape[0]
            and has_blocks == (self.block_positions is not None)
            and has_mask == (self.attention_mask is not None)
            and forward is self.forward
            and torch.is_inference_mode_enabled() == self.inference_mode
            and weights == self.parameter_pointers
        )

    def captured_over(self, settings: tuple[Any, ...], pointers: tuple[int, ...]) -> bool:
        """Whether its graph was captured over these module settings and cache tensors, its cache still alive: a
        replay runs no Python (adapters switched off or merged, a module put in training mode or given another
        forward would go unseen), and it writes keys into the tensors it was captured over (a beam search replaces
        them)."""
        return (
            self.cache() is not None
            and pointers == self.cache_pointers_at_capture
            and settings == self.settings_at_capture
        )

    def begin(
        self,
        positions: torch.Tensor,
        block_positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        prefix_length: int | torch.Tensor,
        first_column: int,
    ) -> None:
        """Load one run's inputs: positions (and the mask) of its columns `0 .. N-1`, N at most the capacity."""
        columns = positions.shape[-1]
        self.positions[:, :columns].copy_(positions)
        if self.block_positions is not None:
            self.block_positions[:, :columns].copy_(block_positions)
        if self.attention_mask is not None:
            self.attention_mask.fill_(1)  # columns past the run's are hidden by the causal rule
            self.attention_mask[:, : attention_mask.shape[-1]].copy_(attention_mask)
        if torch.is_tensor(prefix_length):
            self.prefix_length.copy_(prefix_length.reshape(-1).expand_as(self.prefix_length))
        else:
            self.prefix_length.fill_(prefix_length)
        self.column.fill_(first_column)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` ([B]) at the current column; the last column's float32 logits [B, V] (a buffer that the next
        step overwrites)."""
        self.tokens.copy_(tokens.view(-1, 1))
        flags = self.model.glm.run_flags
        # A replay runs no Python: no hook would see the step. Under autocast a capture would hold the weights'
        # casts, which autocast frees when its context ends (and a graph captured without it would ignore it).
        replays = self.capture and not flags.forward_hooks and not torch.is_autocast_enabled(self.tokens.device.type)
        if not replays or not flags.positions_prechecked or self.model.training:
            # Eager: on the CPU; with a hook; a run whose ids may pass the position tables (the per-step check, a
            # host sync, which a replay would skip); dropout.
            self._run()
        elif self.graph is not None:
            self.graph.replay()
        elif self.warmup_left > 0:
            self.warmup_left -= 1
            self._run_on_side_stream()
        else:
            self._capture()
        return self.logits

    def _run(self) -> None:
        inputs = {
            "input_ids": self.tokens,
            "position_ids": self.positions.index_select(1, self.column),
            "attention_mask": self.attention_mask,
            "prefix_length": self.prefix_length,
            "past_key_values": self.cache(),
            "use_cache": True,
            "logits_to_keep": 1,
        }
        if self.block_positions is not None:
            inputs["block_position_ids"] = self.block_positions.index_select(1, self.column)
        logits = self.forward(self.model, **inputs)
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        self.logits.copy_(logits)
        self.column.add_(1)

    def _run_on_side_stream(self) -> None:
        """A warm-up step, on a side stream as CUDA graph capture wants it."""
        stream = torch.cuda.Stream(device=self.tokens.device)
        stream.wait_stream(torch.cuda.current_stream(self.tokens.device))
        with torch.cuda.stream(stream):
            self._run()
        torch.cuda.current_stream(self.tokens.device).wait_stream(stream)

    def _capture(self) -> None:
        """Record the step as a CUDA graph (recording runs nothing), then replay it for this step."""
        graph = torch.cuda.CUDAGraph()
        self.settings_at_capture = module_settings(self.model)
        self.cache_pointers_at_capture = cache_pointers(self.cache())
        try:
            with torch.cuda.graph(graph):
                self._run()
        except RuntimeError as error:
            logger.warning_once(f"The decode step could not be captured as a CUDA graph ({error}); decoding eagerly.")
            self.capture = False
            self._run()
            return
        self.graph = graph
        graph.replay()


def autocast_dtypes(device: torch.device) -> tuple[torch.dtype | None, ...]:
    """The dtype autocast computes in on the device's type (None where it is off): the dtype of the keys a run
    writes. Weights on a device autocast does not know (`meta`: offloaded, moved in at each forward) compute
    elsewhere: then on the CPU and CUDA both."""
    kinds = (device.type,) if torch.amp.is_autocast_available(device.type) else ("cpu", "cuda")
    return tuple(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None for kind in kinds)


def graph_capture_supported(model: nn.Module) -> bool:
    """Whether a CUDA graph may hold the model's step: not with quantized weights (their kernels may not be
    capturable, transformers does not compile them either) nor with weights offloaded by a device map (moved in at
    every forward)."""
    if getattr(model, "hf_quantizer", None) is not None:
        return False
    devices = {str(device) for device in getattr(model, "hf_device_map", {}).values()}
    return len(devices) <= 1 and not devices & {"cpu", "disk"}


def parameter_pointers(model: nn.Module) -> tuple[int, ...]:
    """Where the model's weights live: a graph captured over them is stale once any moved or was replaced."""
    return tuple(tensor.data_ptr() for tensor in (*model.parameters(), *model.buffers()))


def cache_pointers(cache: Cache) -> tuple[int, ...]:
    """Where the cache's tensors live (keys, values, counters of each layer): a graph captured over them writes and
    reads those addresses, stale once a layer's tensors are replaced (beam search reorders them into new ones)."""
    return tuple(
        value.data_ptr()
        for layer in getattr(cache, "layers", ())
        for value in getattr(layer, "__dict__", {}).values()
        if isinstance(value, torch.Tensor)
    )


# Not settings of a step: what `nn.Module.__init__` sets on every module (its parameters, buffers, children and
# hooks: the weights are compared by pointer, hooks keep a run off the graph; `training` is a setting) and the
# records of earlier runs, GLM's (the kept cache, the steps, the compiled step, the lock) and transformers' (the
# largest static cache it made, its compiled forward and the options it was compiled with).
NOT_SETTINGS = (frozenset(vars(nn.Module())) - {"training"}) | {
    "kept_static_cache",
    "decode_steps",
    "_compiled_decode_step",
    "generation_lock",
    "_previous_max_cache_length",
    "_compiled_call",
    "_last_compile_config",
}
PLAIN_TUPLE = (bool, int, float, complex, str, bytes, type(None))
PLAIN_TYPES = frozenset(PLAIN_TUPLE)


class Same:
    """An object compared by identity, held weakly where it can be: a setting that is a function or a method's
    instance. Not its id alone, which another object can take once the first is gone; not a strong reference, which
    could keep a cache or model alive through a step's settings."""

    __slots__ = ("key", "ref", "value")

    def __init__(self, value: Any) -> None:
        self.key = id(value)
        try:
            self.ref, self.value = weakref.ref(value), None
        except TypeError:  # no weak references to it (None, some C callables): held
            self.ref, self.value = None, value

    def target(self) -> Any:
        return self.value if self.ref is None else self.ref()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Same) or other.key != self.key or (self.ref is None) != (other.ref is None):
            return False
        target = self.target()
        return target is other.target() and (self.ref is None or target is not None)

    def __hash__(self) -> int:
        return self.key


def backend_settings() -> tuple[Any, ...]:
    """The process-wide choices a captured graph keeps as they were at capture: the SDPA backends allowed (also
    what `sdpa_kernel` sets) and the reduced-precision matmul options, by which kernels were picked."""
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.math_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
        torch.get_float32_matmul_precision(),
        cuda.matmul.allow_tf32,
        cuda.matmul.allow_fp16_reduced_precision_reduction,
        cuda.matmul.allow_bf16_reduced_precision_reduction,
        torch.backends.cudnn.allow_tf32,
    )


def module_settings(model: nn.Module) -> tuple[Any, ...]:
    """What a CUDA graph of the model's step holds besides the memory it reads, as a comparable value: the backend
    choices (`backend_settings`), the attention implementation and the functions looked up per call (attention,
    rotary), then each module (its identity and class, the class's `forward`) with its settings, the plain values
    on it (train / eval mode, PEFT's active, disabled and merged adapters and their scales, ...) and any function
    set on it. Other objects on a module (the config, caches, locks) are left out: they are not settings of the
    step. About 3 us per module on a 2-core CPU."""
    from .modeling_glm import apply_rotary, resolve_attention_interface

    implementation = getattr(model.config, "_attn_implementation", None)
    attention = resolve_attention_interface(implementation)
    settings: list[Any] = [backend_settings(), implementation, Same(attention), Same(apply_rotary)]
    for module in model.modules():
        fields = [
            (name, value if type(value) in PLAIN_TYPES else setting_value(value))
            for name, value in vars(module).items()
            if name not in NOT_SETTINGS
        ]
        settings.append((id(module), type(module), Same(getattr(type(module), "forward", None)), tuple(fields)))
    return tuple(settings)


def setting_value(value: Any, depth: int = 0) -> Any:
    """A module attribute's value as a setting: plain values as they are, containers of them (two levels deep)
    item by item, bound methods by function and instance, other callables (functions, partials) by identity
    (`Same`); None for any other object. Types are read with `type()`: `isinstance` would go through a config's
    own attribute look-up."""
    kind = type(value)
    if issubclass(kind, PLAIN_TUPLE):
        return value
    if issubclass(kind, (set, frozenset)) and depth < 2:
        return (kind, frozenset(setting_value(item, depth + 1) for item in value))
    if issubclass(kind, (list, tuple, dict)) and depth < 2:
        items = value.items() if issubclass(kind, dict) else value
        return (kind, tuple(setting_value(item, depth + 1) for item in items))
    if kind is types.MethodType:
        return ("method", Same(value.__func__), Same(value.__self__))
    if callable(value) and not issubclass(kind, (type, nn.Module)):
        return ("callable", Same(value))
    return None


class StopFlag:
    """Whether every row has finished: read one step late (the host does not wait for the device) or at once."""

    def __init__(self, device: torch.device, deferred: bool) -> None:
        self.deferred = deferred
        cuda = device.type == "cuda"
        # Deferred: the device's default generator (sampling, dropout) and its state before the latest decode step.
        self.generator = default_generator(device) if deferred else None
        self.state_before_step: torch.Tensor | None = None
        # Two slots: the flag of this step is copied into one while the other's (the step before) is read.
        self.flags = [torch.zeros((), dtype=torch.bool, pin_memory=cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() if cuda else None for _ in range(2)]
        self.steps = 0

    def finished(self, unfinished_sequences: torch.Tensor) -> bool:
        """Deferred: whether every row had finished one step earlier; else whether every row has finished now."""
        done = unfinished_sequences.max() == 0
        if not self.deferred:
            return bool(done)
        slot = self.steps % 2
        self.flags[slot].copy_(done, non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()
        self.steps += 1
        if self.steps == 1:
            return False
        earlier = 1 - slot
        if self.events[earlier] is not None:
            self.events[earlier].synchronize()
        return bool(self.flags[earlier])

    def before_step(self) -> None:
        """Deferred: keep the generator's state before a decode step (host only, no device sync)."""
        if self.generator is not None:
            self.state_before_step = self.generator.get_state()

    def undo_step(self) -> None:
        """Give the generator back the state it had before the undone step: what its forward (dropout in training
        mode) and the token drawn from it took."""
        if self.generator is not None and self.state_before_step is not None:
            self.generator.set_state(self.state_before_step)


def default_generator(device: torch.device) -> torch.Generator:
    """The generator that `torch.multinomial` draws from on `device` when given none."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def stop_check_deferred(device: torch.device, streamer: Any, cache_outlives_call: bool) -> bool:
    """Whether the loop reads the stop flag one step late: on CUDA, where the device runs behind the host, unless a
    streamer reads every token on the host anyway or the cache outlives the call (it must hold exactly its columns).
    """
    return device.type == "cuda" and streamer is None and not cache_outlives_call


def decode_on_static_cache(
    model: GLMForConditionalGeneration,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: GenerationConfig,
    streamer: Any,
    model_kwargs: dict[str, Any],
    cache: Cache,
    compile_step: bool,
    cache_outlives_call: bool,
) -> GenerateDecoderOnlyOutput | torch.LongTensor:
    """`GenerationMixin._sample`'s greedy / sampling loop with the step of `CapturedDecodeStep` (see the module)."""
    pad_token_id = generation_config._pad_token_tensor
    return_dict = generation_config.return_dict_in_generate
    scores: tuple[torch.Tensor, ...] | None = () if return_dict and generation_config.output_scores else None
    raw_logits: tuple[torch.Tensor, ...] | None = () if return_dict and generation_config.output_logits else None
    has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    batch_size = input_ids.shape[0]
    unfinished_sequences = torch.ones(batch_size, dtype=torch.long, device=input_ids.device)
    if pad_token_id is not None:
        pad_token_id = pad_token_id.to(input_ids.device)
    max_length = stopping_criteria.max_length or cache.get_max_length()
    stop = StopFlag(input_ids.device, deferred=stop_check_deferred(input_ids.device, streamer, cache_outlives_call))

    outputs = model._prefill(input_ids, generation_config, model_kwargs, is_first_iteration=True)
    model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
    next_token_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
    del outputs
    step: CapturedDecodeStep | None = None
    undo = 0
    while True:
        next_token_scores = logits_processor(input_ids, next_token_logits)
        if scores is not None:
            scores += (next_token_scores,)
        if raw_logits is not None:
            raw_logits += (next_token_logits,)
        if generation_config.do_sample:
            probs = nn.functional.softmax(next_token_scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            next_tokens = torch.argmax(next_token_scores, dim=-1)
        if has_eos_stopping_criteria:
            next_tokens = next_tokens * unfinished_sequences + pad_token_id * (1 - unfinished_sequences)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished_sequences = unfinished_sequences & ~stopping_criteria(input_ids, scores)
        if streamer is not None:  # after the stopping criteria, as transformers' loop streams (they may read it)
            streamer.put(next_tokens.cpu())
        if stop.finished(unfinished_sequences):
            undo = 1 if stop.deferred else 0  # every row had finished a step ago: this token is one too many
            break
        if input_ids.shape[1] >= max_length:
            break
        if step is None:
            step = start_step(model, cache, input_ids, model_kwargs, max_length, compile_step, generation_config)
        stop.before_step()
        next_token_logits = step(next_tokens).clone()

    if undo:
        stop.undo_step()
        input_ids = input_ids[:, :-undo]
        scores = scores[:-undo] if scores is not None else None
        raw_logits = raw_logits[:-undo] if raw_logits is not None else None
    if streamer is not None:
        streamer.end()
    if not return_dict:
        return input_ids
    return GenerateDecoderOnlyOutput(
        sequences=input_ids,
        scores=scores,
        logits=raw_logits,
        **{GENERATE_OUTPUT_CACHE_FIELD: cache},
    )


def start_step(
    model: GLMForConditionalGeneration,
    cache: Cache,
    input_ids: torch.Tensor,
    model_kwargs: dict[str, Any],
    max_length: int,
    compile_step: bool,
    generation_config: GenerationConfig,
) -> CapturedDecodeStep:
    """The run's decode step, loaded with its inputs: the one kept with this cache when it fits, else a new one.

    The run's positions cover every column so far (prompt embeddings and cached columns included), the first new
    token's last; those of the columns still to come follow GLM's Part B rule (`positions_of_columns`)."""
    from .modeling_glm import positions_of_columns

    capacity = cache.get_max_length()
    batch_size = input_ids.shape[0]
    first_column = model_kwargs["position_ids"].shape[-1] - 1
    positions, block_positions = positions_of_columns(
        model_kwargs["position_ids"],
        model_kwargs.get("block_position_ids"),
        0,
        min(capacity, first_column + 1 + max_length - input_ids.shape[1]),
        model._held_positions(batch_size),
    )
    attention_mask = None if model.glm.run_flags.padding_free else model_kwargs.get("attention_mask")
    prefix_length = model_kwargs.get("prefix_length")
    forward = compiled_last_column_logits(model, generation_config) if compile_step else last_column_logits
    kinds = (batch_size, block_positions is not None, attention_mask is not None, forward)
    step = model.decode_steps.fitting(cache, kinds, model)
    step.begin(positions, block_positions, attention_mask, prefix_length, first_column)
    return step


# Steps kept per cache: runs that alternate between settings (adapters on and off, two adapters) each find theirs.
STEPS_PER_CACHE = 4


class DecodeSteps:
    """The model's decode steps, by cache: the last `STEPS_PER_CACHE` built on each, so that runs alternating
    between module settings (adapters switched on and off, two adapters) replay their own graphs instead of
    capturing again. `steps[cache]` is the step the latest run on the cache used. A step lives as long as its
    cache. Neither copied nor pickled with the model (a graph is bound to the weights it was captured over): a copy
    starts empty."""

    def __init__(self) -> None:
        self.by_cache: weakref.WeakKeyDictionary[Cache, list[CapturedDecodeStep]] = weakref.WeakKeyDictionary()

    def __getitem__(self, cache: Cache) -> CapturedDecodeStep:
        return self.by_cache[cache][-1]

    def get(self, cache: Cache, default: CapturedDecodeStep | None = None) -> CapturedDecodeStep | None:
        steps = self.by_cache.get(cache)
        return steps[-1] if steps else default

    def __len__(self) -> int:
        return len(self.by_cache)  # caches with steps

    def values(self) -> list[CapturedDecodeStep]:
        """The step the latest run on each cache used."""
        return [steps[-1] for steps in self.by_cache.values()]

    def fitting(self, cache: Cache, kinds: tuple[Any, ...], model: GLMForConditionalGeneration) -> CapturedDecodeStep:
        """The step on `cache` for a run of these `kinds`, now the latest used: the latest whose graph was captured
        under the run's settings (`takes`, `captured_over`), else the latest not captured yet; else a new one,
        kept in place of the oldest and of those that can never fit again (over weights or cache tensors that are
        gone)."""
        steps = self.by_cache.setdefault(cache, [])
        weights, pointers = parameter_pointers(model), cache_pointers(cache)
        usable = [step for step in steps if step.takes(*kinds, weights)]
        captured = [step for step in usable if step.graph is not None]
        if captured:  # the settings only where a graph could be replayed: a walk over every module
            settings = module_settings(model)
            captured = [step for step in captured if step.captured_over(settings, pointers)]
        # A graph captured under this run's settings first; else a step not captured yet (it captures under them).
        chosen = captured or [step for step in usable if step.graph is None]
        if chosen:
            step = chosen[-1]
            steps.remove(step)
            steps.append(step)
            return step
        step = CapturedDecodeStep(model, cache, kinds[0], cache.get_max_length(), *kinds[1:])
        alive = [
            kept
            for kept in steps
            if kept.parameter_pointers == weights
            and (kept.graph is None or kept.cache_pointers_at_capture == pointers)
        ]
        steps[:] = [*alive[max(0, len(alive) - STEPS_PER_CACHE + 1) :], step]
        return step

    def __deepcopy__(self, memo: dict[int, Any]) -> DecodeSteps:
        return type(self)()  # a copy's weights are new: no graph of this model's serves it

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()
