"""Hostile programs: every one is contained, the call returns within the wall-clock cap (WALL_FACTOR x the CPU budget)
+ 1 s, and the pool is healthy after.

Network cases only ever aim at this machine (a listener the test opens on 127.0.0.1, and the Docker bridge
address of this host).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import pytest

from prorl.sandbox import Test
from prorl.sandbox.base import WALL_FACTOR
from prorl.sandbox.docker import DockerSandbox
from test_sandbox import require_engine, wait_healthy

BUDGET = 2.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool():
    require_engine()
    with DockerSandbox(pool_size=2, timeout_s=BUDGET) as sb:
        yield sb


@pytest.fixture(scope="module")
def single():
    """One container, so that a follow-up program lands where the hostile one ran."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=BUDGET, recycle_after=10_000) as sb:
        yield sb


def timed(sb: DockerSandbox, program: str, **kw):
    t0 = time.monotonic()
    res = sb.run(program, **kw)
    elapsed = time.monotonic() - t0
    assert elapsed <= WALL_FACTOR * kw.get("timeout_s", BUDGET) + 1.0, f"returned after {elapsed:.2f} s: {res}"
    return res


CONTAINED = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                  {"timeout", "runtime_error"}),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))", {"memory"}),
    "forked_memory_bomb": ("import os\nfor _ in range(20):\n    if os.fork() == 0:\n        break\n"
                           "x = []\nwhile True:\n    try:\n        x.append(bytearray(20 * 2**20))\n"
                           "    except MemoryError:\n        pass", {"timeout", "runtime_error", "memory"}),
    "infinite_loop": ("while True:\n    pass", {"timeout"}),
    "busy_threads": ("import threading\ndef spin():\n    while True:\n        pass\n"
                     "for _ in range(32):\n    threading.Thread(target=spin).start()", {"timeout"}),
    "stdout_100mb": ("import sys\nchunk = 'x' * 2**20\nfor _ in range(100):\n    sys.stdout.write(chunk)",
                     {"output_limit"}),
    "stderr_100mb": ("import sys\nchunk = 'x' * 2**20\nfor _ in range(100):\n    sys.stderr.write(chunk)",
                     {"output_limit"}),
    "closed_stdout_then_loop": ("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", {"timeout"}),
    "deep_recursion": ("import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)",
                       {"runtime_error", "memory", "timeout"}),
}


@pytest.mark.parametrize("name", sorted(CONTAINED))
def test_contained(pool, name):
    program, statuses = CONTAINED[name]
    res = timed(pool, program)
    assert res.status in statuses, res
    assert len(res.stdout) <= pool.output_limit and len(res.stderr) <= pool.output_limit
    wait_healthy(pool)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT", "SIGSTOP", "SIGSEGV", "SIGHUP"])
def test_signals_to_the_parent_and_init(pool, sig):
    res = timed(pool, f"import os, signal\nos.kill(1, signal.{sig})\nos.kill(os.getppid(), signal.{sig})\n"
                      "import time\ntime.sleep(0.2)\nprint('after')")
    assert res.status in {"ok", "runtime_error", "timeout"}
    tests = pool.run_tests(f"import os, signal\nos.kill(os.getppid(), signal.{sig})",
                           [Test(code="assert False"), Test(code="assert 1 == 2")], total_timeout_s=BUDGET)
    assert not any(t.passed for t in tests)
    wait_healthy(pool)


def test_kill_everything(pool):
    res = timed(pool, "import os\nos.kill(-1, 9)")
    assert res.status in {"runtime_error", "ok"}
    wait_healthy(pool)


def test_no_network_to_the_host(pool):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    targets = ["127.0.0.1"]
    bridge = _docker_bridge_address()
    if bridge:
        targets.append(bridge)  # the host's own address on the Docker bridge: still this machine
    program = ("import socket\nprint([n for _, n in socket.if_nameindex()])\n"
               f"for host in {targets!r}:\n"
               "    s = socket.socket()\n    s.settimeout(0.5)\n"
               "    try:\n"
               f"        s.connect((host, {port}))\n        print(host, 'CONNECTED')\n"
               "    except OSError as e:\n        print(host, type(e).__name__)\n"
               "try:\n    socket.getaddrinfo('localhost', 80)\n    print('dns ok')\nexcept OSError:\n    print('no dns')")
    try:
        res = timed(pool, program)
        assert res.ok, res
        lines = res.stdout.splitlines()
        assert lines[0] == "['lo']"
        assert "CONNECTED" not in res.stdout and len(lines) == len(targets) + 2
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached the host's listener
    finally:
        listener.close()


def _docker_bridge_address() -> str | None:
    try:
        import fcntl
        import struct

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"docker0"))  # SIOCGIFADDR
        return str(ipaddress.IPv4Address(packed[20:24]))
    except OSError:
        return None


def test_host_files_are_not_visible(pool):
    host_shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
    program = ("import os\n"
               "for path in ['/etc/shadow', " + repr(str(REPO / "pyproject.toml")) + ", "
               + repr(str(REPO)) + ", '/var/run/docker.sock', '/root']:\n"
               "    try:\n"
               "        print(path, 'READ', os.listdir(path) if os.path.isdir(path) else open(path).read())\n"
               "    except OSError as e:\n        print(path, type(e).__name__)")
    res = timed(pool, program)
    assert res.ok and "READ" not in res.stdout, res.stdout
    assert "/etc/shadow PermissionError" in res.stdout
    assert f"{REPO / 'pyproject.toml'} FileNotFoundError" in res.stdout
    for line in host_shadow.splitlines():
        fields = line.split(":")
        if len(fields) > 1 and len(fields[1]) > 3:  # a password hash of the host
            assert fields[1] not in res.stdout


def test_writes_outside_the_workdir_fail_or_vanish(single):
    program = ("import os\n"
               "for path in ['/etc/passwd', '/opt/prorl/runner.py', '/tmp/x', '/usr/lib/x', '/x', '/root/x',\n"
               "             '/sandbox/outside', '../sibling', '/dev/shm/leak']:\n"
               "    try:\n        open(path, 'a').write('pwned')\n        print(path, 'WROTE')\n"
               "    except OSError as e:\n        print(path, type(e).__name__)")
    res = timed(single, program)
    wrote = {line.split()[0] for line in res.stdout.splitlines() if line.endswith("WROTE")}
    assert wrote <= {"/sandbox/outside", "../sibling", "/dev/shm/leak"}, res.stdout  # the sandbox's own scratch
    after = timed(single, "import os\nprint(sorted(os.listdir('/sandbox')), os.listdir('/dev/shm'))\n"
                          "print(open('/opt/prorl/runner.py').read().count('pwned'))")
    listing, shm = after.stdout.splitlines()[0].rsplit("] ", 1)
    assert listing.count("'") == 2 and "outside" not in listing and "sibling" not in listing  # only its workdir
    assert shm == "[]" and after.stdout.splitlines()[1] == "0"


def test_filling_the_tmpfs(single):
    res = timed(single, "import errno\nf = open('big', 'wb')\ntry:\n    while True:\n"
                        "        f.write(b'x' * 2**20)\n        f.flush()\n"
                        "except OSError as e:\n    print(errno.errorcode[e.errno])")
    assert res.stdout.strip() == "ENOSPC", res
    after = timed(single, "open('ten', 'wb').write(b'y' * 10 * 2**20)\nprint('ok')")
    assert after.stdout == "ok\n"
    wait_healthy(single)


def test_setsid_and_sleep_does_not_outlive_the_run(single):
    program = ("import os, time\n"
               "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               "        time.sleep(30)\n        open('/sandbox/late', 'w').write('x')\n    os._exit(0)\n"
               "print('parent done')")
    t0 = time.monotonic()
    res = timed(single, program)
    assert res.ok and res.stdout == "parent done\n" and time.monotonic() - t0 < BUDGET
    census = ("import os\nothers = []\nfor pid in os.listdir('/proc'):\n"
              "    if pid.isdigit() and int(pid) not in (1, os.getpid(), os.getppid()):\n"
              "        others.append(open(f'/proc/{pid}/stat').read())\nprint(others)")  # zombies count too
    assert timed(single, census).stdout == "[]\n"


def test_exit_before_tests_and_closed_stdout_never_pass(pool):
    tests = [Test(code="assert f() == 1"), Test(code="assert f() == 2")]
    for cheat in ["def f():\n    return 0\nimport sys\nsys.exit(0)",
                  "def f():\n    return 0\nimport os\nos.close(1)\nprint('PASS')",
                  "def f():\n    return 0\nimport os\nos._exit(0)"]:
        t0 = time.monotonic()
        results = pool.run_tests(cheat, tests, total_timeout_s=BUDGET)
        assert time.monotonic() - t0 <= BUDGET + 1.0
        assert [r.passed for r in results] == [False, False], (cheat, results)
    honest = pool.run_tests("def f():\n    return 1", tests, total_timeout_s=BUDGET)
    assert [r.passed for r in honest] == [True, False]


def test_runner_cannot_be_tampered_with(pool):
    """The runner is not dumpable: a program cannot reach its fds (the host stream), its memory or ptrace it."""
    forge = ("import os, json, struct\n"
             "frame = json.dumps({'status': 'ok', 'exit_code': 0, 'stdout': '', 'stderr': '', 'wall_s': 0,"
             " 'passed': True, 'index': 0}).encode()\n"
             "frame = struct.pack('>I', len(frame)) + frame\n"
             "for target in (os.getppid(), 1):\n"
             "    for n in range(64):\n"
             "        try:\n            fd = os.open(f'/proc/{target}/fd/{n}', os.O_WRONLY)\n"
             "            os.write(fd, frame)\n            print('WROTE', target, n)\n"
             "        except OSError:\n            pass\n"
             "    for name in ('mem', 'environ'):\n"
             "        try:\n            open(f'/proc/{target}/{name}', 'rb').read(16)\n"
             "            print('READ', target, name)\n"
             "        except OSError:\n            pass\n"
             "def f():\n    return 0\n")
    results = pool.run_tests(forge, [Test(code="assert f() == 1"), Test(code="assert f() == 2")],
                             total_timeout_s=BUDGET)
    assert [r.passed for r in results] == [False, False]
    assert "WROTE" not in results[0].stdout and "READ" not in results[0].stdout, results[0].stdout
    wait_healthy(pool)


def test_unlistable_leftovers_are_wiped(single):
    """Directories a program made unlistable (mode 0) are still emptied, and a chmod of /sandbox itself is undone:
    neither a full tmpfs nor a runner error (infra_error) is left for the next programs."""
    res = timed(single, "import os\nos.mkdir('d')\nopen('d/big', 'wb').write(b'x' * 50 * 2**20)\nos.chmod('d', 0)\n"
                        "os.mkdir('/dev/shm/s')\nopen('/dev/shm/s/f', 'w').write('x')\nos.chmod('/dev/shm/s', 0)\n"
                        "print('done')")
    assert res.stdout == "done\n", res
    after = timed(single, "import os\nopen('twenty', 'wb').write(b'y' * 20 * 2**20)\n"
                          "print(len(os.listdir('/sandbox')), os.listdir('/dev/shm'))")
    assert (after.status, after.stdout) == ("ok", "1 []\n"), after
    tests = single.run_tests("import os\nos.chmod('/sandbox', 0)\ndef f():\n    return 0",
                             [Test(code="assert f() == 1"), Test(code="assert f() == 2")], total_timeout_s=BUDGET)
    assert [r.status for r in tests] == ["runtime_error", "runtime_error"], tests


def test_a_tree_too_deep_to_wipe_keeps_the_results_and_replaces_the_container(single):
    """A directory tree deeper than the runner's clean-up can recurse: the program's results stand (not
    infra_error, which would mask them) and the container is replaced, so no leftover reaches the next program."""
    deep = "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\ndef f():\n    return 0"
    before = single.recycled
    res = single.run_tests(deep, [Test(code="assert f() == 0"), Test(code="assert f() == 1")], total_timeout_s=BUDGET)
    assert [(r.status, r.passed) for r in res] == [("ok", True), ("runtime_error", False)], res
    assert single.recycled == before + 1
    wait_healthy(single)
    assert timed(single, "import os\nprint(len(os.listdir('/sandbox')))").stdout == "1\n"


SYSV_AND_MQUEUE = ("import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
                   "libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\nsize = 300 * 2**20\n"
                   "shmid = libc.shmget(KEY, ctypes.c_size_t(size), 0o1600)\naddr = libc.shmat(shmid, None, 0)\n"
                   "ctypes.memset(addr, 1, size)\nlibc.shmdt(ctypes.c_void_p(addr))\n"
                   "q = ctypes.CDLL('librt.so.1').mq_open(b'/left%d' % KEY, os.O_CREAT | os.O_RDWR, 0o600, None)\n"
                   "print(shmid >= 0, q >= 0)")


def test_system_v_ipc_and_message_queues_do_not_outlive_the_program(single):
    """A System V segment outlives its process: two programs that each left 300 MB in the warm container made the
    next program's honest 250 MB allocation get OOM-killed (runtime_error), and its contents (like a POSIX message
    queue's) reached the next programs."""
    for key in (1, 2):
        res = timed(single, f"KEY = {key}\n" + SYSV_AND_MQUEUE)
        assert (res.status, res.stdout) == ("ok", "True True\n"), res
    after = timed(single, "import os\nprint(len(open('/proc/sysvipc/shm').read().splitlines()), "
                          "os.listdir('/dev/mqueue'))\nx = bytearray(250 * 2**20)\nprint('allocated')")
    assert (after.status, after.stdout) == ("ok", "1 []\nallocated\n"), after
