"""A real ComfyUI server in a subprocess, with this pack installed, for server- and ui-layer tests.

The server runs ComfyUI's own `main.py` from the host (`COMFYUI_PATH`) on the CPU (or on the
device $FLEXIP_TEST_DEVICE names: tools/fixtures/paths.py), with
`--base-directory` pointing at a throw-away folder that holds `custom_nodes/ComfyUI-FlexIP`
(a link to the pack), `models/` (generated fixtures), `input/`, `output/`, `user/` and
`temp/`, and an in-memory database, so no test ever writes into the user's ComfyUI.
Every process is started in its own process group and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from tools.fixtures import REPO_ROOT, comfyui_path, model_tree
from tools.fixtures.paths import comfy_device_args

PACK_NAME = "ComfyUI-FlexIP"
LOG_TAIL_LINES = 60


class ServerError(RuntimeError):
    """The ComfyUI server did not start, died, or did not answer as expected."""


class PackImportError(ServerError):
    """ComfyUI reported IMPORT FAILED for the pack; the message quotes its traceback."""


class PromptRejected(ServerError):
    """POST /prompt answered 400: the prompt did not validate."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body


class ExecutionFailed(ServerError):
    """The prompt was accepted but a node raised while it ran."""

    def __init__(self, message: str, history: dict):
        super().__init__(message)
        self.history = history


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_base(
    base: Path,
    pack_dir: Path | None = REPO_ROOT,
    pack_name: str = PACK_NAME,
    models: bool = True,
    settings: dict | None = None,
) -> Path:
    """Lay out a ComfyUI base directory: custom_nodes/<pack> link, models/, input/, output/, user/, temp/.

    `settings` are written to user/default/comfy.settings.json (read by the frontend).
    """
    base = Path(base)
    for folder in ("custom_nodes", "input", "output", "temp", "user/default"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    if pack_dir is not None:
        link = base / "custom_nodes" / pack_name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
    if models:
        model_tree(base)
    else:
        (base / "models").mkdir(exist_ok=True)
    if settings is not None:
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings, indent=2))
    return base


def quote_pack_import_failure(log_text: str, pack_path: str) -> str | None:
    """The lines ComfyUI logged about failing to import `pack_path`, or None if it imported.

    ComfyUI logs the traceback, then "Cannot import <path> module for custom nodes: <e>",
    and later "(IMPORT FAILED): <path>" in the import-time summary. Only this pack counts:
    stock comfy_extras also report IMPORT FAILED (e.g. without torchaudio).
    """
    lines = log_text.splitlines()
    if not any(line.rstrip().endswith(f"(IMPORT FAILED): {pack_path}") for line in lines):
        return None
    cannot = f"Cannot import {pack_path} module for custom nodes:"
    for index, line in enumerate(lines):
        if cannot in line:
            start = index
            while start > 0 and not lines[start].startswith("Traceback (most recent call last):"):
                start -= 1
            if not lines[start].startswith("Traceback"):
                start = index
            return "\n".join(lines[start : index + 1])
    # No exception (e.g. no NODE_CLASS_MAPPINGS): quote whatever mentions the pack.
    return "\n".join(line for line in lines if pack_path in line)


# For test servers that alternate between graphs: ComfyUI's LRU cache keeps each graph's loaded
# models and encodings, where the default cache keeps only the last prompt's (outputs are the same;
# the demo and the benchmarks keep ComfyUI's default, as users run it)
LRU_CACHE_ARGS = ("--cache-lru", "100")


class ComfyServer:
    """Context manager: a ComfyUI `main.py` subprocess with the pack, on 127.0.0.1:<free port>.

    Startup waits until GET /object_info answers; it fails with the quoted traceback when
    ComfyUI reports IMPORT FAILED for the pack, and with the log tail when the process
    dies or does not become ready in time. The process group is always terminated.
    A pack folder without `__init__.py` (the pack not written yet) is not installed and
    `pack_installed` is False.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        pack_dir: Path | None = REPO_ROOT,
        pack_name: str = PACK_NAME,
        models: bool = True,
        settings: dict | None = None,
        host_path: Path | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 180.0,
    ):
        self.base_dir = Path(base_dir).absolute()
        self.pack_dir = Path(pack_dir) if pack_dir is not None else None
        self.pack_name = pack_name
        self.models = models
        self.settings = settings
        self.host_path = Path(host_path) if host_path is not None else comfyui_path()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.client_id = uuid.uuid4().hex
        self.log_path = self.base_dir / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.pack_installed = self.pack_dir is not None and (self.pack_dir / "__init__.py").is_file()
        self._log_file = None
        self._http = requests.Session()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pack_path(self) -> str:
        """The pack's path exactly as ComfyUI spells it in its log."""
        return os.path.join(str(self.base_dir / "custom_nodes"), self.pack_name)

    def command(self) -> list[str]:
        args = [
            sys.executable,
            str(self.host_path / "main.py"),
            *self._device_args(),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-api-nodes",
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            self.pack_name,
            "--base-directory",
            str(self.base_dir),
            "--database-url",
            "sqlite:///:memory:",
            "--preview-method",
            "none",
        ]
        return args + self.extra_args

    def _device_args(self) -> list[str]:
        """The test device's switches; a UNet type this server is started with (the precision tests'
        switch sets) replaces the device's, as ComfyUI accepts only one."""
        own_type = any(arg.endswith("-unet") for arg in self.extra_args)
        return [arg for arg in comfy_device_args() if not (own_type and arg.endswith("-unet"))]

    def start(self) -> ComfyServer:
        prepare_base(
            self.base_dir, self.pack_dir if self.pack_installed else None, self.pack_name, self.models, self.settings
        )
        self.port = free_port()
        # open for the server's lifetime, closed in stop(): no `with` can span start() to stop()
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.host_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server's process group by PID (SIGTERM, then SIGKILL after 15 s)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        if process is not None:
            # children left behind in the group (none expected)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._http.close()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- log -------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def _check_pack_import(self) -> None:
        if not self.pack_installed:
            return
        quoted = quote_pack_import_failure(self.log_text(), self.pack_path)
        if quoted is not None:
            body = "\n".join("    " + line for line in quoted.splitlines())
            raise PackImportError(
                f"ComfyUI could not import the {self.pack_name} pack ({self.pack_dir}):\n{body}\n"
                f"(full log: {self.log_path})"
            )

    def _pause(self, seconds: float) -> None:
        """Wait a polling interval, noticing at once if the server process exits."""
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return
        self._check_pack_import()
        raise ServerError(f"ComfyUI exited with code {self.process.returncode}.\n{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                response = self._http.get(self.url + "/object_info", timeout=10)
                if response.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self._check_pack_import()
                raise ServerError(
                    f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s.\n{self.log_tail()}"
                )
            self._pause(0.25)
        self._check_pack_import()

    # -- API -------------------------------------------------------------------------------

    def get(self, path: str, **kwargs) -> requests.Response:
        response = self._http.get(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)
        response.raise_for_status()
        return response

    def object_info(self, node: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node> (that node's entry, {} if unknown)."""
        if node is None:
            return self.get("/object_info").json()
        return self.get(f"/object_info/{node}").json().get(node, {})

    def pack_nodes(self) -> list[str]:
        """Node types this pack registered (their python_module is custom_nodes.<pack>)."""
        module = f"custom_nodes.{self.pack_name}"
        return sorted(name for name, info in self.object_info().items() if info.get("python_module") == module)

    def queue(self, prompt: dict) -> str:
        """POST /prompt (API format); returns the prompt id or raises PromptRejected with the reasons."""
        # written as Python API clients write it: NaN and Infinity go out as such (requests' json= refuses them)
        body = json.dumps({"prompt": prompt, "client_id": self.client_id})
        response = self._http.post(
            self.url + "/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text}}
            raise PromptRejected(f"ComfyUI rejected the prompt: {describe_rejection(body)}", body)
        return response.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history/<id> until the prompt finished; returns its history entry.

        Raises ExecutionFailed with the node's exception when the run failed, ServerError
        with the log tail on timeout or if the server died.
        """
        deadline = time.monotonic() + timeout
        while True:
            history = self.get(f"/history/{prompt_id}").json()
            entry = history.get(prompt_id)
            if entry is not None:  # an entry appears in /history only once the prompt is done
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or status.get("completed") is False:
                    raise ExecutionFailed(f"prompt {prompt_id} failed: {describe_execution_error(status)}", entry)
                return entry
            if time.monotonic() > deadline:
                raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n{self.log_tail()}")
            self._pause(0.2)

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """queue() then wait()."""
        return self.wait(self.queue(prompt), timeout)

    def image_refs(self, history: dict) -> list[dict]:
        """Every {filename, subfolder, type} in the outputs of a history entry, in node order."""
        refs = []
        for node_id in sorted(history.get("outputs", {}), key=_node_order):
            refs.extend(history["outputs"][node_id].get("images", []))
        return refs

    def view(self, ref: dict) -> bytes:
        """The bytes GET /view serves for one image reference."""
        params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        return self.get("/view", params=params).content

    def images(self, history: dict) -> list:
        """The output images of a history entry as PIL images, fetched through /view."""
        from PIL import Image

        images = []
        for ref in self.image_refs(history):
            image = Image.open(io.BytesIO(self.view(ref)))
            image.load()
            images.append(image)
        return images

    def pixels(self, prompt: dict, timeout: float = 300.0) -> Any:
        """Run `prompt`, which saves one image, and return it as an int16 array [H, W, 3] (differences stay signed)."""
        import numpy as np

        images = self.images(self.run(prompt, timeout))
        assert len(images) == 1, f"the prompt saved {len(images)} images, not one"
        return np.asarray(images[0], dtype=np.int16)

    def upload_image(self, image: Any, name: str | None = None) -> str:
        """POST /upload/image (a path or a PIL image); returns the name a LoadImage node takes."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            data, name = path.read_bytes(), name or path.name
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data, name = buffer.getvalue(), name or f"upload-{uuid.uuid4().hex[:8]}.png"
        response = self._http.post(
            self.url + "/upload/image",
            files={"image": (name, data, "image/png")},
            data={"overwrite": "true", "type": "input"},
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]


def _node_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def describe_rejection(body: dict) -> str:
    """One readable paragraph from a /prompt 400 body: the error and each node's errors."""
    error = body.get("error", {})
    if isinstance(error, str):
        parts = [error]
    else:
        parts = [": ".join(p for p in (error.get("message"), error.get("details")) if p)]
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            detail = ": ".join(p for p in (item.get("message"), item.get("details")) if p)
            parts.append(f"node {node_id} ({node_error.get('class_type', '?')}): {detail}")
    return "; ".join(p for p in parts if p) or json.dumps(body)


def describe_execution_error(status: dict) -> str:
    """The execution_error of a history status: node, exception and the traceback's last lines."""
    for event, data in status.get("messages", []):
        if event == "execution_error":
            traceback = "".join(data.get("traceback", [])[-3:]).rstrip()
            return (
                f"{data.get('node_type')} (node {data.get('node_id')}) raised "
                f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}"
                + (f"\n{traceback}" if traceback else "")
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"status {status.get('status_str')!r}, messages {status.get('messages')!r}"
