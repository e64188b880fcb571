"""Headless Chromium (selenium) driving the real ComfyUI frontend served by a ComfyServer.

Debian's /usr/bin/chromium and /usr/bin/chromedriver, a fresh profile per browser, no
network besides the local server. The driver and every browser process it started are
stopped by PID in `quit()`, also when a test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from pathlib import Path

import psutil

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# The app is usable once main.ts has run app.setup() (window.app), the Vue shell is up and
# the LiteGraph canvas exists.
APP_READY_JS = """
return !!(window.app && window.app.vueAppReady && window.LiteGraph && window.app.graph
          && window.app.canvas && document.querySelector('canvas#graph-canvas'));
"""

# No missing-models dialog: test servers hold generated models under other names, and the dialog
# would cover the canvas in screenshots (missing node types are still reported).
LOAD_WORKFLOW_JS = """
const [workflow, done] = arguments;
window.app.loadGraphData(workflow, true, true, null, {showMissingModelsDialog: false}).then(
  () => done({nodes: window.app.graph._nodes.map(n => n.type)}),
  (error) => done({error: String(error && error.stack || error)}));
"""


class BrowserError(RuntimeError):
    """The browser or the frontend did not do what the harness asked."""


class Browser:
    """Context manager around a headless Chromium; `open_frontend(url)` first, then the helpers."""

    def __init__(
        self, window_size: tuple[int, int] = (1400, 900), chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER
    ):
        self.window_size = window_size
        self.chromium = Path(chromium)
        self.chromedriver = Path(chromedriver)
        self.driver = None
        self._service = None
        self._profile: str | None = None
        self._pids: set[int] = set()

    def start(self) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for binary in (self.chromium, self.chromedriver):
            if not binary.exists():
                raise BrowserError(
                    f"{binary} is missing: install Debian's chromium and chromium-driver "
                    f"(apt-get install chromium chromium-driver)."
                )
        self._profile = tempfile.mkdtemp(prefix="flexip-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(self.chromium)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={self.window_size[0]},{self.window_size[1]}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self._service = Service(executable_path=str(self.chromedriver))
        try:
            self.driver = webdriver.Chrome(service=self._service, options=options)
        except BaseException:
            self.quit()
            raise
        self._remember_pids()
        return self

    def _remember_pids(self) -> None:
        process = getattr(self._service, "process", None)
        if process is None:
            return
        self._pids.add(process.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            self._pids.update(child.pid for child in psutil.Process(process.pid).children(recursive=True))

    def quit(self) -> None:
        """Close the session, then kill by PID whatever chromedriver/chromium process is left."""
        self._remember_pids()
        driver, self.driver = self.driver, None
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        service, self._service = self._service, None
        if service is not None:
            with contextlib.suppress(Exception):
                service.stop()
        for pid in sorted(self._pids):
            try:
                process = psutil.Process(pid)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass
        self._pids.clear()
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.quit()

    # -- frontend --------------------------------------------------------------------------

    def wait_until(self, script: str, timeout: float, what: str) -> None:
        """Poll a JS expression (`return ...;`) until truthy; BrowserError naming `what` otherwise."""
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(lambda d: d.execute_script(script))
        except Exception as error:
            raise BrowserError(f"{what} within {timeout:.0f} s; browser console:\n{self.console_text()}") from error

    def open_frontend(self, url: str, timeout: float = 120.0) -> None:
        """Load the ComfyUI frontend at `url` and wait until the app and its canvas are ready."""
        self.driver.set_script_timeout(timeout)
        self.driver.get(url)
        self.wait_until(APP_READY_JS, timeout, f"the ComfyUI frontend at {url} did not become ready")
        self._remember_pids()

    def registered_node_types(self) -> list[str]:
        """Every node type the frontend registered (LiteGraph.registered_node_types)."""
        return sorted(self.driver.execute_script("return Object.keys(window.LiteGraph.registered_node_types);"))

    def load_workflow(self, workflow: dict) -> list[str]:
        """Load a UI-format workflow with app.loadGraphData; returns its node types the frontend lacks.

        A type is missing when it is not in LiteGraph.registered_node_types (the frontend
        then shows its missing-nodes dialog and places a placeholder). Raises BrowserError if
        loading throws or the graph does not end up with the workflow's node count.
        """
        wanted = [node["type"] for node in workflow.get("nodes", [])]
        registered = set(self.registered_node_types())
        result = self.driver.execute_async_script(LOAD_WORKFLOW_JS, workflow)
        if "error" in result:
            raise BrowserError(f"app.loadGraphData failed: {result['error']}")
        if len(result["nodes"]) != len(wanted):
            raise BrowserError(
                f"the workflow has {len(wanted)} nodes but the graph has {len(result['nodes'])} "
                f"after loading: {sorted(result['nodes'])}"
            )
        return sorted({node_type for node_type in wanted if node_type not in registered})

    def graph_node_types(self) -> list[str]:
        """The types of the nodes now in the graph."""
        return self.driver.execute_script("return window.app.graph._nodes.map(n => n.type);")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the window; parent folders are created."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise BrowserError(f"could not write the screenshot {path}")
        return path

    def console(self) -> list[dict]:
        """Browser console entries since the last call ({level, message, timestamp})."""
        try:
            return self.driver.get_log("browser")
        except Exception:
            return []

    def console_errors(self) -> list[str]:
        """Messages of SEVERE console entries since the last call (JS errors, failed requests)."""
        return [entry["message"] for entry in self.console() if entry.get("level") == "SEVERE"]

    def console_text(self) -> str:
        entries = self.console()
        return "\n".join(f"{e.get('level')}: {e.get('message')}" for e in entries[-40:]) or "(empty)"
