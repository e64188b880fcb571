"""The shipped workflows as ComfyUI templates: listed by /api/workflow_templates and served from workflows/.

ComfyUI serves one static route per example folder of a pack (`example_workflows`, `example`,
`examples`, `workflow`, `workflows`) under the same prefix, and the first one registered wins:
any of the earlier folders in the pack would hide workflows/.
"""

from __future__ import annotations

import pytest

from tools.harness.server import PACK_NAME
from tools.harness.workflows import WORKFLOWS, ui_workflows

pytestmark = pytest.mark.server


def test_the_template_list_names_exactly_the_ui_workflows(comfy_server):
    listed = comfy_server.get("/api/workflow_templates").json()[PACK_NAME]
    assert sorted(listed) == [path.stem for path in ui_workflows()]


def test_every_listed_template_is_served_byte_for_byte_from_workflows(comfy_server):
    for name in comfy_server.get("/api/workflow_templates").json()[PACK_NAME]:
        served = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json").content  # raises on 404
        assert served == (WORKFLOWS / f"{name}.json").read_bytes(), name


def test_every_template_thumbnail_is_served_as_a_jpeg(comfy_server):
    # the frontend asks for /api/workflow_templates/<pack>/<name>.jpg (mediaSubtype "jpg" for custom templates)
    for name in comfy_server.get("/api/workflow_templates").json()[PACK_NAME]:
        thumbnail = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg").content
        assert thumbnail[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
        assert len(thumbnail) < 100_000, f"{name}.jpg has {len(thumbnail)} bytes"
