"""ComfyUI glue of FlexIP: node classes, the model patch, encoder and folder plumbing.

Node modules (one node class each): apply, encode, faces_crop, faces_loader, faces_similarity,
infiniteyou_apply, infiniteyou_face, infiniteyou_keypoints, infiniteyou_loader, loader, pair_loader, plot,
schedule, similarity, sweep. They import flexip_model and the helper modules only (bundles, encoders,
faces_align, faces_packs, faces_preview, faces_runtime, faces_select, finite, folders, infiniteyou_bundles,
infuse_control, infusenet_files, inputs, layers, patch, progress), never another node module. The package
rules, and the test that checks each, are in docs/architecture.md.
"""

from .apply import FlexIPApply
from .encode import FlexIPEncodeSubject
from .faces_crop import FlexIPFaceCrop
from .faces_loader import FlexIPInsightFaceLoader
from .faces_similarity import FlexIPFaceSimilarity
from .finite import refuse_non_finite_floats
from .folders import register_model_folders
from .infiniteyou_apply import FlexIPInfiniteYouApply
from .infiniteyou_face import FlexIPInfiniteYouFace
from .infiniteyou_keypoints import FlexIPInfiniteYouKeypoints
from .infiniteyou_loader import FlexIPInfiniteYouLoader
from .loader import FlexIPLoader
from .pair_loader import FlexIPAdapterPairLoader
from .plot import FlexIPTradeoffPlot
from .schedule import FlexIPGateSchedule
from .similarity import FlexIPSubjectSimilarity
from .sweep import FlexIPGateSweep

register_model_folders()

# Each node once. Its class name is the node id that saved workflows hold: never rename one.
NODES: tuple[type, ...] = (
    FlexIPLoader,
    FlexIPAdapterPairLoader,
    FlexIPEncodeSubject,
    FlexIPGateSchedule,
    FlexIPApply,
    FlexIPInsightFaceLoader,
    FlexIPFaceCrop,
    FlexIPFaceSimilarity,
    FlexIPGateSweep,
    FlexIPSubjectSimilarity,
    FlexIPTradeoffPlot,
    FlexIPInfiniteYouLoader,
    FlexIPInfiniteYouFace,
    FlexIPInfiniteYouKeypoints,
    FlexIPInfiniteYouApply,
)

NODE_CLASS_MAPPINGS = {node.__name__: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.__name__: node.DISPLAY_NAME for node in NODES}

refuse_non_finite_floats(NODES)
