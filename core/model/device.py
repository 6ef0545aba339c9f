"""Where a worker's large calls run: INFERENCE_DEVICE, turned into a PyTorch device or none.

    auto     a GPU when the machine has NVIDIA's driver and PyTorch sees a GPU; else the CPU,
             quietly (PyTorch is not even imported on a machine without the driver)
    cpu      the CPU: compiled trees (core.model.trees), whatever the machine holds
    cuda     the first GPU PyTorch sees (cuda:N: the N-th); without it no gbm loads, and the
             worker's log and readiness say why

Calls of fewer than ACCELERATOR_MIN_BATCH trips stay on the CPU even on a GPU worker: a call to
the GPU costs a few hundred kernel launches and two copies, whatever its size
(core.model.accelerator).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError

CPU = "cpu"
# Made by NVIDIA's kernel driver, and mounted into a container given a GPU.
NVIDIA_CONTROL = Path("/dev/nvidiactl")


@dataclass(frozen=True)
class DevicePlan:
    """How a process places its gbm models: INFERENCE_DEVICE and ACCELERATOR_MIN_BATCH."""

    setting: str  # auto, cpu, cuda or cuda:N
    min_trips: int  # fewer trips in a call stay on the CPU

    @property
    def required(self) -> bool:
        """Whether a model that cannot go to the GPU must not serve at all."""
        return self.setting.startswith("cuda")


def resolve_device(setting: str, driver: Path = NVIDIA_CONTROL) -> str | None:
    """Name the PyTorch device that `setting` asks for on this machine, or None for the CPU path.

    `cuda` (or `cuda:N`) that cannot be had raises ModelError saying why; `auto` never does.
    """
    if setting == CPU or (setting == "auto" and not driver.exists()):
        return None
    try:
        import torch
    except ImportError as exc:
        if setting == "auto":
            return None
        raise ModelError(
            f"INFERENCE_DEVICE={setting} needs PyTorch: install tripq[gpu] ({exc})"
        ) from exc
    with warnings.catch_warnings():  # a CUDA build on a machine without a usable GPU warns
        warnings.simplefilter("ignore")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "auto":
        return "cuda:0" if count else None
    index = int(setting.partition(":")[2] or 0)
    if index >= count:
        raise ModelError(f"INFERENCE_DEVICE={setting}, but PyTorch sees {count} GPU(s) here")
    return f"cuda:{index}"
