"""ComfyUI glue of FlexIP: node classes, the model patch, encoder and folder plumbing."""

from .apply import FlexIPApply
from .encode import FlexIPEncodeSubject
from .faces_crop import FlexIPFaceCrop
from .faces_loader import FlexIPInsightFaceLoader
from .faces_similarity import FlexIPFaceSimilarity
from .finite import refuse_non_finite_floats
from .folders import register_model_folders
from .loader import FlexIPLoader
from .pair_loader import FlexIPAdapterPairLoader
from .plot import FlexIPTradeoffPlot
from .schedule import FlexIPGateSchedule
from .similarity import FlexIPSubjectSimilarity
from .sweep import FlexIPGateSweep

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "FlexIPLoader": FlexIPLoader,
    "FlexIPAdapterPairLoader": FlexIPAdapterPairLoader,
    "FlexIPEncodeSubject": FlexIPEncodeSubject,
    "FlexIPGateSchedule": FlexIPGateSchedule,
    "FlexIPApply": FlexIPApply,
    "FlexIPInsightFaceLoader": FlexIPInsightFaceLoader,
    "FlexIPFaceCrop": FlexIPFaceCrop,
    "FlexIPFaceSimilarity": FlexIPFaceSimilarity,
    "FlexIPGateSweep": FlexIPGateSweep,
    "FlexIPSubjectSimilarity": FlexIPSubjectSimilarity,
    "FlexIPTradeoffPlot": FlexIPTradeoffPlot,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FlexIPLoader": "Load FlexIP Adapters",
    "FlexIPAdapterPairLoader": "Load IP-Adapter Pair (FlexIP compatibility mode)",
    "FlexIPEncodeSubject": "FlexIP Encode Subject",
    "FlexIPGateSchedule": "FlexIP Gate Schedule",
    "FlexIPApply": "Apply FlexIP",
    "FlexIPInsightFaceLoader": "FlexIP InsightFace Loader",
    "FlexIPFaceCrop": "FlexIP Face Crop",
    "FlexIPFaceSimilarity": "FlexIP Face Similarity (ArcFace)",
    "FlexIPGateSweep": "FlexIP Gate Sweep",
    "FlexIPSubjectSimilarity": "FlexIP Subject Similarity (CLIP-I, DINO-I)",
    "FlexIPTradeoffPlot": "FlexIP Trade-off Plot",
}

refuse_non_finite_floats(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)
