"""What the benchmarks share: the CPU's name and a check that nothing else competed for the cores."""

import platform
import time

import torch


def processor() -> str:
    """The CPU model name (from /proc/cpuinfo where ``platform`` does not know it)."""
    name = platform.processor()
    if not name:
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        except OSError:
            pass
    return name or "unknown CPU"


class CpuShare:
    """This process's CPU time / (wall time x threads) over a block: ~1.0 when nothing else competes."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.share = (time.process_time() - self.cpu) / ((time.perf_counter() - self.wall) * torch.get_num_threads())
