"""A checkpoint written by the trainer runs in the shipped workflow on a real server."""

from __future__ import annotations

import pytest

from tests.support.smoke import write_trained_checkpoint
from tools.fixtures import clip_vision_h, dinov2_large, sd15_checkpoint
from tools.harness.workflows import for_test_models, load_api, nodes_of

pytestmark = pytest.mark.server


def test_a_trained_checkpoint_runs_in_the_basic_workflow(comfy_server, tmp_path):
    trained = write_trained_checkpoint(sd15_checkpoint(), tmp_path, clip_vision=clip_vision_h(), dino=dinov2_large())
    link = comfy_server.base_dir / "models" / "flexip" / "flexip_trained.safetensors"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(trained)
    # the subject of the first training pair
    subject = comfy_server.upload_image(tmp_path / "data" / "images" / "0_target.png", "flexip_trained_subject.png")
    prompt = for_test_models(load_api("flexip_basic_sd15"), seed=4242, image=subject)
    prompt[nodes_of(prompt, "FlexIPLoader")[0]]["inputs"]["adapter_name"] = link.name
    history = comfy_server.run(prompt)
    assert len(comfy_server.images(history)) == 1
    assert "FlexIP (flexip_trained.safetensors): 4 of 4 cross-attention layers patched" in comfy_server.log_text()
