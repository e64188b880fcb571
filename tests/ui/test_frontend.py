"""The ui harness itself: the real frontend loads in headless Chromium and can be inspected."""

from __future__ import annotations

from PIL import Image

STOCK_WORKFLOW = {
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyLatentImage",
            "pos": [100, 100],
            "size": [315, 106],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1]}],
            "properties": {},
            "widgets_values": [64, 64, 1],
        },
        {
            "id": 2,
            "type": "LatentUpscaleBy",
            "pos": [500, 100],
            "size": [315, 82],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "samples", "type": "LATENT", "link": 1}],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
            "properties": {},
            "widgets_values": ["nearest-exact", 1.5],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "LATENT"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def test_frontend_loads_and_writes_a_screenshot(frontend, screenshot_dir):
    path = frontend.screenshot(screenshot_dir / "frontend.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    assert "KSampler" in frontend.registered_node_types()


def test_load_workflow_reports_only_the_node_types_the_frontend_lacks(frontend):
    assert frontend.load_workflow(STOCK_WORKFLOW) == []
    assert sorted(frontend.graph_node_types()) == ["EmptyLatentImage", "LatentUpscaleBy"]

    broken = dict(
        STOCK_WORKFLOW,
        nodes=[dict(STOCK_WORKFLOW["nodes"][0]), dict(STOCK_WORKFLOW["nodes"][1], type="NoSuchFlexIPNode")],
    )
    assert frontend.load_workflow(broken) == ["NoSuchFlexIPNode"]
