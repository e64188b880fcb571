"""The FlexIP trainer: trains the adapters of `flexip_model` inside ComfyUI's own model code.

`python -m flexip_train --config train.toml` (one process, or one per GPU under torchrun).
The frozen base is a normal ComfyUI checkpoint; the attention runs through the pack's own
model patch, so what is trained is exactly what FlexIPApply samples with.
"""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "train"]


def train(config: TrainConfig, resume: str | None = None):
    """Train per `config`; see `flexip_train.trainer.train` (imported lazily: it needs ComfyUI)."""
    from .trainer import train as run

    return run(config, resume)
