"""The real frontend links InstantID's and PuLID's FACEANALYSIS output into the FlexIP face inputs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ui

# A stand-in loader (a plain LiteGraph node whose one output has `type`) linked into the input
# `insightface` of a real FlexIP node built from the server's node definition; the frontend's
# connect() applies its link-type check and returns null when it refuses the link.
CONNECT_JS = """
const [nodeType, outputType, done] = arguments;
const graph = window.app.graph;
const source = new window.LGraphNode("stand-in loader");
source.addOutput("face models", outputType);
graph.add(source);
const target = window.LiteGraph.createNode(nodeType);
graph.add(target);
const link = source.connect(0, target, "insightface");
const input = target.inputs.find((slot) => slot.name === "insightface");
done({linked: link != null, inputType: input.type});
graph.remove(source);
graph.remove(target);
"""


@pytest.mark.parametrize("node", ["FlexIPFaceCrop", "FlexIPFaceSimilarity", "FlexIPEncodeSubject"])
@pytest.mark.parametrize(
    "output_type, linked", [("FACEANALYSIS", True), ("INSIGHTFACE", True), ("BBOX_DETECTOR", False)]
)
def test_frontend_links_faceanalysis_and_insightface_into_face_inputs_only(frontend, node, output_type, linked):
    result = frontend.driver.execute_async_script(CONNECT_JS, node, output_type)
    assert result == {"linked": linked, "inputType": "INSIGHTFACE,FACEANALYSIS"}
