"""FlexIP as plain torch: the adapter contract and adapters, the gated attention, the gate (schedule or
sweep) and the checkpoint format.

Never imports ComfyUI; always imported as the top-level `flexip_model` (the pack's `__init__` puts
the pack folder on sys.path), so ComfyUI, the trainer, tests and benchmarks share one copy.
"""

from . import checkpoint
from .adapter import FlexIPAdapter
from .attention import (
    AttentionFn,
    BranchKV,
    JointKV,
    LayerKV,
    adapter_attention,
    gated_attention,
    join_branches,
    merge_heads,
    sdpa_attention,
    split_heads,
)
from .config import FlexIPConfig, LayerSpec, config_for, default_layers
from .errors import FlexIPError
from .gate import Gate, GatePlan, LiveGates, progress_from_sigma, window_at
from .gate_schedule import (
    BlockOverride,
    GateSchedule,
    GateTable,
    constant_schedule,
    gate_table,
    gates_at,
    parse_keyframes,
    parse_layer_indices,
    static_gate_range,
    validate_schedule,
)
from .gate_sweep import GateSweep, ItemGammas, parse_gammas, range_gammas
from .layer_projections import LayerProjections
from .personalization import PersonalizationAdapter
from .preservation import PreservationAdapter
from .subject import CallSubjects, FeatureNeed, ImageFeatures, SubjectAdapter, SubjectTokens
from .vocabulary import context_dim_for, layer_key, parse_layer_key

__all__ = [
    "AttentionFn",
    "BlockOverride",
    "BranchKV",
    "CallSubjects",
    "FeatureNeed",
    "FlexIPAdapter",
    "FlexIPConfig",
    "FlexIPError",
    "Gate",
    "GatePlan",
    "GateSchedule",
    "GateSweep",
    "GateTable",
    "ImageFeatures",
    "ItemGammas",
    "JointKV",
    "LayerKV",
    "LayerProjections",
    "LayerSpec",
    "LiveGates",
    "PersonalizationAdapter",
    "PreservationAdapter",
    "SubjectAdapter",
    "SubjectTokens",
    "adapter_attention",
    "checkpoint",
    "config_for",
    "constant_schedule",
    "context_dim_for",
    "default_layers",
    "gate_table",
    "gated_attention",
    "gates_at",
    "join_branches",
    "layer_key",
    "merge_heads",
    "parse_gammas",
    "parse_keyframes",
    "parse_layer_indices",
    "parse_layer_key",
    "progress_from_sigma",
    "range_gammas",
    "sdpa_attention",
    "split_heads",
    "static_gate_range",
    "validate_schedule",
    "window_at",
]
