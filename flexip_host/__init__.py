"""What the trainer, the evaluation, the benchmarks and the tools share to run the pack outside a server.

- `bootstrap`: ComfyUI as a library and the pack loaded by ComfyUI's own loader (the one place,
  besides the pack's `__init__.py`, that changes `sys.path`).
- `loaded_pack`: `Pack`, typed accessors to the node layer the callers use.
- `frozen_models`: the base checkpoint and the image encoders, loaded with ComfyUI's loaders.
- `model_section`: the `[model]` section both configs hold, and its one check.
- `toml_files`: reading a config file.
- `distributed`: torchrun ranks and devices.
- `images`: image files as IMAGE tensors.
- `comfy_models`, `sampling`, `model_options`, `model_folders`: ComfyUI's library functions the other
  packages need (model patchers and loading, the sampler and text/VAE nodes, patcher wrappers, model
  folders), so that outside the node layer only this package and tools/fixtures import ComfyUI.

Nothing is imported here: importing a module of this package must not import ComfyUI.
See docs/architecture.md for where it sits between the packages.
"""
