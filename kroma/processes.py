"""Whether a process named in a record (a rebuild's row, a job claim) may still be running."""

from __future__ import annotations

import contextlib
import os
import socket
from functools import cache
from pathlib import Path


@cache
def this_host() -> str:
    """`<hostname>/<boot id>`: two records with the same host share one process table (a pid from
    before a reboot names nobody)."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether a process of this host is running (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True
