"""Model folders of the pack, registered with ComfyUI so extra_model_paths.yaml works."""

import os

import folder_paths

# Pickle files are listed so that picking one gets the explanation instead of an empty list.
ADAPTER_EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
# insightface: packs live in models/insightface/models/<pack>/ (see faces_packs.py).
FOLDERS = {"flexip": ADAPTER_EXTENSIONS, "ipadapter": ADAPTER_EXTENSIONS, "insightface": {".onnx"}}


def register_model_folders() -> None:
    """models/flexip (FlexIP adapters), models/ipadapter (compatibility mode), models/insightface (faces)."""
    for name, extensions in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            known.update(extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
