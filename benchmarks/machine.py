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


def status_kib() -> dict[str, int]:
    """This process's resident set now (VmRSS) and its peak (VmHWM), in KiB (Linux)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def reset_peak() -> str:
    """Restart the VmHWM peak at the current RSS; returns how the peak is measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return "VmHWM reset through /proc/self/clear_refs"
    except OSError:
        return "VmHWM not resettable here: peak since process start (includes loading)"
