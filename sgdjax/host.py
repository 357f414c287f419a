"""The host process: its CPU cores, and transparent huge pages for a run's large host arrays.

Huge pages (Linux with glibc >= 2.35): an ensemble allocates gigabytes per chunk: XLA's output
buffers (the recorded weights), their host copies and the sampler's sort keys. Each first write
to fresh anonymous memory costs a page fault per 4 KiB page; on the 2-vCPU VMs this project is
measured on, faulting in fresh memory ran at about 0.5 GB/s and took a quarter of an MLP
ensemble's CPU time. Where the kernel hands out huge pages only on request
(``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``madvise``, a common default), glibc's
``malloc`` requests them for its own mappings when the process starts with the tunable
``glibc.malloc.hugetlb=1``: 512 times fewer faults. Tunables are read when a process starts, so
``python -m sgdjax.run`` and ``python -m benchmarks`` execute themselves again, once, with the
tunable added.

Set ``SGDJAX_HUGEPAGES=0`` to keep the process as started (the re-executed process sees
``SGDJAX_HUGEPAGES=1``).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "SGDJAX_HUGEPAGES"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or None
    where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version(libc: tuple[str, str] | None = None) -> tuple[int, int] | None:
    """glibc's (major, minor), or None for another C library."""
    name, version = libc if libc is not None else platform.libc_ver()
    if name != "glibc":
        return None
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def wants_reexec(environ: Mapping[str, str], system: str, libc: tuple[int, int] | None,
                 mode: str | None) -> bool:
    """Whether re-executing with :data:`TUNABLE` would give this process huge pages: Linux,
    glibc >= 2.35 (which knows the tunable), huge pages on request only (``always`` has them
    already, ``never`` cannot), and neither the user nor an earlier execution decided."""
    if system != "linux" or SWITCH in environ:
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return libc is not None and libc >= (2, 35) and mode == "madvise"


def reexec_with_huge_pages() -> None:
    """Execute the current command again with :data:`TUNABLE` in ``GLIBC_TUNABLES`` when that
    gives the process huge pages (see :func:`wants_reexec`); otherwise, or if ``execve``
    fails, return and run as started. Call it first thing in a ``__main__`` entry point: the
    process is replaced, so nothing done before survives."""
    if not wants_reexec(os.environ, sys.platform, glibc_version(), thp_mode()):
        return
    env = dict(os.environ)
    previous = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{previous}:{TUNABLE}" if previous else TUNABLE
    env[SWITCH] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return
