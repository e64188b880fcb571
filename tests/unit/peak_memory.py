"""Peak memory of a block of code, measured so that growth can fail a test.

`ru_maxrss` is the process's peak so far: once anything in the process went higher (a full
`make test` loads models in the comfy layer, in the same process), a block's growth reads as zero.
Linux lets a process reset its peak (writing "5" to /proc/self/clear_refs sets VmHWM to the current
resident set), so here each block's peak is read from its own start, and every allocator counts,
torch's CPU allocator included, which tracemalloc does not see. Where /proc cannot do this (the
suite runs on Linux, see README), the fallback is tracemalloc: Python and numpy allocations only.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class PeakMeter(Protocol):
    name: str

    def reset(self) -> int:
        """Set the peak to the current usage; returns that usage in bytes."""

    def peak(self) -> int:
        """The peak usage in bytes since the last reset."""


class ResidentPeak:
    """The process's resident-set peak (VmHWM): every allocation that touched memory, tensors included."""

    name = "peak resident set"

    def reset(self) -> int:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return self.peak()

    def peak(self) -> int:
        # VmHWM is the peak the reset sets; ru_maxrss would also keep the peak from before exec
        with open("/proc/self/status", "rb") as handle:
            status = handle.read()
        start = status.index(b"VmHWM:") + len(b"VmHWM:")
        return int(status[start : status.index(b"\n", start)].split()[0]) * 1024  # kB


class TracedPeak:
    """tracemalloc's peak: Python objects and numpy arrays, not torch's tensor storage."""

    name = "peak traced Python allocations"

    def reset(self) -> int:
        tracemalloc.reset_peak()
        return tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1]


@contextmanager
def peak_meter() -> Iterator[PeakMeter]:
    """A ResidentPeak where the kernel can reset the peak (Linux ≥ 4.0), else a TracedPeak while the block runs."""
    try:
        ResidentPeak().reset()
    except (OSError, ValueError):  # no /proc, a kernel without reset, or no VmHWM line
        tracemalloc.start()
        try:
            yield TracedPeak()
        finally:
            tracemalloc.stop()
    else:
        yield ResidentPeak()
