"""What an IP-Adapter file is (read from tensor names and shapes only) and where its layers go.

A file holds `image_proj.*` (the image projection) and `ip_adapter.<n>.to_{k,v}_ip.weight`
[inner, d], where n = 1, 3, 5, ...: IP-Adapter numbers every attention processor of the
diffusers UNet (attn1 even, attn2 odd) in the order diffusers registers its blocks: down,
up, then mid. In ComfyUI's terms that is all input-block layers, then all output-block
layers, then the middle block, each by (block id, transformer index).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import nn

from ..config import LayerSpec, check_size
from ..errors import FlexIPError
from ..vocabulary import (
    HIDDEN_STATES,
    IMAGE_EMBEDS,
    INPUT_BLOCK,
    MIDDLE_BLOCK,
    OUTPUT_BLOCK,
    base_of,
    encoder_name,
    family_name,
    feature_words,
    parse_layer_key,
)
from .image_projections import RESAMPLER_HEAD_WIDTH, ImageProjection, MLPProjection, Resampler

Shape = tuple[int, ...]
IMAGE_PROJ, IP_LAYERS = "image_proj.", "ip_adapter."
_LAYER_KEY = re.compile(r"^ip_adapter\.(\d{1,6})\.to_([kv])_ip\.weight$")  # SDXL's last is 139
_BLOCK_ORDER = {INPUT_BLOCK: 0, OUTPUT_BLOCK: 1, MIDDLE_BLOCK: 2}  # diffusers: down, up, mid
_DAMAGED = "the file is damaged or not an IP-Adapter file, download the original again"


class _Common(TypedDict):
    """The fields every IPAdapterSpec takes from the file as a whole, whatever its projection."""

    name: str
    context_dim: int
    layer_widths: tuple[int, ...]


@dataclass(frozen=True)
class IPAdapterSpec:
    """One IP-Adapter file as detected from its tensor shapes.

    projection: "linear" (ip-adapter, light), "resampler" (plus, plus-face) or "mlp" (full-face);
    feature: the CLIP output it reads, `image_embeds` [B, C] or `penultimate_hidden_states` [B, N, C];
    layer_widths: the inner width of each of its UNet layers, in IP-Adapter's order.
    """

    name: str
    projection: str
    feature: str
    feature_dim: int
    context_dim: int
    layer_widths: tuple[int, ...]
    tokens: int = 0  # tokens per image; 0 = one per hidden-state token (mlp)
    resampler_width: int = 0
    resampler_heads: int = 0
    resampler_depth: int = 0
    resampler_ff_mult: int = 0

    @property
    def variant(self) -> str:
        """base / light / plus / plus-face / full-face. Light and plus-face have the same tensors as
        base and plus (same classes, same token counts), so only the file name tells them apart."""
        lower = self.name.lower()
        if self.projection == "linear":
            return "light" if "light" in lower else "base"
        if self.projection == "resampler":
            return "plus-face" if "face" in lower else "plus"
        return "full-face"

    @property
    def base(self) -> str:
        """'sd15', 'sdxl', or '' for a UNet of another context width."""
        return base_of(self.context_dim)

    @property
    def encoder(self) -> str:
        return encoder_name(self.feature, self.feature_dim)

    def describe(self) -> str:
        """e.g. 'ip-adapter-plus_sd15.safetensors (plus, SD1.5, CLIP ViT-H/14 hidden states)'."""
        what = feature_words(self.feature)
        return f"{self.name} ({self.variant}, {family_name(self.context_dim)}, {self.encoder} {what})"

    def image_projection(self) -> nn.Module:
        """A fresh (uninitialised) projection module of this file's kind and sizes."""
        if self.projection == "linear":
            return ImageProjection(self.feature_dim, self.context_dim, self.tokens)
        if self.projection == "mlp":
            return MLPProjection(self.feature_dim, self.context_dim)
        return Resampler(
            self.feature_dim,
            self.context_dim,
            self.resampler_width,
            self.resampler_heads,
            self.resampler_depth,
            self.tokens,
            self.resampler_ff_mult,
        )

    def expected_shapes(self) -> dict[str, Shape]:
        """Every tensor name the file must hold, with its shape (built on `meta`, no memory)."""
        with torch.device("meta"):
            projection = self.image_projection()
        shapes = {IMAGE_PROJ + name: tuple(t.shape) for name, t in projection.state_dict().items()}
        for number, width in enumerate(self.layer_widths):
            for kind in ("k", "v"):
                shapes[f"{IP_LAYERS}{ip_adapter_index(number)}.to_{kind}_ip.weight"] = (width, self.context_dim)
        return shapes


def ip_adapter_index(number: int) -> int:
    """The file's index of the `number`-th cross-attention layer (attn1 processors take the even ones)."""
    return 2 * number + 1


def _few(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(name[:80] for name in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _is_face_id(projection: Mapping[str, Shape], layers: Mapping[str, Shape]) -> bool:
    # FaceID files carry LoRA weights for the UNet, or project InsightFace embeddings with an
    # MLP (proj.0/proj.2 + norm) and, for FaceID-plus, a `perceiver_resampler`
    if any("lora" in name for name in layers):
        return True
    if any(name.startswith("perceiver_resampler.") for name in projection):
        return True
    return "proj.0.weight" in projection and "proj.3.weight" not in projection


def _layer_widths(name: str, layers: Mapping[str, Shape]) -> tuple[tuple[int, ...], int]:
    """Inner widths in file order and the context width d, from `ip_adapter.<n>.to_k_ip/to_v_ip`."""
    numbers = set()
    for key in layers:
        match = _LAYER_KEY.match(IP_LAYERS + key)
        if match is None:
            raise FlexIPError(
                f"{name} has an unexpected tensor ip_adapter.{key} (expected only ip_adapter.<n>.to_k_ip/to_v_ip): "
                "it is not a plain IP-Adapter file, pick one from h94/IP-Adapter."
            )
        numbers.add(int(match.group(1)))
    expected = [ip_adapter_index(n) for n in range(len(numbers))]
    if sorted(numbers) != expected:
        raise FlexIPError(
            f"{name} numbers its layers {_few([str(n) for n in numbers])}, not 1, 3, 5, ...: "
            "the file is damaged or not an IP-Adapter file, download it again."
        )
    check_size(name, "layers", len(expected), "(cross-attention layers)", _DAMAGED)
    widths, contexts = [], set()
    for number in expected:
        shape = layers.get(f"{number}.to_k_ip.weight")
        if shape is None or len(shape) != 2:
            raise FlexIPError(
                f"{name} lacks a 2-d ip_adapter.{number}.to_k_ip.weight: the file is damaged, download it again."
            )
        check_size(name, "inner_dim", shape[0], f"in ip_adapter.{number}", _DAMAGED)
        widths.append(shape[0])
        contexts.add(shape[1])
    if len(contexts) != 1:
        raise FlexIPError(
            f"{name} mixes context widths {sorted(contexts)[:4]} across layers: the file is damaged, download it again."
        )
    context_dim = contexts.pop()
    check_size(name, "context_dim", context_dim, "in its layers", _DAMAGED)
    return tuple(widths), context_dim


def describe(name: str, shapes: Mapping[str, Shape]) -> IPAdapterSpec:
    """Detect the variant of an IP-Adapter file from its flat tensor names and shapes; FlexIPError if
    it is not one this mode can run (FaceID, unknown projection, missing or extra tensors)."""
    projection = {k[len(IMAGE_PROJ) :]: tuple(s) for k, s in shapes.items() if k.startswith(IMAGE_PROJ)}
    layers = {k[len(IP_LAYERS) :]: tuple(s) for k, s in shapes.items() if k.startswith(IP_LAYERS)}
    if not projection or not layers:
        raise FlexIPError(
            f"{name} has no image_proj and ip_adapter weights, so it is not an IP-Adapter file: "
            "pick an IP-Adapter .safetensors or .bin file in models/ipadapter."
        )
    if _is_face_id(projection, layers):
        raise FlexIPError(
            f"{name} is an IP-Adapter FaceID file, which needs InsightFace face embeddings that compatibility "
            "mode does not compute: pick a CLIP-based IP-Adapter file (ip-adapter, light, plus, plus-face)."
        )
    widths, context_dim = _layer_widths(name, layers)
    spec = _projection_spec(name, projection, widths, context_dim)
    _check_sizes(spec)  # before expected_shapes builds modules of these sizes
    expected = spec.expected_shapes()
    missing = [key for key in expected if key not in shapes]
    extra = [key for key in shapes if key not in expected]
    if missing or extra:
        what = f"lacks {_few(missing)}" if missing else f"has unexpected tensors {_few(extra)}"
        raise FlexIPError(
            f"{name} {what} for a {spec.variant} IP-Adapter: the file is damaged or a variant this mode "
            "does not know, use an original h94/IP-Adapter file."
        )
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise FlexIPError(
                f"{name} has {key} of shape {list(shapes[key])}, a {spec.variant} IP-Adapter needs {list(shape)}: "
                "the file is damaged, download it again."
            )
    return spec


def _check_sizes(spec: IPAdapterSpec) -> None:
    """Every size the file chose, within SIZE_BOUNDS (layers and context were checked as they were read)."""
    check_size(spec.name, "feature_dim", spec.feature_dim, "in its image projection", _DAMAGED)
    if spec.projection != "mlp":
        check_size(spec.name, "tokens", spec.tokens, "in its image projection", _DAMAGED)
    if spec.projection == "resampler":
        for field in ("resampler_width", "resampler_heads", "resampler_depth", "resampler_ff_mult"):
            check_size(spec.name, field, getattr(spec, field), "in its image projection", _DAMAGED)


def _projection_spec(
    name: str, projection: Mapping[str, Shape], widths: tuple[int, ...], context_dim: int
) -> IPAdapterSpec:
    common = _Common(name=name, context_dim=context_dim, layer_widths=widths)
    if "latents" in projection:
        latents, proj_in = projection["latents"], projection.get("proj_in.weight", ())
        query = projection.get("layers.0.0.to_q.weight", ())
        feed = projection.get("layers.0.1.1.weight", ())
        depth = len({key.split(".")[1] for key in projection if key.startswith("layers.")})
        if len(latents) != 3 or len(proj_in) != 2 or len(query) != 2 or len(feed) != 2 or depth == 0:
            raise FlexIPError(
                f"{name} has an incomplete resampler (latents, proj_in, "
                "layers): the file is damaged, download it again."
            )
        width = latents[2]
        check_size(name, "resampler_width", width, "in its image projection", _DAMAGED)  # divides below
        if query[0] % RESAMPLER_HEAD_WIDTH or feed[0] % width:
            raise FlexIPError(
                f"{name} has a resampler of unknown head or feed-forward size: use an original h94/IP-Adapter file."
            )
        return IPAdapterSpec(
            projection="resampler",
            feature=HIDDEN_STATES,
            feature_dim=proj_in[1],
            tokens=latents[1],
            resampler_width=width,
            resampler_heads=query[0] // RESAMPLER_HEAD_WIDTH,
            resampler_depth=depth,
            resampler_ff_mult=feed[0] // width,
            **common,
        )
    if "proj.3.weight" in projection:
        first = projection.get("proj.0.weight", ())
        if len(first) != 2:
            raise FlexIPError(f"{name} has an incomplete MLP projection: the file is damaged, download it again.")
        return IPAdapterSpec(projection="mlp", feature=HIDDEN_STATES, feature_dim=first[1], **common)
    if "proj.weight" in projection and "norm.weight" in projection:
        proj, norm = projection["proj.weight"], projection["norm.weight"]
        if len(proj) != 2 or len(norm) != 1 or not norm[0] or proj[0] % norm[0]:
            raise FlexIPError(
                f"{name} has a token projection of shape {list(proj)}: the file is damaged, download it again."
            )
        return IPAdapterSpec(
            projection="linear", feature=IMAGE_EMBEDS, feature_dim=proj[1], tokens=proj[0] // norm[0], **common
        )
    raise FlexIPError(
        f"{name} has an image projection this mode does not know ({_few(list(projection))}): "
        "use ip-adapter, light, plus, plus-face or full-face files from h94/IP-Adapter."
    )


def ip_adapter_order(layers: Sequence[LayerSpec]) -> tuple[LayerSpec, ...]:
    """A model's attn2 layers in IP-Adapter's numbering order: input blocks, output blocks, middle."""

    def position(spec: LayerSpec) -> tuple[int, int, int]:
        block, block_id, index = parse_layer_key(spec.key)
        return _BLOCK_ORDER[block], block_id, index

    return tuple(sorted(layers, key=position))


def match_layers(
    spec: IPAdapterSpec, layers: Sequence[LayerSpec], context_dim: int | None = None
) -> tuple[LayerSpec, ...]:
    """The model layers that the file's layers 0, 1, 2 ... belong to; FlexIPError naming the file and the
    fix when the base family, the layer count or a width does not fit the model."""
    if context_dim is not None and context_dim != spec.context_dim:
        actual, expected = family_name(context_dim), family_name(spec.context_dim)
        raise FlexIPError(
            f"{spec.name} is an {expected} IP-Adapter (context {spec.context_dim}) but the model is {actual} "
            f"(context {context_dim}): pick an {actual} IP-Adapter file or load an {expected} checkpoint."
        )
    ordered = ip_adapter_order(layers)
    if len(ordered) != len(spec.layer_widths):
        raise FlexIPError(
            f"{spec.name} has {len(spec.layer_widths)} cross-attention layers but the model has {len(ordered)}: "
            "pick an IP-Adapter file made for this model's architecture."
        )
    for number, (layer, width) in enumerate(zip(ordered, spec.layer_widths)):
        if layer.inner_dim != width:
            raise FlexIPError(
                f"{spec.name} layer {ip_adapter_index(number)} is {width} wide but the model's layer {layer.key} is "
                f"{layer.inner_dim}: pick an IP-Adapter file made for this model's architecture."
            )
    return ordered
