"""Regenerate workflows/*.json (UI format) and their template thumbnails from workflows/api/*.json.

The API files are the source: the frontend's own `loadApiJson` builds the graph, each loader
node gets the frontend's model metadata (`properties.models`: name, url, directory) for the
public files it loads, a workflow that loads a FlexIP file or an InsightFace pack gets a Note
saying where the files come from, the samplers of a workflow with several of them get their seed
from one Primitive (so "randomize" draws one seed per Run for all the images compared), LiteGraph
arranges the graph in columns, and `graph.serialize()` writes exactly what a user
would save. The whole graph, fitted to the window, becomes `<name>.jpg` beside the file: the
thumbnail ComfyUI's template browser shows for a custom node's template. The ui test layer
checks that each UI file converts back to its API file.

    .venv/bin/python -m tools.ui_workflows [name ...]
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
import tempfile
import uuid
from pathlib import Path

from tools.harness.browser import Browser
from tools.harness.server import ComfyServer
from tools.harness.workflows import API, PUBLIC_MODELS, SEED_INPUTS, WORKFLOWS, models_property, notes_for

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ui_workflows")

# No tutorial over the canvas; node titles and widgets drawn even when a whole graph is fitted in view.
SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2}
THUMBNAIL_WIDTH = 512  # the template cards are ~300 px wide; 512 stays sharp on HiDPI and under 100 KB as JPEG

CONVERT_JS = """
const [api, name, models, notes, seeds, done] = arguments;
(async () => {
  window.app.loadApiJson(api, name);
  const graph = window.app.graph;
  for (const node of graph._nodes) {
    const used = (node.widgets || []).map((w) => w.value).filter((v) => typeof v === 'string' && v in models);
    if (used.length) node.properties.models = used.map((v) => models[v]);
  }
  if (seeds.length) {
    // The frontend's own Primitive copies the samplers' seed widget (0 to 2^64, "randomize"); core's PrimitiveInt
    // would randomize over +-2^50, negative seeds half the time. Being virtual, its value is written into each
    // seed by graphToPrompt, so the UI file still converts to the API file.
    const primitive = window.LiteGraph.createNode('PrimitiveNode');
    primitive.title = 'Seed (shared)';
    graph.add(primitive);
    for (const [id, input] of seeds) {
      const sampler = graph.getNodeById(+id);
      if (!primitive.connect(0, sampler, sampler.inputs.findIndex((slot) => slot.name === input)))
        throw new Error(`could not link the shared seed into ${input} of node ${id}`);
    }
  }
  for (const [title, text] of notes) {
    const node = window.LiteGraph.createNode('Note');
    node.title = title;
    node.widgets[0].value = text;
    node.size = [420, 170];  // the whole text readable without resizing (the default 140 x 60 shows a line)
    graph.add(node);
  }
  graph.arrange(60);
  done('');
})().catch((error) => done('ERROR ' + String(error && error.stack || error)));
"""

# Whole graph in view (LiteGraph fits all nodes when none is selected), drawn without the info
# corner; the canvas pixels alone, so no menu, sidebar or banner of the page shows.
CANVAS_PNG_JS = """
const [done] = arguments;
const canvas = window.app.canvas;
canvas.show_info = false;
canvas.deselectAll();
canvas.fitViewToSelectionAnimated({duration: 1});
setTimeout(() => {
  canvas.draw(true, true);
  done(canvas.canvas.toDataURL('image/png'));
  canvas.show_info = true;
}, 300);
"""


def thumbnail(browser: Browser) -> bytes:
    """The graph canvas, cropped to the nodes, as a JPEG THUMBNAIL_WIDTH wide."""
    from PIL import Image, ImageChops

    data_url = browser.driver.execute_async_script(CANVAS_PNG_JS)
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((0, 0)))
    difference = ImageChops.difference(image, background).convert("L")
    box = difference.point(lambda level: 255 if level > 24 else 0).getbbox()  # faint grid dots do not count
    if box is not None:
        margin = 16
        image = image.crop(
            (
                max(box[0] - margin, 0),
                max(box[1] - margin, 0),
                min(box[2] + margin, image.width),
                min(box[3] + margin, image.height),
            )
        )
    image = image.resize((THUMBNAIL_WIDTH, round(image.height * THUMBNAIL_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, optimize=True)
    return buffer.getvalue()


def shared_seed_inputs(api: dict, name: str) -> list[tuple[str, str]]:
    """(node id, seed input) of every sampler with a typed-in seed when there are several: one Primitive feeds them."""
    seeds = [
        (node_id, SEED_INPUTS[node["class_type"]]) for node_id, node in api.items() if node["class_type"] in SEED_INPUTS
    ]
    seeds = [
        (node_id, input_name)
        for node_id, input_name in seeds
        if not isinstance(api[node_id]["inputs"][input_name], list)
    ]  # a linked seed is shared already
    if len(seeds) < 2:
        return []
    values = {api[node_id]["inputs"][input_name] for node_id, input_name in seeds}
    if len(values) > 1:
        raise SystemExit(
            f"{name}: its samplers have the seeds {sorted(values)}: give them one seed in "
            f"workflows/api/{name}.json, which the UI file's shared seed then holds."
        )
    return seeds


def convert(names: list[str]) -> None:
    models = {name: models_property(name) for name in PUBLIC_MODELS}
    with (
        tempfile.TemporaryDirectory() as base,
        ComfyServer(Path(base), models=False, settings=SETTINGS) as server,
        Browser(window_size=(1600, 1000)) as browser,
    ):
        browser.open_frontend(server.url)
        for name in names:
            api = json.loads((API / f"{name}.json").read_text())
            result = browser.driver.execute_async_script(
                CONVERT_JS, api, f"{name}.json", models, notes_for(api), shared_seed_inputs(api, name)
            )
            if result.startswith("ERROR "):
                raise SystemExit(f"{name}: the frontend could not load the API workflow: {result[6:]}")
            picture = thumbnail(browser)
            # serialized once the thumbnail fitted the view: the view it saves (extra.ds) shows this whole graph,
            # the same on every run, not whatever the previous workflow left
            workflow = json.loads(browser.driver.execute_script("return JSON.stringify(window.app.graph.serialize());"))
            workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-flexip/workflows/{name}"))  # stable per file
            target = WORKFLOWS / f"{name}.json"
            target.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
            (WORKFLOWS / f"{name}.jpg").write_bytes(picture)
            log.info("wrote %s and its .jpg thumbnail", target.relative_to(REPO))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(sys.argv[1:] or sorted(path.stem for path in API.glob("*.json")))
