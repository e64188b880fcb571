"""The FlexIP model patch: per-run adapter K/V, per-step gates, and the attn2 layer patches.

One `FlexIPPatch` per FlexIPApply node. A diffusion-model wrapper runs once per model call:
it fetches (or builds, once per sampling run) the adapter K/V for this batch layout and
evaluates the gate plan on the device; the layer patches only read what it prepared.
The trainer installs a `CallSubjectsPatch` instead: the same wrapper and layer patches, with
K/V rebuilt per model call, with gradients, from each sample's own reference.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch

from flexip_model.attention import AttentionFn, BranchKV, LayerKV, Weight, gated_attention, join_branches
from flexip_model.config import LayerSpec
from flexip_model.errors import FlexIPError
from flexip_model.gate import GatePlan
from flexip_model.subject import CallSubjects, SubjectAdapter, SubjectTokens
from flexip_model.vocabulary import TOKEN_MODE, parse_layer_key

from .bundles import EncodedSubject, LoadedFlexIP

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

logger = logging.getLogger(__name__)
WRAPPER_KEY = "flexip"
_RUN_CACHE_LIMIT = 8  # batch layouts kept per run (cond/uncond orders, regional chunks)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _never_traced(recursive: bool) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """`torch.compiler.disable(fn, recursive=recursive)` as a decorator that keeps `fn`'s signature."""

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        # torch's boundary: torch.compiler.disable is unannotated; it returns a wrapper of fn's signature
        return cast(Callable[_P, _R], torch.compiler.disable(fn, recursive=recursive))

    return decorate


@dataclass
class CallState:
    """What the layer patches of one model call read: K/V, gates, strength and mask per layer."""

    kv: tuple[LayerKV, ...]
    gates: tuple[Weight, ...]  # float, 0-d tensor, or [B] tensor (γ per row) per layer
    strength: Weight  # float or 0-d tensor (0 outside start_at/end_at)
    mask: torch.Tensor | None  # [B, 1, H, W] over the latent, or None
    masks_by_tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    layers_run: set[int] = field(default_factory=set)  # for the end-of-run log line

    def mask_for(self, tokens: int, original_shape: list[int]) -> torch.Tensor | None:
        """The attention mask on a layer's token grid: [B, N, 1], cached per token count for this call.

        Bilinear from the mask's frame to the layer's grid, stretched whatever the two aspect ratios.
        """
        if self.mask is None:
            return None
        resized = self.masks_by_tokens.get(tokens)
        if resized is None:
            grid = token_grid(tokens, original_shape[-2], original_shape[-1])
            resized = torch.nn.functional.interpolate(self.mask, size=grid, mode="bilinear").flatten(1).unsqueeze(-1)
            self.masks_by_tokens[tokens] = resized
        return resized


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) with h·w = `tokens` of a UNet layer over a latent of height x width: the latent halved per level,
    rounding up as ComfyUI's Downsample (a 3x3 stride-2 convolution, padding 1) does.

    Python ints only (no host read). A square-root estimate of the aspect ratio misses odd sides: a 65x96
    latent has a 17x24 grid two levels down, not 17x25.
    """
    grid_height, grid_width = height, width
    while grid_height * grid_width > tokens and grid_height * grid_width > 1:
        grid_height, grid_width = -(-grid_height // 2), -(-grid_width // 2)
    if grid_height * grid_width != tokens:
        raise FlexIPError(
            f"FlexIPApply attn_mask cannot be laid over a cross-attention layer of {tokens} tokens, as no level of the "
            f"{height}x{width} latent has that many: another patch changed the layer's tokens, so remove it or the "
            "attn_mask."
        )
    return grid_height, grid_width


class AttentionPatch(ABC):
    """What `install` hooks into a model: the state every attn2 `LayerPatch` of one install reads.

    Once per model call the diffusion-model wrapper asks `call_state` for the K/V, gates,
    strength and mask of that call (None: the call runs the base model) and hands it to the
    layer patches in transformer_options under `options_key`. Subclasses (`FlexIPPatch`,
    `CallSubjectsPatch`) say how it is made; `install` and `LayerPatch` use only this class.
    `__deepcopy__` returns self so model clones share the adapter weights.
    """

    def __init__(self, flexip: LoadedFlexIP, layers: tuple[LayerSpec, ...]) -> None:
        self.flexip = flexip
        self.layers = layers
        self.options_key = WRAPPER_KEY  # install() numbers it per model
        self._run_layers: set[int] = set()
        self._run_calls = 0

    @abstractmethod
    def call_state(self, x: torch.Tensor, context: torch.Tensor, options: dict[str, Any]) -> CallState | None:
        """What the layer patches of this model call read; None runs the base model."""

    @_never_traced(recursive=True)
    def _host_call_state(self, x: torch.Tensor, context: torch.Tensor, options: dict[str, Any]) -> CallState | None:
        """`call_state`, never traced by torch.compile: it looks up caches and, on a run's first call,
        has ComfyUI load the adapter, which dynamo cannot trace; its result enters the graph as input."""
        return self.call_state(x, context, options)

    # ComfyUI model-management protocol -------------------------------------------------
    def to(self, device_or_dtype: Any) -> AttentionPatch:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AttentionPatch:
        return self

    # Wrappers ----------------------------------------------------------------------------
    def outer_sample_wrapper(self, executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Reports at the end of a sampling run which layers the subject reached."""
        try:
            return executor(*args, **kwargs)
        finally:
            logger.info(
                "FlexIP (%s): %d of %d cross-attention layers patched, %d model calls.",
                self.flexip.name,
                len(self._run_layers),
                len(self.layers),
                self._run_calls,
            )
            self._run_layers = set()
            self._run_calls = 0

    @_never_traced(recursive=False)
    def diffusion_model_wrapper(
        self,
        executor: Callable[..., Any],
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Once per model call: prepare what every layer patch of this call reads.

        torch.compile skips this frame only (the one graph break FlexIP adds) and compiles the UNet
        that `executor` runs, layer patches included, as a graph of its own.
        """
        if transformer_options is None:
            transformer_options = {}
        options = dict(transformer_options)
        call = self._host_call_state(x, context, options)
        if call is None:
            return executor(x, timesteps, context, y, control, options, **kwargs)
        options[self.options_key] = call
        out = executor(x, timesteps, context, y, control, options, **kwargs)
        self._run_layers |= call.layers_run
        self._run_calls += 1
        return out

    def _kv(
        self, adapter: SubjectAdapter, subject: SubjectTokens, context: torch.Tensor, pick: torch.Tensor
    ) -> tuple[LayerKV, ...]:
        """The adapter's K/V of every layer, in the UNet's compute dtype and device (the context's)."""
        kv = adapter.run_kv(subject, context, pick, [spec.key for spec in self.layers])
        token_mode = self.flexip.config.gate_mode == TOKEN_MODE
        # cast first, then join: token mode's joint K/V is made once, in the compute dtype
        return tuple(
            join_branches(layer) if token_mode else layer
            for layer in (_cast_kv(layer, context.dtype, context.device) for layer in kv)
        )


class FlexIPPatch(AttentionPatch):
    """Inference: one encoded subject, its gate plan and the per-run K/V cache (FlexIPApply).

    Immutable apart from the run cache, which is keyed by the batch layout (cond uuids,
    cond/uncond order, rows, dtype, device) and cleared when the sampling run ends.
    """

    def __init__(
        self,
        subject: EncodedSubject,
        layers: tuple[LayerSpec, ...],
        strength: float,
        gate: GatePlan,
        mask: torch.Tensor | None,
    ) -> None:
        super().__init__(subject.flexip, layers)
        self.subject = subject
        self.strength = strength
        self.gate = gate
        self.mask = mask  # [1 or N, 1, H, W] in 0..1 (vocabulary.attention_masks), or None
        # an all-zero mask leaves every output as it is: its calls run the base model and build no K/V
        self.mask_is_empty = mask is not None and not bool(mask.any())  # one host read, at apply time
        if self.mask_is_empty:
            logger.info("FlexIP (%s): attn_mask is all zero, so this subject changes nothing.", self.flexip.name)
        self._run_cache: dict[tuple[object, ...], tuple[LayerKV, ...]] = {}

    def to(self, device_or_dtype: Any) -> FlexIPPatch:
        # dtype casts are ignored: K/V are built in the UNet's compute dtype per run
        if isinstance(device_or_dtype, torch.device):
            self.gate = self.gate.to(device_or_dtype)
            self.mask = None if self.mask is None else self.mask.to(device_or_dtype)
            self._run_cache.clear()
        return self

    def outer_sample_wrapper(self, executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Bounds the K/V cache to one sampling run."""
        try:
            return super().outer_sample_wrapper(executor, *args, **kwargs)
        finally:
            self._run_cache.clear()

    def call_state(self, x: torch.Tensor, context: torch.Tensor, options: dict[str, Any]) -> CallState | None:
        if self.mask_is_empty:
            return None
        order = tuple(options.get("cond_or_uncond", (0,)))
        mask = self._mask_rows(x, len(order))  # a wrong mask count is refused before the K/V build
        uuids = tuple(str(u) for u in options.get("uuids", ()))
        key = (uuids, order, x.shape[0], context.shape[1], context.dtype, context.device)
        kv = self._run_cache.get(key)
        if kv is None:
            if len(self._run_cache) >= _RUN_CACHE_LIMIT:
                self._run_cache.pop(next(iter(self._run_cache)))
            kv = self._run_cache[key] = self._layer_kv(order, x.shape[0], context)
        gates, strength = self.gate.call_gates(options.get("sigmas"), len(order), x.shape[0], self.strength, context)
        return CallState(kv, gates, strength, mask)

    def _mask_rows(self, x: torch.Tensor, chunks: int) -> torch.Tensor | None:
        """The attention mask per batch row [1 or B, 1, H, W]: one mask for all, or one per latent image,
        repeated per cond/uncond chunk (each chunk holds the whole latent batch)."""
        if self.mask is None:
            return None
        mask = self.mask.to(device=x.device, dtype=x.dtype)
        if mask.shape[0] == 1:
            return mask
        if mask.shape[0] * chunks != x.shape[0]:
            raise FlexIPError(
                f"FlexIPApply attn_mask has {mask.shape[0]} masks but the latent batch has "
                f"{x.shape[0] // chunks} images: give one mask, or one per latent."
            )
        return mask.repeat(chunks, 1, 1, 1)

    @torch.no_grad()
    def _layer_kv(self, order: tuple[int, ...], batch: int, context: torch.Tensor) -> tuple[LayerKV, ...]:
        """Adapter K/V of every layer for this batch layout (cond/uncond chunks in `order`)."""
        # the adapter is on the device only for the build: the steps read the cached K/V alone
        with self.flexip.on_device() as adapter:
            rows = batch // len(order)
            pick = torch.tensor(order, device=next(adapter.parameters()).device).repeat_interleave(rows)
            return self._kv(adapter, self.subject.tokens, context, pick)


class CallSubjectsPatch(AttentionPatch):
    """K/V rebuilt on every model call, with gradients, from the `CallSubjects` (one reference and
    one γ per batch item) in transformer_options[inputs_key]: how the trainer runs the very layer
    code users sample with. Strength s is 1 and γ a [B] tensor, so both branches always run.
    A model call without CallSubjects runs the base model.
    """

    def __init__(self, flexip: LoadedFlexIP, layers: tuple[LayerSpec, ...], inputs_key: str) -> None:
        super().__init__(flexip, layers)
        self.inputs_key = inputs_key

    def call_state(self, x: torch.Tensor, context: torch.Tensor, options: dict[str, Any]) -> CallState | None:
        inputs: CallSubjects | None = options.get(self.inputs_key)
        if inputs is None:
            return None
        adapter = self.flexip.adapter
        subject = adapter.reference_tokens(inputs.features)
        pick = torch.arange(x.shape[0], device=next(adapter.parameters()).device)
        gates = inputs.gates.to(context.device, context.dtype)
        return CallState(self._kv(adapter, subject, context, pick), (gates,) * len(self.layers), 1.0, None)


def _cast_kv(kv: LayerKV, dtype: torch.dtype, device: torch.device) -> LayerKV:
    def moved(branch: BranchKV | None) -> BranchKV | None:
        if branch is None:
            return None
        return type(branch)(branch.key.to(device, dtype), branch.value.to(device, dtype))

    return LayerKV(moved(kv.preservation), moved(kv.personalization))


class LayerPatch:
    """The attn2 replace patch of one layer; chains the patch it replaced (never drops it)."""

    def __init__(self, state: AttentionPatch, index: int, previous: Callable[..., Any] | None) -> None:
        self.state = state
        self.index = index
        self.previous = previous

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(
                q,
                k,
                v,
                extra_options["n_heads"],
                attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options,
            )
        call: CallState | None = extra_options.get(self.state.options_key)
        if call is None:  # a model call that bypassed the wrapper: behave like the base model
            return out
        call.layers_run.add(self.index)
        return gated_attention(
            q,
            out,
            call.kv[self.index],
            extra_options["n_heads"],
            call.strength,
            call.gates[self.index],
            self.state.flexip.config.gate_mode,
            mask=call.mask_for(q.shape[1], extra_options["original_shape"]),
            attention=_comfy_attention(extra_options),
            attn_precision=extra_options.get("attn_precision"),
        )

    def models(self) -> list[Any]:
        """Only the chained patch's models: the adapter is not loaded with the UNet for the run, it is
        loaded for each K/V build (LoadedFlexIP.on_device), so sampling never holds it."""
        previous = getattr(self.previous, "models", None)
        return previous() if previous else []

    def to(self, device_or_dtype: Any) -> LayerPatch:
        self.state.to(device_or_dtype)
        move = getattr(self.previous, "to", None)  # another extension's patch, if it moves
        if move is not None:
            self.previous = move(device_or_dtype)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerPatch:
        return LayerPatch(self.state, self.index, copy.deepcopy(self.previous, memo))


def _comfy_attention(extra_options: dict[str, Any]) -> AttentionFn:
    """ComfyUI's selected attention with this call's overrides (sage, flash, a user's override)."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kwargs: Any) -> torch.Tensor:
        return comfy_attention.optimized_attention(q, k, v, heads, transformer_options=extra_options, **kwargs)

    return attend


def install(model: ModelPatcher, state: AttentionPatch) -> None:
    """Register `state` on a cloned ModelPatcher: wrappers plus one attn2 patch per layer."""
    # numbered by install order, not id(): compiled graphs guard on the key, and a new FlexIPApply
    # on the same model must find the graphs of the previous one
    installed = model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {}).get(WRAPPER_KEY, [])
    state.options_key = f"{WRAPPER_KEY}_{len(installed)}"
    replace = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for index, spec in enumerate(state.layers):
        block, block_id, transformer_index = parse_layer_key(spec.key)
        previous = replace.get((block, block_id, transformer_index)) or replace.get((block, block_id))
        model.set_model_attn2_replace(LayerPatch(state, index, previous), block, block_id, transformer_index)
    model.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, state.diffusion_model_wrapper
    )
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, state.outer_sample_wrapper)
