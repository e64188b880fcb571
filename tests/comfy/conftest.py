"""In-process ComfyUI for the comfy layer: the host on sys.path, CPU forced, tiny models.

The import happens when this conftest loads, before test modules are collected, so test
modules may `import comfy.*` at the top. `comfy.cli_args.args.cpu` is set before
`comfy.model_management` is first imported (it reads the flag once); ComfyUI's folders
(models/, output/, ...) point at .cache/inprocess-comfy, never at the host.
"""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from flexip_host.bootstrap import load_pack
from flexip_host.loaded_pack import Pack
from flexip_model.errors import FlexIPError
from tools.fixtures import import_inprocess_comfy

try:
    COMFYUI_HOST = import_inprocess_comfy()
except FlexIPError as error:
    raise pytest.UsageError(str(error)) from None

SD15 = namedtuple("SD15", "model clip vae")


@pytest.fixture(scope="session")
def flexip_pack() -> Pack:
    """The pack as ComfyUI's custom-node loader imports it."""
    return load_pack()


@pytest.fixture(scope="module")
def world(flexip_pack):
    """tests/comfy/tiny_world.py's world: tiny UNet and encoders, a random FlexIP adapter, a subject.

    Once per module; a module may override it with a world of its own (test_compat_pair does).
    """
    from tests.comfy.tiny_world import tiny_world

    return tiny_world(flexip_pack)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread (use with `pytest.mark.usefixtures`): on a busy 2-core host, 2 spinning
    OpenMP threads made a tiny-UNet call 30x slower (8 s instead of 0.25 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def insightface(flexip_pack, tmp_path_factory):
    """The generated face pack loaded by FlexIPInsightFaceLoader (a real insightface FaceAnalysis)."""
    from tools.fixtures.faces import FACE_PACK_NAME, face_pack, insightface_root

    root = tmp_path_factory.mktemp("insightface")
    face_pack(root / "models" / FACE_PACK_NAME)
    with insightface_root(root):
        (analysis,) = flexip_pack.node_classes["FlexIPInsightFaceLoader"]().load(FACE_PACK_NAME, "CPU")
    return analysis


@pytest.fixture
def progress():
    """(value, total) of every comfy.utils.ProgressBar update while the test runs, via ComfyUI's global hook."""
    import comfy.utils

    updates = []
    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    yield updates
    comfy.utils.set_progress_bar_global_hook(saved)


@pytest.fixture(scope="module")
def faceanalysis(tmp_path_factory):
    """The generated face pack as InstantID's and PuLID's loaders make their FACEANALYSIS: insightface's
    FaceAnalysis with every module of the pack, on the CPU, prepared at 640 px; no FlexIP code involved."""
    import insightface.app

    from tools.fixtures.faces import FACE_PACK_NAME, face_pack

    root = tmp_path_factory.mktemp("faceanalysis")
    face_pack(root / "models" / FACE_PACK_NAME)
    analysis = insightface.app.FaceAnalysis(name=FACE_PACK_NAME, root=str(root), providers=["CPUExecutionProvider"])
    analysis.prepare(ctx_id=0, det_size=(640, 640))
    return analysis


@pytest.fixture
def tiny_unet():
    """A fresh ModelPatcher of the tiny seeded SD1.5-shaped BaseModel (see tools.fixtures.tiny)."""
    from tools.fixtures import tiny_unet_patcher

    return tiny_unet_patcher()


@pytest.fixture(scope="session")
def tiny_clip_vision():
    """Tiny CLIP ViT/14 ClipVisionModel (64-d image_embeds, 257 tokens); do not modify it."""
    from tools.fixtures import tiny_clip_vision as build

    return build()


@pytest.fixture(scope="session")
def tiny_dino():
    """Tiny DINOv2 ClipVisionModel (64 wide, 518 px position table); do not modify it."""
    from tools.fixtures import tiny_dino as build

    return build()


@pytest.fixture(scope="session")
def sd15():
    """(model, clip, vae) of the generated SD1.5 checkpoint, loaded by comfy.sd like CheckpointLoaderSimple."""
    import comfy.sd

    from tools.fixtures import sd15_checkpoint

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint()))
    return SD15(model, clip, vae)
