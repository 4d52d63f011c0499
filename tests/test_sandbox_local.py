"""LocalSandbox's scratch space: a namespaced worker's programs get private /dev/shm (capped, wiped after each
program) and empty read-only /tmp, /var/tmp and /run/lock, as in the container; never the host's. Run as root (the
runner drops to nobody) and, through setpriv, as an unprivileged uid (user namespace, every capability dropped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from prorl.sandbox.local import _NOBODY, LocalSandbox

REPO = Path(__file__).resolve().parents[1]
MARK = f"prorl-host-{os.getpid()}"
PROBE = f"""
import json, os
out = {{"uid": os.getuid(), "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0]}}
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    try:
        with open(os.path.join(d, "left-by-program"), "w") as fh:
            fh.write("x")
        out[d] = "written"
    except OSError as exc:
        out[d] = exc.strerror
out["seen"] = sorted(n for d in ("/tmp", "/dev/shm") for n in os.listdir(d) if n.startswith("prorl-host-"))
try:
    with open("/dev/shm/big", "wb") as fh:
        fh.write(bytes(64 << 20))
    out["shm_64mb"] = "written"
except OSError as exc:
    out["shm_64mb"] = exc.strerror
print(json.dumps(out))
"""
NEXT = "import os\nprint(sorted(os.listdir('/dev/shm')))"


def _host_marks() -> list[Path]:
    marks = [Path("/tmp") / MARK, Path("/dev/shm") / MARK]
    for mark in marks:
        mark.write_text("host data")
        if os.geteuid() == 0:  # the runner's user (nobody) may delete it: wiping the host's /dev/shm would
            os.chown(mark, _NOBODY, _NOBODY)
    return marks


def _check(probe: dict, next_listing: str) -> None:
    assert probe["/tmp"] == probe["/var/tmp"] == "Read-only file system", probe
    assert probe["/dev/shm"] == "written" and probe["shm_64mb"] == "No space left on device", probe
    assert probe["seen"] == [] and probe["caps"] == "0000000000000000", probe
    assert next_listing == "[]\n"  # the private /dev/shm is wiped after each program


def test_local_programs_get_private_scratch_not_the_hosts():
    """Before: the program wrote the host's /tmp, /var/tmp and /dev/shm (uncapped RAM) and saw their files."""
    marks = _host_marks()
    try:
        with LocalSandbox(workers=1, timeout_s=5.0) as sb:
            if not sb.namespaced:
                pytest.skip("unshare is not usable on this machine")
            res = sb.run(PROBE)
            assert res.status == "ok", res
            _check(json.loads(res.stdout), sb.run(NEXT).stdout)
        assert all(m.read_text() == "host data" for m in marks)
        assert not any(Path(d, "left-by-program").exists() for d in ("/tmp", "/var/tmp", "/dev/shm"))
    finally:
        _remove(marks)


def _remove(marks: list[Path]) -> None:
    for path in [*marks, *(Path(d, "left-by-program") for d in ("/tmp", "/var/tmp", "/dev/shm"))]:
        path.unlink(missing_ok=True)


def test_local_programs_get_private_scratch_as_an_unprivileged_user():
    """The user-namespace path (the caller is not root): before, the program also ran with every capability of its
    user namespace (CapEff 1ffffffffff), so it could unmount the private tmpfs or mount new, uncapped ones."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(python):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to start LocalSandbox as uid 1001")
    code = tempfile.mkdtemp(prefix="prorl-test-code-")  # under /tmp: pytest's tmp_path is closed to other uids
    marks = _host_marks()
    try:
        shutil.copytree(REPO / "prorl", Path(code) / "prorl")
        subprocess.run(["chmod", "-R", "a+rX", code], check=True)
        os.chmod(code, 0o755)
        driver = ("import json, sys\nfrom prorl.sandbox.local import LocalSandbox\n"
                  "with LocalSandbox(workers=1, timeout_s=5.0) as sb:\n"
                  f"    print(json.dumps([sb.namespaced, sb.run({PROBE!r}).stdout, sb.run({NEXT!r}).stdout]))")
        out = subprocess.run([setpriv, "--reuid", "1001", "--regid", "1001", "--clear-groups", python, "-c", driver],
                             capture_output=True, text=True, timeout=120, cwd=code,
                             env={"PATH": os.environ["PATH"], "PYTHONPATH": code, "HOME": code})
        assert out.returncode == 0, out.stderr
        namespaced, probe, next_listing = json.loads(out.stdout.splitlines()[-1])
        if not namespaced:
            pytest.skip(f"no user namespaces for uid 1001 here: {out.stderr[-300:]}")
        _check(json.loads(probe), next_listing)
        assert json.loads(probe)["uid"] == 0  # root of its user namespace, without capabilities
        assert all(m.read_text() == "host data" for m in marks)
    finally:
        shutil.rmtree(code, ignore_errors=True)
        _remove(marks)
