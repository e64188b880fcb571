"""ComfyUI glue of FlexIP: node classes, the model patch, encoder and folder plumbing."""

from .apply import FlexIPApply
from .encode import FlexIPEncodeSubject
from .folders import register_model_folders
from .loader import FlexIPLoader
from .pair_loader import FlexIPAdapterPairLoader
from .schedule import FlexIPGateSchedule

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "FlexIPLoader": FlexIPLoader,
    "FlexIPAdapterPairLoader": FlexIPAdapterPairLoader,
    "FlexIPEncodeSubject": FlexIPEncodeSubject,
    "FlexIPGateSchedule": FlexIPGateSchedule,
    "FlexIPApply": FlexIPApply,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FlexIPLoader": "Load FlexIP Adapters",
    "FlexIPAdapterPairLoader": "Load IP-Adapter Pair (FlexIP compatibility mode)",
    "FlexIPEncodeSubject": "FlexIP Encode Subject",
    "FlexIPGateSchedule": "FlexIP Gate Schedule",
    "FlexIPApply": "Apply FlexIP",
}
