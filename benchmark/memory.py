"""Peak memory of one block of work (a defense's purify), on CPU and on CUDA.

CPU: Linux lets a process reset its peak resident set size (VmHWM) by writing "5" to /proc/self/clear_refs,
so the peak inside the block is measured, not the process's lifetime peak (which backdoor training set).
Where that is unavailable (not Linux, restricted /proc) the lifetime peak is reported and `cpu_block_peak`
says so.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _vm_hwm_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


class PeakMemory:
    """`with PeakMemory(device) as pm: ...` then `pm.cpu_mb`, `pm.cuda_mb` (None off CUDA), `pm.cpu_block_peak`."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cpu_mb: float = 0.0
        self.cuda_mb: float | None = None
        self.cpu_block_peak = False

    def __enter__(self) -> PeakMemory:
        try:
            _CLEAR.write_text("5")
            self.cpu_block_peak = _vm_hwm_mb() is not None
        except OSError:
            self.cpu_block_peak = False
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _vm_hwm_mb() if self.cpu_block_peak else None
        self.cpu_mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device.type == "cuda":
            self.cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
