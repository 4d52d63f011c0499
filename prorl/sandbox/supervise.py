"""Watching one test process of the sandbox (see runner.py): its output, its CPU time and its deadline. Standard
library only: copied into the sandbox image beside runner.py (`/opt/prorl/`).
"""

from __future__ import annotations

import os
import select
import signal
import time


def supervise(pid: int, out_r: int, err_r: int, cap: int, deadline: float, cpu_left: float):
    """Collect the child `pid`'s stdout/stderr (`cap` bytes each) until it exits, and kill its process group at the
    wall-clock `deadline` (monotonic), once its CPU time reaches `cpu_left` seconds, or past `cap`. Returns (status,
    exit_code, stdout, stderr, cpu_s): cpu_s is its CPU time, user + system, with the children it waited for (wait4);
    a run whose CPU time ended past `cpu_left` is `timeout` however it ended, unless it hit the output cap."""
    bufs = {out_r: bytearray(), err_r: bytearray()}
    open_fds = {out_r, err_r}
    status, wait_status, usage = None, None, None
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    stat_fd = _open_stat(pid)
    while True:
        remaining = deadline - time.monotonic()
        cpu_to_go = cpu_left - _stat_cpu(stat_fd)
        if remaining <= 0 or cpu_to_go <= 0:
            status = "timeout"
            break
        # One thread cannot spend more CPU than the wall time that passes: look again when it could have spent
        # the rest (RLIMIT_CPU stops many threads; the verdict uses the exact count from wait4 anyway).
        watch = list(open_fds) + ([pidfd] if pidfd is not None else [])
        wait = min(remaining, max(cpu_to_go, 0.01))
        ready, _, _ = select.select(watch, [], [], min(wait, 0.05) if pidfd is None else wait)
        for fd in ready:
            if fd == pidfd:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
                status = "output_limit"
        if status:
            break
        done, wait_status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
    if wait_status is None or status:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, wait_status, usage = os.wait4(pid, 0)
    if stat_fd is not None:
        os.close(stat_fd)
    cpu = usage.ru_utime + usage.ru_stime  # the child's and its waited-for children's
    # Drain what is already written (an escaped grandchild may hold the pipes open: do not wait for EOF).
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
        try:
            while len(bufs[fd]) <= cap:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                bufs[fd] += chunk
        except (BlockingIOError, OSError):
            pass
        os.close(fd)
    if pidfd is not None:
        os.close(pidfd)
    if cpu > cpu_left:  # past the budget, whatever ended it
        status = "timeout"
    if os.WIFSIGNALED(wait_status):
        exit_code = -os.WTERMSIG(wait_status)
        if status is None:
            status = "timeout" if os.WTERMSIG(wait_status) == signal.SIGXCPU else "runtime_error"
    else:
        exit_code = os.WEXITSTATUS(wait_status)
        if status is None:
            status = "ok" if exit_code == 0 else "runtime_error"
    if len(bufs[out_r]) > cap or len(bufs[err_r]) > cap:
        status = "output_limit"
    return (status, exit_code, bufs[out_r][:cap].decode("utf-8", "replace"),
            bufs[err_r][:cap].decode("utf-8", "replace"), cpu)


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _open_stat(pid: int):
    try:
        return os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:  # no /proc: the wall deadline, RLIMIT_CPU and the wait4 count still hold
        return None


def _stat_cpu(fd) -> float:
    """CPU seconds of a live process so far (utime + stime + cutime + cstime of /proc/<pid>/stat), 0 if unknown."""
    if fd is None:
        return 0.0
    try:
        fields = os.pread(fd, 4096, 0).rsplit(b")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) * _TICK_S
    except (OSError, IndexError, ValueError):
        return 0.0
