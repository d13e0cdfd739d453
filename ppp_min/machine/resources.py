"""Resource figures of this process: its peak resident memory, and keeping freed memory off it.

Contract: ``peak_rss_mb() -> float`` is the process's peak resident set size in MiB: ``VmHWM`` from
``/proc/self/status`` on Linux, else ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on
macOS). It covers this process only, not the simulator child. ``trim_freed_memory() -> bool`` hands the
pages that the C allocator holds free back to the OS (glibc; False and a no-op elsewhere).
``is_disk_full(e) -> bool``: the exception says the disk (or quota) is full: an ``OSError`` with ``ENOSPC`` /
``EDQUOT``, or a library's own error wrapping one (safetensors' and tokenizers' Rust errors: "os error 28").
"""

from __future__ import annotations

import errno
import sys


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(k in text for k in ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded"))


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def trim_freed_memory() -> bool:
    """Hand the pages of memory freed back to malloc to the OS (glibc's ``malloc_trim(0)``); call it once a
    few training steps and after phases that free much (the run does it every 25 warm-start steps, every RL
    step and after each evaluation). Returns False, doing nothing, off glibc (macOS, musl, Windows).

    Why: torch's CPU tensors come from malloc. glibc maps a block above its mmap threshold on its own and
    unmaps it on free, but that threshold is dynamic: every freed mapped block raises it (up to 32 MiB), so
    after the first step every activation-sized tensor is carved from the heap arenas, whose freed pages stay
    resident, in holes that the next step's differently shaped tensors (length-bucketed batches: ~200 widths
    in a warm start) fit badly. Measured on the small preset's warm start (fp32, 1 thread): 280-560 MiB free
    but resident between steps (RSS 730-1010 MiB); trimmed each step, 450 MiB flat. A fixed 1 MiB mmap
    threshold (``mallopt``) also kept it off, but cost +44% CPU per step in page faults; a trim once a step
    re-faults the step's working set once."""
    if not sys.platform.startswith("linux"):
        return False
    global _trim
    if _trim is None:
        import ctypes
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # glibc, not musl  # noqa: B018
            _trim = libc.malloc_trim
        except (OSError, AttributeError):
            _trim = False
            return False
        _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    if _trim is False:
        return False
    _trim(0)
    return True


_trim = None  # glibc's malloc_trim once found, False where there is none
