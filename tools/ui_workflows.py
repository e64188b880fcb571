"""Regenerate workflows/*.json (UI format) from workflows/api/*.json with the real frontend.

The API files are the source: the frontend's own `loadApiJson` builds the graph, LiteGraph
arranges it in columns, and `graph.serialize()` writes exactly what a user would save. The
ui test layer checks that each UI file converts back to its API file.

    .venv/bin/python tools/ui_workflows.py [name ...]
"""
from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.browser import Browser  # noqa: E402
from tests.harness.server import ComfyServer  # noqa: E402
from tests.harness.workflows import API, WORKFLOWS  # noqa: E402

CONVERT_JS = """
const [api, name, done] = arguments;
(async () => {
  window.app.loadApiJson(api, name);
  window.app.graph.arrange(60);
  done(JSON.stringify(window.app.graph.serialize()));
})().catch((error) => done('ERROR ' + String(error && error.stack || error)));
"""


def convert(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as base, \
            ComfyServer(Path(base), models=False, settings={"Comfy.TutorialCompleted": True}) as server, \
            Browser() as browser:
        browser.open_frontend(server.url)
        for name in names:
            api = json.loads((API / f"{name}.json").read_text())
            result = browser.driver.execute_async_script(CONVERT_JS, api, f"{name}.json")
            if result.startswith("ERROR "):
                raise SystemExit(f"{name}: the frontend could not load the API workflow: {result[6:]}")
            workflow = json.loads(result)
            workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-flexip/workflows/{name}"))  # stable per file
            target = WORKFLOWS / f"{name}.json"
            target.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
            print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    convert(sys.argv[1:] or sorted(path.stem for path in API.glob("*.json")))
