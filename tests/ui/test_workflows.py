"""Every shipped workflow loads in the real frontend with no missing node and matches its API copy."""

from __future__ import annotations

import json

import pytest

from tools.harness.workflows import (
    API,
    NO_PUBLIC_FLEXIP_NOTE,
    PUBLIC_MODELS,
    WORKFLOWS,
    load_api,
    models_property,
    notes_for,
    ui_workflows,
)

pytestmark = pytest.mark.ui

TO_PROMPT_JS = """
const [done] = arguments;
window.app.graphToPrompt().then((p) => done(JSON.stringify(p.output)), (e) => done('ERROR ' + e));
"""

# Whole graph in view for the screenshot (LiteGraph fits all nodes when none is selected).
FIT_VIEW_JS = """
const [done] = arguments;
window.app.canvas.deselectAll();
window.app.canvas.fitViewToSelectionAnimated({duration: 1});
setTimeout(() => { window.app.canvas.setDirty(true, true); done(true); }, 300);
"""

# What the frontend does to the widgets once a Run is queued (app.queuePrompt): each control_after_generate acts.
AFTER_RUN_JS = """
for (const node of window.app.graph._nodes) for (const widget of node.widgets || []) widget.afterQueued?.();
"""

FLEXIP_NODES = {"FlexIPLoader", "FlexIPEncodeSubject", "FlexIPGateSchedule", "FlexIPApply"}


def test_the_frontend_registers_every_flexip_node(frontend):
    assert set(frontend.registered_node_types()) >= FLEXIP_NODES


def test_there_is_an_api_copy_of_every_workflow():
    assert ui_workflows(), "workflows/ holds no workflow"
    assert {path.stem for path in ui_workflows()} == {path.stem for path in API.glob("*.json")}


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda path: path.stem)
def test_workflow_loads_with_no_missing_node_and_matches_its_api_copy(frontend, screenshot_dir, path):
    workflow = json.loads(path.read_text())
    assert frontend.load_workflow(workflow) == []
    frontend.driver.execute_async_script(FIT_VIEW_JS)
    frontend.screenshot(screenshot_dir / f"workflow_{path.stem}.png")
    prompt = frontend.driver.execute_async_script(TO_PROMPT_JS)
    assert not prompt.startswith("ERROR"), prompt
    expected = json.loads((API / path.name).read_text())
    assert _comparable(json.loads(prompt)) == _comparable(expected)


def test_range_workflow_gives_its_three_samplers_one_new_seed_on_each_run(frontend):
    assert frontend.load_workflow(json.loads((WORKFLOWS / "flexip_range_sd15.json").read_text())) == []
    runs = []
    for _ in range(3):
        prompt = json.loads(frontend.driver.execute_async_script(TO_PROMPT_JS))
        runs.append([node["inputs"]["seed"] for node in prompt.values() if node["class_type"] == "KSampler"])
        frontend.driver.execute_script(AFTER_RUN_JS)
    assert runs[0] == [42, 42, 42], runs  # the API file's seed first
    assert all(len(run) == 3 and len(set(run)) == 1 and run[0] >= 0 for run in runs), runs
    assert len({run[0] for run in runs}) == 3, runs  # "randomize": a new seed each Run (2^50 values to draw from)


def _comparable(prompt: dict) -> dict:
    """class_type and inputs per node id (titles in _meta are presentation only)."""
    return {node_id: (node["class_type"], node["inputs"]) for node_id, node in prompt.items()}


MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# The models/ folders each loader reads; the missing-models dialog downloads into `directory`.
LOADER_FOLDERS = {
    "CheckpointLoaderSimple": {"checkpoints"},
    "CLIPVisionLoader": {"clip_vision"},
    "FlexIPAdapterPairLoader": {"ipadapter"},
    "FlexIPLoader": {"flexip"},
    "UNETLoader": {"diffusion_models"},
    "DualCLIPLoader": {"text_encoders"},
    "VAELoader": {"vae"},
    "FlexIPInfiniteYouLoader": {"controlnet", "infiniteyou"},  # InfuseNets, identity projections
    "FlexIPInfiniteYouFace": {"infiniteyou"},
}
# A direct download, not a page: a Hugging Face file or a GitHub release asset (host, path part).
DIRECT_DOWNLOADS = (("https://huggingface.co/", "/resolve/main/"), ("https://github.com/", "/releases/download/"))


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda path: path.stem)
def test_every_model_file_has_a_download_link_or_the_workflow_says_no_flexip_weights_are_public(path):
    workflow = json.loads(path.read_text())
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "Note"]
    for node in workflow["nodes"]:
        files = [
            value
            for value in node.get("widgets_values") or []
            if isinstance(value, str) and value.endswith(MODEL_SUFFIXES)
        ]
        public = [name for name in files if name in PUBLIC_MODELS]
        # the frontend offers a download only for entries whose name equals a widget value
        assert node.get("properties", {}).get("models", []) == [models_property(name) for name in public], node["type"]
        for name in public:
            url = models_property(name)["url"]
            assert models_property(name)["directory"] in LOADER_FOLDERS[node["type"]], name
            assert any(url.startswith(host) and part in url for host, part in DIRECT_DOWNLOADS), name
        for name in set(files) - set(public):
            assert node["type"] == "FlexIPLoader", f"{node['type']} loads {name}: neither public nor a FlexIP file"
            assert NO_PUBLIC_FLEXIP_NOTE in notes, f"{path.name} loads {name} but has no Note saying none is public"


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda path: path.stem)
def test_workflow_notes_say_where_its_flexip_weights_and_insightface_pack_come_from(path):
    workflow = json.loads(path.read_text())
    notes = sorted((node["title"], node["widgets_values"][0]) for node in workflow["nodes"] if node["type"] == "Note")
    assert notes == sorted(notes_for(load_api(path.stem)))
