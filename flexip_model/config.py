"""Checkpoint config: the single source of sizes, and the UNet layer lists per base."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import MappingProxyType

from .errors import FlexIPError, shown
from .mapping import Rules, Source, dataclass_from_mapping
from .safetensors_header import parse_bounded_json
from .vocabulary import (
    BASES,
    GATE_MODES,
    INPUT_BLOCK,
    MIDDLE_BLOCK,
    OUTPUT_BLOCK,
    OUTPUT_MODE,
    check_base,
    context_dim_for,
    is_layer_key,
    layer_key,
    parse_layer_key,
)

FORMAT_VERSION = 1

# Every size a model file may choose (its FlexIP config, or an IP-Adapter file's shapes), with the
# range accepted, checked before anything is allocated or run: a value outside is a damaged or
# hostile file, never a real model. Low ends are 1 (tiny test models are real files too); high
# ends are several times the largest real model, so the work a file can ask for stays bounded.
SIZE_BOUNDS = MappingProxyType(
    {
        # widths: SD1.5 768, SDXL 2048, CLIP-L/H/bigG 768/1024/1280, DINOv2-L/g 1024/1536
        "context_dim": (1, 8192),
        "clip_embed_dim": (1, 8192),
        "dino_dim": (1, 8192),
        "preservation_width": (1, 8192),
        "inner_dim": (1, 8192),  # a UNet layer's attention width; SDXL's widest is 1280
        "feature_dim": (1, 8192),  # IP-Adapter: the CLIP output it reads (1024..1664)
        "resampler_width": (1, 8192),  # IP-Adapter plus: 768 (SD1.5), 1280 (SDXL)
        # DINOv2 input side in px: 224 by default, 518 native; 1036 px is 74 patches a side
        "dino_resolution": (14, 1036),
        # heads: 8..32 in real models
        "preservation_heads": (1, 128),
        "personalization_heads": (1, 128),
        "heads": (1, 128),
        "resampler_heads": (1, 128),
        # token counts: 4..16 in real files
        "num_queries": (1, 1024),
        "cls_tokens": (1, 256),
        "personalization_kv_tokens": (1, 256),
        "tokens": (1, 1024),  # IP-Adapter image tokens (4, or 16 for plus)
        # depths: 2..4 in real models; each block is a loop step at every run
        "query_depth": (1, 64),
        "cls_depth": (1, 64),
        "personalization_depth": (1, 64),
        "resampler_depth": (1, 64),
        "ffn_mult": (1, 16),  # 4 everywhere
        "resampler_ff_mult": (1, 16),
        # UNet cross-attention layers: SD1.5 16, SDXL 70
        "layers": (1, 1024),
    }
)
# the config JSON: ~60 bytes per layer, depth 3 ({... "layers": [{...}]})
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 4


def check_size(source: str, field: str, value: int, where: str = "", fix: str = "re-export the file") -> None:
    """FlexIPError (one sentence naming `source`, the field and the accepted range) unless `value`
    lies in SIZE_BOUNDS[field]; `where` says where the value sits, e.g. "in its FlexIP config"."""
    low, high = SIZE_BOUNDS[field]
    if not low <= value <= high:
        digits = str(value)
        shown = digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits)} digits)"
        raise FlexIPError(f"{source} has {field}={shown}{' ' + where if where else ''}, outside {low}..{high}: {fix}.")


@dataclass(frozen=True)
class LayerSpec:
    """One UNet cross-attention layer: its key, its attention inner width and head count."""

    key: str
    inner_dim: int
    heads: int

    @property
    def block(self) -> str:
        """The layer's block group, one of vocabulary.BLOCKS."""
        return parse_layer_key(self.key)[0]


@dataclass(frozen=True)
class _UNetShape:
    """The architecture constants from which the attn2 layer list follows."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]  # per level, for input and output blocks
    middle_depth: int
    num_heads: int = -1  # fixed head count (SD1.5) ...
    head_channels: int = -1  # ... or fixed channels per head (SDXL)

    def heads_for(self, channels: int) -> int:
        return self.num_heads if self.num_heads > 0 else channels // self.head_channels


_UNETS = MappingProxyType(
    {  # one per vocabulary.BASES
        "sd15": _UNetShape(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, num_heads=8),
        "sdxl": _UNetShape(320, (1, 2, 4), 2, (0, 2, 10), 10, head_channels=64),
    }
)


def default_layers(base: str) -> tuple[LayerSpec, ...]:
    """All attn2 layers of the standard UNet of `base`, in ComfyUI's order (input, middle, output)."""
    check_base(base)
    unet = _UNETS[base]
    layers: list[LayerSpec] = []

    def add(block: str, block_id: int, channels: int, depth: int) -> None:
        for index in range(depth):
            layers.append(LayerSpec(layer_key(block, block_id, index), channels, unet.heads_for(channels)))

    block_id = 0  # input block 0 is conv_in
    for level, mult in enumerate(unet.channel_mult):
        for _ in range(unet.num_res_blocks):
            block_id += 1
            add(INPUT_BLOCK, block_id, unet.model_channels * mult, unet.transformer_depth[level])
        block_id += 1  # downsample (the last level has none, but nothing follows it)
    add(MIDDLE_BLOCK, 0, unet.model_channels * unet.channel_mult[-1], unet.middle_depth)
    block_id = 0
    for level in reversed(range(len(unet.channel_mult))):
        channels = unet.model_channels * unet.channel_mult[level]
        for _ in range(unet.num_res_blocks + 1):
            add(OUTPUT_BLOCK, block_id, channels, unet.transformer_depth[level])
            block_id += 1
    return tuple(layers)


class LayerLookup:
    """`layer(key)` over the `layers` of an adapter config (FlexIP or an IP-Adapter pair)."""

    layers: tuple[LayerSpec, ...]
    _what = "FlexIP adapter"  # named in the error

    def layer(self, key: str) -> LayerSpec:
        """The LayerSpec of `key`; FlexIPError if this adapter has no such layer."""
        for spec in self.layers:
            if spec.key == key:
                return spec
        raise FlexIPError(f"layer {key!r} is not part of this {self._what}: use one of the model's layer keys.")


@dataclass(frozen=True)
class FlexIPConfig(LayerLookup):
    """Every size of a FlexIP adapter; stored as JSON in the checkpoint (docs/design.md §5)."""

    format_version: int = FORMAT_VERSION
    base: str = "sd15"
    context_dim: int = 768
    clip_embed_dim: int = 1024
    dino_dim: int = 1024
    dino_resolution: int = 224
    preservation_width: int = 768
    preservation_heads: int = 12
    num_queries: int = 16
    query_depth: int = 4
    cls_tokens: int = 4
    cls_depth: int = 2
    personalization_kv_tokens: int = 4
    personalization_depth: int = 2
    personalization_heads: int = 12
    ffn_mult: int = 4
    gate_mode: str = OUTPUT_MODE
    layers: tuple[LayerSpec, ...] = ()

    @property
    def preservation_token_count(self) -> int:
        """Tokens per reference image out of the preservation adapter (CLS branch + queries)."""
        return self.cls_tokens + self.num_queries

    def validate(self, source: str = "FlexIP config") -> None:
        """Check internal consistency; FlexIPError naming `source` on the first problem."""
        if self.format_version != FORMAT_VERSION:
            raise FlexIPError(
                f"{source} has format version {self.format_version}, this FlexIP reads version "
                f"{FORMAT_VERSION}: update ComfyUI-FlexIP or re-export the file."
            )
        if self.base not in BASES:
            raise FlexIPError(f"{source} has base {shown(self.base)}: use one of {', '.join(BASES)}.")
        for field in dataclasses.fields(self):
            if field.name in SIZE_BOUNDS and field.name != "layers":
                check_size(source, field.name, getattr(self, field.name))
        if self.gate_mode not in GATE_MODES:
            raise FlexIPError(f"{source} has gate_mode {shown(self.gate_mode)}: use 'output' or 'token'.")
        for width, heads, name in (
            (self.preservation_width, self.preservation_heads, "preservation_width"),
            (self.context_dim, self.personalization_heads, "context_dim"),
        ):
            if width % heads:
                raise FlexIPError(f"{source} has {name}={width} not divisible by {heads} heads: fix the head count.")
        if self.dino_resolution % 14:
            raise FlexIPError(
                f"{source} has dino_resolution={self.dino_resolution}: "
                "use a multiple of DINOv2's 14 px patch, e.g. 224."
            )
        if not self.layers:
            raise FlexIPError(f"{source} lists no UNet layers: build the config with config_for(base).")
        check_size(source, "layers", len(self.layers))
        seen: set[str] = set()
        for spec in self.layers:
            if not is_layer_key(spec.key):
                raise FlexIPError(
                    f"{source} has layer key {shown(spec.key)}, which is malformed: "
                    "use '<input|middle|output>_<id>_<index>', e.g. 'input_1_0'."
                )
            if spec.key in seen:
                raise FlexIPError(f"{source} lists layer {spec.key} twice: keep each layer key once.")
            seen.add(spec.key)
            check_size(f"{source} layer {spec.key}", "inner_dim", spec.inner_dim)
            check_size(f"{source} layer {spec.key}", "heads", spec.heads)
            if spec.inner_dim % spec.heads:
                raise FlexIPError(
                    f"{source} has layer {spec.key} with inner_dim {spec.inner_dim} and {spec.heads} heads: "
                    "inner_dim must be a positive multiple of heads."
                )

    def to_json(self) -> str:
        """The JSON stored in the checkpoint's `__metadata__["flexip"]`."""
        data = dataclasses.asdict(self)
        data["layers"] = [dataclasses.asdict(spec) for spec in self.layers]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> FlexIPConfig:
        """Parse and validate a config; every error names `source` (usually the file name)."""
        data = parse_bounded_json(
            text, f"{source}'s FlexIP config", MAX_CONFIG_BYTES, MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
        )
        if not isinstance(data, dict):
            raise FlexIPError(f"{source} has a FlexIP config that is not a JSON object: re-export the file.")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FlexIPError(
                f"{source} has FlexIP format version {shown(version)}, this FlexIP reads version {FORMAT_VERSION}: "
                "update ComfyUI-FlexIP or re-export the file."
            )
        rules = Rules(require_all=True, check=_bounded)
        config = dataclass_from_mapping(cls, data, Source(f"{source}'s FlexIP config", "re-export the file"), rules)
        config.validate(source)
        return config


def _bounded(label: str, key: str, value: object) -> None:
    """Sizes (and the layer count) are bounded as they are read, before anything is built from them."""
    if isinstance(value, (list, tuple)):
        if value:  # an empty layer list gets validate's own sentence
            check_size(label, key, len(value))
    elif key in SIZE_BOUNDS and isinstance(value, int):  # always an int: every size field is one, read as such
        check_size(label, key, value)


_TINY = MappingProxyType(
    dict(
        preservation_width=64,
        preservation_heads=2,
        num_queries=4,
        query_depth=1,
        cls_tokens=2,
        cls_depth=1,
        personalization_kv_tokens=2,
        personalization_depth=1,
        personalization_heads=2,
    )
)


def config_for(base: str, layers: tuple[LayerSpec, ...] | None = None, tiny: bool = False) -> FlexIPConfig:
    """Default config for `base` ("sd15" | "sdxl"); `tiny` shrinks widths and depths for tests.

    Personalization heads are d / 64 (12 for SD1.5, 32 for SDXL) so the head width stays 64.
    """
    context_dim = context_dim_for(base)
    config = FlexIPConfig(
        base=base,
        context_dim=context_dim,
        layers=tuple(layers) if layers is not None else default_layers(base),
        personalization_heads=context_dim // 64,
    )
    if tiny:
        config = dataclasses.replace(config, **_TINY)
    config.validate(f"the {base} config")
    return config
