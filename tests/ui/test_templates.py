"""The pack's templates opened the way a user opens them: the frontend's own template browser.

Templates dialog (command Comfy.BrowseTemplates) -> the pack's entry under Extensions -> the
template's card (its thumbnail loaded) -> the graph on the canvas, every node type known, and
the missing-models dialog listing each public file the template links (the server holds only
generated models). The dialog lists a .bin or .pth file too, with a note that it will not download it.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tools.harness.server import PACK_NAME
from tools.harness.workflows import PUBLIC_MODELS, WORKFLOWS, models_property

pytestmark = pytest.mark.ui

# the start here workflow, the FLUX one, whose files lie in folders the pack adds (models/infiniteyou), and the
# two-subject ones (SD1.5 and FLUX), whose masks come from ComfyUI's own mask nodes
TEMPLATES = (
    "flexip_start_here_sd15",
    "flexip_infiniteyou_flux",
    "flexip_two_subjects_sd15",
    "flexip_two_identities_flux",
)
TIMEOUT = 60  # seconds; the frontend fetches the template list and each thumbnail from the CPU-bound server
THUMBNAIL_JS = """
const card = document.querySelector(arguments[0]);
if (!card) return null;
card.scrollIntoView({block: 'center'});  // thumbnails load lazily, once in view
const image = card.querySelector('img');
if (!image || !image.complete) return null;
// the frontend fetches the file and shows it through a blob: URL, so the request is read from the resource timings
const requested = performance.getEntriesByType('resource')
    .map((entry) => entry.name)
    .filter((url) => url.endsWith(arguments[1]));
return {requested, width: image.naturalWidth, height: image.naturalHeight};
"""


def wait_for(driver, find, what: str):
    """Poll `find(driver)` until it returns something truthy; fail naming `what`.

    An element the frontend re-rendered between finding and using it is found again on the next poll.
    """
    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.25, ignored_exceptions=ignored).until(find, message=what)


def click(element) -> bool:
    element.click()
    return True


def close_dialogs(driver) -> bool:
    """Escape closes the topmost dialog; True once none is open."""
    if not driver.find_elements(By.CSS_SELECTOR, "[role=dialog]"):
        return True
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    return False


def dialogs_text(driver) -> str:
    return "\n".join(element.text for element in driver.find_elements(By.CSS_SELECTOR, "[role=dialog]"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_opens_from_the_template_browser_and_the_missing_models_dialog_lists_its_files(frontend, template):
    driver = frontend.driver
    card = f"[data-testid='template-workflow-{template}']"  # looked up on every poll: the grid re-renders
    wait_for(driver, close_dialogs, "a dialog left by an earlier test did not close")
    # room for every request the dialog makes (Chromium keeps 250 resource timings by default)
    driver.execute_script("performance.clearResourceTimings(); performance.setResourceTimingBufferSize(5000);")
    driver.execute_script("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    category = f"//*[@role='dialog']//nav//*[@role='button'][normalize-space(.)='{PACK_NAME}']"
    wait_for(
        driver,
        lambda d: click(d.find_element(By.XPATH, category)),
        f"the Templates dialog lists no {PACK_NAME} category",
    )
    url = f"/api/workflow_templates/{PACK_NAME}/{template}.jpg"
    thumbnail = wait_for(
        driver,
        lambda d: d.execute_script(THUMBNAIL_JS, card, url),
        f"the {PACK_NAME} category shows no {template} card with an image",
    )
    assert thumbnail["requested"], f"the card never requested {url}"
    with Image.open(WORKFLOWS / f"{template}.jpg") as shipped:
        assert (thumbnail["width"], thumbnail["height"]) == shipped.size, "the card shows another image than the .jpg"

    expected = json.loads((WORKFLOWS / f"{template}.json").read_text())
    wait_for(driver, lambda d: click(d.find_element(By.CSS_SELECTOR, card)), f"could not click the {template} card")
    wait_for(
        driver,
        lambda d: sorted(frontend.graph_node_types()) == sorted(n["type"] for n in expected["nodes"]),
        f"the canvas did not show the {template} graph",
    )
    missing = set(frontend.graph_node_types()) - set(frontend.registered_node_types())
    assert missing == set(), f"node types the frontend lacks: {sorted(missing)}"

    # the shared server has only generated models, so the frontend asks for the public files by name
    text = wait_for(
        driver,
        lambda d: "Missing Models" in dialogs_text(d) and dialogs_text(d),
        "no missing-models dialog after opening the template",
    )
    used = {
        name
        for node in expected["nodes"]
        for name in node.get("widgets_values") or []
        if isinstance(name, str) and name in PUBLIC_MODELS
    }
    linked = {model["name"] for node in expected["nodes"] for model in node.get("properties", {}).get("models", [])}
    assert used and used == linked, "every public file the template loads is linked on its loader node"
    for name in used:
        assert f"{models_property(name)['directory']} / {name}" in text
    wait_for(driver, close_dialogs, "the missing-models dialog did not close")  # later tests draw on a clear canvas
