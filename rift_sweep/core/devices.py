"""What this process's PyTorch can do with the machine's NVIDIA GPU: the facts that decide whether a GPU is usable
(torch's CUDA build, the driver and the newest CUDA it supports), read without creating a CUDA context unless
torch can use the GPU. Used by the sweep's preflight on every GPU node and by bench/gpu_check.py.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

DRIVER_FILE = Path("/proc/driver/nvidia/version")  # present wherever the NVIDIA kernel module is loaded


@dataclass(frozen=True)
class CudaReport:
    torch_version: str
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU-only build
    usable: bool  # torch.cuda.is_available()
    devices: int  # GPUs torch sees (0 when it cannot use them)
    device_name: str | None
    driver: str | None  # NVIDIA driver version, e.g. "550.54.15"; None without the driver
    driver_cuda: str | None  # the newest CUDA the driver supports, e.g. "12.4"
    cudnn: int | None
    bf16_native: bool

    def problem(self) -> str | None:
        """Why torch cannot use this machine's GPU, in one line, or None when it can."""
        if self.usable:
            return None
        built = f"torch {self.torch_version}" + (f" (built for CUDA {self.torch_cuda})" if self.torch_cuda else "")
        if self.torch_cuda is None:
            return f"{built} is a CPU-only build; install a CUDA build of torch"
        if self.driver is None:
            return f"{built} finds no NVIDIA driver (no {DRIVER_FILE}); install the driver"
        gpu = f"{self.device_name or 'the GPU'}, driver {self.driver}"
        newest = f" supports CUDA up to {self.driver_cuda}" if self.driver_cuda else ""
        return (
            f"{built} cannot use {gpu}: the driver{newest}; install a torch built for CUDA "
            f"{self.driver_cuda or 'your driver supports'} (the torch line of cluster/*.yaml's setup_commands) or "
            f"update the driver"
        )

    def describe(self) -> str:
        cuda = f"CUDA {self.torch_cuda}" if self.torch_cuda else "CPU build"
        driver = f"driver {self.driver} (CUDA ≤ {self.driver_cuda})" if self.driver else "no NVIDIA driver"
        return f"torch {self.torch_version} ({cuda}), {driver}, {self.devices} × {self.device_name or 'no GPU'}"


def cuda_report() -> CudaReport:
    usable = torch.cuda.is_available()
    return CudaReport(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        usable=usable,
        devices=torch.cuda.device_count() if usable else 0,
        device_name=torch.cuda.get_device_name(0) if usable else _nvidia_smi_name(),
        driver=_driver_version(),
        driver_cuda=_driver_cuda(),
        cudnn=torch.backends.cudnn.version() if usable else None,
        bf16_native=usable and torch.cuda.is_bf16_supported(including_emulation=False),
    )


def _driver_version() -> str | None:
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", DRIVER_FILE.read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def _driver_cuda() -> str | None:
    """cuDriverGetVersion from libcuda: the driver's own answer, without a CUDA context."""
    try:
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _nvidia_smi_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        names = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return names[0].strip() or None
