"""What the sandbox runner undoes after each program (runner.py's `Server.cleanup`): the processes it left, the
System V IPC objects it made (they outlive their processes) and the files in the scratch area; and the kernel's
OOM-kill counter it reads around each program (a program the OOM killer ended is reported as `memory`). Standard
library only: copied into the sandbox image beside runner.py (`/opt/prorl/`)."""

from __future__ import annotations

import os
import shutil


def live_procs():
    """(pid, parent pid) of every live process (zombies left out) visible in /proc."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                state, ppid = fh.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if state not in (b"Z", b"X"):
            yield int(name), int(ppid)


def others_alive() -> bool:
    """Whether a process other than PID 1 and this one is alive in our PID namespace."""
    me = os.getpid()
    return any(pid not in (1, me) for pid, _ in live_procs())


def remove_sysv_ipc() -> bool:
    """IPC_RMID every System V shared memory segment, message queue and semaphore set of this IPC namespace (they
    outlive their processes, all dead by now, so a segment's memory is freed at once). True when none is left."""
    try:
        import ctypes

        libc, left = ctypes.CDLL(None, use_errno=True), False
        for kind in ("shm", "msg", "sem"):
            with open(f"/proc/sysvipc/{kind}") as fh:  # shmctl/msgctl(id, IPC_RMID = 0, NULL), semctl(id, 0, 0)
                left |= not all([getattr(libc, f"{kind}ctl")(int(line.split()[1]), 0, 0) == 0
                                 for line in fh.read().splitlines()[1:]])
        return not left
    except (OSError, ValueError, IndexError, AttributeError):  # no SysV IPC here, or no libc: a fresh sandbox
        return False


def wipe(scratch) -> bool:
    """Empty each folder of `scratch` (the workdirs' root, the container's /dev/shm and /dev/mqueue). False when
    a tree is deeper than os.walk/rmtree can recurse: the host should replace the sandbox."""
    try:
        for base in scratch:
            make_listable(base)
            for name in os.listdir(base):
                path = os.path.join(base, name)
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass
    except OSError:
        pass
    except RecursionError:
        return False
    return True


def make_listable(top: str) -> None:
    """chmod the directories a program left under `top` to 0o700 (top-down, so each is listable before it is
    walked): rmtree cannot empty a directory of mode 0 or 0o500, and its files would fill the tmpfs for the next
    programs. Symlinks are skipped (chmod would follow them)."""
    for path, dirs, _ in os.walk(top):
        for name in dirs:
            sub = os.path.join(path, name)
            if not os.path.islink(sub):
                try:
                    os.chmod(sub, 0o700)
                except OSError:
                    pass


# Where the kernel counts OOM kills: the container's own memory cgroup (v2 with a private cgroup namespace, Docker's
# default there; v1, where Docker mounts the container's cgroup at /sys/fs/cgroup/memory), else the host-wide count.
CGROUP_OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
HOST_OOM_FILE = "/proc/vmstat"


def oom_kills(path: str):
    """The `oom_kill` count in `path` (a memory.events, memory.oom_control or /proc/vmstat file); None if unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None
