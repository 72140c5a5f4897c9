"""Whether the process that left a resource behind (a temporary dataset directory, a shared-memory ring
segment) is still running: resources of dead processes are reclaimed, those of live ones left alone."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
