"""This process's own peak resident memory in MB, as candor reports its own (`VmHWM`).

Not `ru_maxrss`: on Linux it also counts the memory of the process that spawned this one
(`bench`, whose address space a `posix_spawn`ed child shares until its exec), so the PyTorch
side of a benchmark printed candor's figure. Imported by the bench_*_pytorch.py scripts (run
from this folder, so it is on their import path)."""
import resource


def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
