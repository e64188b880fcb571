"""The trainable FlexIP adapter, built to fit the frozen models (flexip_host.frozen_models)."""

from __future__ import annotations

import dataclasses

import torch

from flexip_host.frozen_models import FrozenModels
from flexip_host.loaded_pack import Pack
from flexip_model import checkpoint
from flexip_model.adapter import FlexIPAdapter
from flexip_model.config import FlexIPConfig, config_for
from flexip_model.errors import FlexIPError

from .config import AdapterConfig


def cross_attention_weights(models: FrozenModels, pack: Pack) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each attn2 layer's frozen (to_k, to_v) weights [inner, d], keyed like 'input_1_0'."""
    return {
        key: (module.to_k.weight, module.to_v.weight)
        for key, module in pack.cross_attention_modules(models.diffusion_model)
    }


def adapter_config(models: FrozenModels, pack: Pack, adapter: AdapterConfig) -> FlexIPConfig:
    """The adapter's config from the loaded models: their layers, context width and encoder widths."""
    layers = pack.layer_specs_of(models.diffusion_model)
    config = config_for(models.base, layers=layers, tiny=adapter.size == "tiny")
    config = dataclasses.replace(
        config,
        gate_mode=adapter.gate_mode,
        clip_embed_dim=models.clip_vision.model.visual_projection.out_features,
        dino_dim=models.dino.model.layernorm.weight.shape[0],
    )
    config.validate("the trainer's adapter config")
    return config


def build_adapter(models: FrozenModels, pack: Pack, adapter: AdapterConfig, seed: int) -> FlexIPAdapter:
    """A new adapter (seeded init, projections copied from the base's to_k/to_v), or the `init_from` file."""
    config = adapter_config(models, pack, adapter)
    if adapter.init_from is not None:
        # sizes and gate mode come from the file; it must fit these models
        loaded = checkpoint.load(adapter.init_from, dtype=torch.float32)
        fits = ("layers", "context_dim", "clip_embed_dim", "dino_dim")
        if any(getattr(loaded.config, key) != getattr(config, key) for key in fits):
            raise FlexIPError(
                f"[adapter] init_from {adapter.init_from.name} was made for other models (layers, "
                "context or encoder widths differ): start from a file trained on this base and "
                "these encoders."
            )
        return loaded.train()
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the process RNG as it was
        torch.manual_seed(seed)
        module = FlexIPAdapter(config)
    module.layers.init_from_base(
        {key: (k.float(), v.float()) for key, (k, v) in cross_attention_weights(models, pack).items()}
    )
    return module.train()
