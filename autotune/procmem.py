"""This process's memory as the kernel counts it: peak resident set and peak address space (Linux /proc)."""

from __future__ import annotations

import psutil

_FIELDS = {"VmPeak": "address_space_peak", "VmSize": "address_space", "VmHWM": "resident_peak", "VmRSS": "resident"}


def process_memory() -> dict[str, int]:
    """Peak and current resident and virtual memory of this process, in bytes."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in _FIELDS:
                    values[_FIELDS[key]] = int(rest.split()[0]) * 1024
    except OSError:  # not Linux: psutil's figures, peaks approximated by current values
        info = psutil.Process().memory_info()
        values = {"resident": info.rss, "address_space": info.vms,
                  "resident_peak": getattr(info, "peak_wset", info.rss), "address_space_peak": info.vms}
    return values


def reset_resident_peak() -> bool:
    """Start a new peak-resident window (Linux ≥ 4.0: writing 5 to clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def return_freed_memory_at_once() -> bool:
    """Pin glibc's mmap threshold (128 KiB) so that every large block is returned to the OS when freed.

    glibc raises the threshold after each free of a large block, so later tensors of that size come from
    the heap and stay mapped: peak memory then jumps up and down with the batch size. Pinned, a worker's peak
    is its live tensors plus a constant, which is what a device allocator sees, and the memory model is
    linear. It costs step time where steps free and map large tensors (GPT-2 on the CPU: 0.96 s against
    0.68 s a step, more with several arenas), so only workers that measure memory pin it (`autotune.runner`).
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))
    except (OSError, AttributeError):  # not glibc
        return False


def single_malloc_arena() -> bool:
    """Make glibc use one malloc arena (for address-space-capped workers).

    Each thread's arena reserves 64 MiB of address space at a moment that depends on thread timing, and under
    a cap glibc silently falls back when it cannot: the same batch then fits in one run and fails in the next.
    With one arena the capped peak is reproducible (benchmarks/RESULTS.md, 2026-12-02).
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_arena_max = -8
        return bool(libc.mallopt(m_arena_max, 1))
    except (OSError, AttributeError):
        return False


def pool_blocks(block_bytes: int) -> dict[str, int]:
    """The anonymous mappings of ``block_bytes`` (a framework's CPU memory-pool blocks): how many, and
    how much of them has been touched (their resident pages; a pool reuses its pages and never gives them back,
    so this is the high-water mark of its use). Empty where /proc/self/smaps cannot be read."""
    blocks = touched = 0
    size = 0
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as handle:
            for line in handle:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    low, high = (int(part, 16) for part in head.split("-"))
                    size = high - low
                    fields = line.split()
                    # MindSpore 2.10 maps a block plus one page; no path: anonymous memory
                    if block_bytes <= size <= block_bytes + (2 << 20) and len(fields) == 5:
                        blocks += 1
                    else:
                        size = 0
                elif head == "Rss:" and size:
                    touched += int(line.split()[1]) * 1024
    except OSError:
        return {}
    return {"blocks": blocks, "touched": touched}
