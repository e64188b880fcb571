"""The controlnet that runs InfiniteYou's two InfuseNets and blends their residuals by the FlexIP gate.

ComfyUI has no per-step scaling of a controlnet, so `GatedInfusePair` is a `ControlBase` of its
own: it gets the step's sigmas in `get_control`, builds the gate plan in `pre_run` (where the
model's `percent_to_sigma` is known), and chains with other controlnets through ComfyUI's
`control_merge`, before or after them. Each InfuseNet runs through ComfyUI's own `ControlNet`
code (hint, VAE, dtype casting, memory management) as an `InfuseNetStage`; a stage the gate never
uses (γ ≡ 1 or γ ≡ 0) is not built, loaded or run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import comfy.controlnet
import torch

from flexip_model.flux.residuals import ResidualGroup, Residuals, blend_residuals, mask_tokens
from flexip_model.gate import Gate, GatePlan

SIM, AES = "sim", "aes"


class InfuseNetStage(comfy.controlnet.ControlNet):
    """One InfuseNet, run by ComfyUI's ControlNet code; its residuals come back unscaled and unchained."""

    @classmethod
    def of(cls, loaded: comfy.controlnet.ControlNet, hint: torch.Tensor, vae: Any) -> InfuseNetStage:
        """A stage sharing `loaded`'s model, with the control image `hint` [1, 3, H, W] (VAE-encoded per run)."""
        stage = cls(None, load_device=loaded.load_device, manual_cast_dtype=loaded.manual_cast_dtype)
        stage.control_model = loaded.control_model
        stage.control_model_wrapped = loaded.control_model_wrapped
        loaded.copy_to(stage)
        stage.set_cond_hint(hint, 1.0, (0.0, 1.0), vae=vae)
        return stage

    @property
    def compute_dtype(self) -> torch.dtype:
        # ComfyUI leaves both untyped (control_model optional); of() always sets the model
        return cast(torch.dtype, self.manual_cast_dtype or cast(torch.nn.Module, self.control_model).dtype)

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.timestep_range = None  # the pair owns the window; no per-call host read of t here

    def control_merge(self, control: Residuals, control_prev: Any, output_dtype: Any) -> Residuals:
        return control  # the pair blends, scales and chains


class GatedInfusePair(comfy.controlnet.ControlBase):
    """residual = s · (γ(t, group) · r_sim + (1 − γ) · r_aes), added to the DiT like any FLUX controlnet."""

    def __init__(
        self,
        stages: dict[str, tuple[InfuseNetStage, torch.Tensor]],
        gate: Gate,
        groups: tuple[ResidualGroup, ...],
        strength: float,
        window: tuple[float, float],
        mask: torch.Tensor | None,
        guidance: float,
    ) -> None:
        """`stages`: the live stages (SIM and/or AES) with their identity tokens [1, T, C]."""
        super().__init__()
        self.stages = stages
        self.gate = gate  # windowless: the window skips both InfuseNets instead (get_control)
        self.groups = groups
        self.scale = float(strength)
        self.timestep_percent_range = window
        self.mask = mask  # [M, 1, H, W] or None
        self.guidance = float(guidance)
        self.plan: GatePlan | None = None
        self._cache: dict[tuple[Any, ...], Any] = {}  # per-run tensors by device, dtype and shape

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        for stage, _ in self.stages.values():
            stage.pre_run(model, percent_to_timestep_function)
        self.plan = self.gate.plan(self.groups, percent_to_timestep_function)

    def cleanup(self) -> None:
        for stage, _ in self.stages.values():
            stage.cleanup()
        self.plan = None
        self._cache.clear()
        super().cleanup()

    def get_models(self) -> list[Any]:
        models = super().get_models()
        for stage, _ in self.stages.values():
            models += stage.get_models()
        return models

    @property
    def windowed(self) -> bool:
        return self.timestep_percent_range != (0.0, 1.0)

    def get_control(
        self,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, Any],
        batched_number: int,
        transformer_options: dict[str, Any],
    ) -> Residuals | None:
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        # outside the window neither InfuseNet runs; this is the one host read of a step, and only
        # with a window, as ComfyUI's own controlnets read t[0] every call
        window = self.timestep_range
        if self.windowed and window is not None and bool((t[0] > window[0]) | (t[0] < window[1])):
            return previous
        host_plan = self.plan
        assert host_plan is not None  # pre_run built it
        stage_dtype = next(iter(self.stages.values()))[0].compute_dtype
        plan = self._cached(("plan", x_noisy.device), lambda: host_plan.to(x_noisy.device))
        like = self._cached(("like", x_noisy.device, stage_dtype), lambda: x_noisy.new_empty((), dtype=stage_dtype))
        gates, _ = plan.call_gates(t, batched_number, x_noisy.shape[0], 1.0, like)
        residuals = {
            name: self._run(stage, tokens, x_noisy, t, cond, batched_number, transformer_options)
            for name, (stage, tokens) in self.stages.items()
        }
        blended = blend_residuals(residuals.get(SIM), residuals.get(AES), gates)
        # ComfyUI's merge scales each shared residual once (in place) and adds the previous controlnet's
        self.strength = self._strength(x_noisy, like)
        return self.control_merge(blended, previous, output_dtype=None)

    def _run(
        self,
        stage: InfuseNetStage,
        tokens: torch.Tensor,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, Any],
        batched_number: int,
        transformer_options: dict[str, Any],
    ) -> Residuals:
        rows, device, dtype = x_noisy.shape[0], x_noisy.device, stage.compute_dtype
        # the InfuseNet reads the identity tokens as its text context, and its own guidance value
        context = self._cached(
            ("tokens", id(tokens), rows, device, dtype), lambda: tokens.to(device, dtype).repeat(rows, 1, 1)
        )
        guidance = self._cached(("guidance", rows, device), lambda: torch.full((rows,), self.guidance, device=device))
        stage_cond = {**cond, "crossattn_controlnet": context, "guidance": guidance}
        # ComfyUI's get_control is untyped; a stage's returns its own control_merge: the residuals
        return cast(Residuals, stage.get_control(x_noisy, t, stage_cond, batched_number, transformer_options))

    def _strength(self, x_noisy: torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
        """s, or s times the mask on the token grid [B, N, 1] (built once per latent size)."""
        if self.mask is None:
            return self.scale
        rows, height, width = x_noisy.shape[0], x_noisy.shape[-2], x_noisy.shape[-1]

        def build() -> torch.Tensor:
            assert self.mask is not None
            tokens = mask_tokens(self.mask.to(x_noisy.device), height, width, rows)
            return (tokens * self.scale).to(like.dtype)

        return self._cached(("mask", rows, height, width, x_noisy.device, like.dtype), build)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
