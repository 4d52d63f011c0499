"""The sandbox image must run this prorl's runner: the runner reports a digest of the files it started from and
DockerSandbox refuses an image whose digest is not the host's (an image built by an older prorl, or before runners
reported one), naming the command that rebuilds it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prorl.sandbox.container import IMAGE, DockerSandboxConfig, default_image
from prorl.sandbox.docker import DockerSandbox, ImageOutdated, engine_available
from prorl.sandbox.runner import RUNNER_FILES, encode_frame, read_frame, runner_digest

REPO = Path(__file__).resolve().parents[1]
SANDBOX_DIR = REPO / "prorl" / "sandbox"
ENGINE_OK, ENGINE_WHY = engine_available()
# The ready frame of a runner from before this check (prorl <= 5a8908f): the same, without runner_digest.
OLD_READY = ('send({"ready": True, "python": sys.version.split()[0], "own_pidns": server.own_pidns, '
             '"sealed": sealed})')


def runner_copy(folder: Path, changes: dict[str, tuple[str, str]] | None = None) -> Path:
    """This prorl's runner files in `folder`, read-only as in the image, with `changes` {file: (old, new)} made."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_FILES:
        text = (SANDBOX_DIR / name).read_text()
        if name in (changes or {}):
            old, new = changes[name]
            assert old in text, f"{name} no longer contains {old!r}: update this test"
            text = text.replace(old, new, 1)
        (folder / name).write_text(text)
        (folder / name).chmod(0o444)
    return folder


def without_digest(runner: str) -> tuple[str, str]:
    """The change to runner.py that makes its ready frame the old one (no runner_digest)."""
    start = runner.index("    try:\n        digest = runner_digest()")
    end = runner.index('"runner_digest": digest})') + len('"runner_digest": digest})')
    return runner[start:end], "    " + OLD_READY


def ready_frame(code_dir: Path, root: Path) -> dict:
    """The first frame of `code_dir`/runner.py serving in `root`, as LocalSandbox starts it (without namespaces)."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(code_dir / "runner.py"), "serve", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return read_frame(proc.stdout.fileno())
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_one_list_of_runner_files_for_the_image_build_and_local_sandbox():
    from prorl.sandbox import local

    assert local.RUNNER_FILES is RUNNER_FILES
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copy = re.search(r"^COPY (.+) /opt/prorl/$", dockerfile, re.M).group(1).split()
    assert tuple(copy) == RUNNER_FILES, "docker/Dockerfile must COPY exactly runner.RUNNER_FILES"
    chmod = dockerfile.split("RUN chmod", 1)[1].split("&&")[0]
    assert tuple(re.findall(r"/opt/prorl/(\w+\.py)", chmod)) == RUNNER_FILES
    # docker/build.sh takes the file list and the digest from the runner itself, with the interpreter it uses
    script = SANDBOX_DIR / "runner.py"
    files = subprocess.run(["python3", str(script), "files"], capture_output=True, text=True, check=True).stdout
    digest = subprocess.run(["python3", str(script), "digest"], capture_output=True, text=True, check=True).stdout
    assert (tuple(files.split()), digest.strip()) == (RUNNER_FILES, runner_digest())
    build = (REPO / "docker" / "build.sh").read_text()
    assert "runner.py files" in build and "runner.py digest" in build
    assert not [name for name in RUNNER_FILES[1:] if name in build], "build.sh names runner files of its own"


def test_the_runner_reports_the_digest_of_the_files_it_started_from(tmp_path):
    (tmp_path / "root").mkdir()
    same = ready_frame(runner_copy(tmp_path / "same"), tmp_path / "root")
    assert same["ready"] and same["runner_digest"] == runner_digest()
    other = ready_frame(runner_copy(tmp_path / "other", {"guard.py": ('"""', '"""guard changed. ')}),
                        tmp_path / "root")
    assert other["ready"] and other["runner_digest"] not in (None, runner_digest())
    assert other["runner_digest"] == runner_digest(str(tmp_path / "other"))


def test_the_default_image_can_be_named_in_the_environment(monkeypatch):
    monkeypatch.delenv("PRORL_SANDBOX_IMAGE", raising=False)
    assert DockerSandboxConfig().image == IMAGE == "prorl-sandbox:py3"
    monkeypatch.setenv("PRORL_SANDBOX_IMAGE", "prorl-sandbox:mine")
    assert DockerSandboxConfig().image == default_image() == "prorl-sandbox:mine"


# -- against the engine: images made from the image under test with other runner files in /opt/prorl -----------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """{"current", "changed", "old"}: tags of images whose /opt/prorl holds this prorl's runner files, the same
    with guard.py changed (an image built by another prorl), and runner.py without runner_digest (an image built
    before the check). Removed afterwards."""
    if not ENGINE_OK:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have a Docker engine with the sandbox image (run `make sandbox`): {ENGINE_WHY}")
        pytest.skip(f"no Docker sandbox on this machine: {ENGINE_WHY} (run `make sandbox` as root)")
    import docker

    client, tags = docker.from_env(timeout=120), {}
    runner = (SANDBOX_DIR / "runner.py").read_text()
    variants = {"current": {}, "changed": {"guard.py": ('"""', '"""guard changed. ')},
                "old": {"runner.py": without_digest(runner)}}
    try:
        for kind, changes in variants.items():
            context = runner_copy(tmp_path_factory.mktemp(kind), changes)
            (context / "Dockerfile").write_text(
                f"FROM {default_image()}\nUSER 0\nCOPY {' '.join(RUNNER_FILES)} /opt/prorl/\nUSER 1000:1000\n")
            tags[kind] = f"prorl-sandbox-test:{uuid.uuid4().hex[:8]}-{kind}"
            client.images.build(path=str(context), tag=tags[kind], rm=True, forcerm=True)
        yield tags
    finally:
        for tag in tags.values():
            try:
                client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
        client.close()


def containers_of(image: str) -> list:
    import docker

    client = docker.from_env()
    try:
        return client.containers.list(all=True, filters={"ancestor": image})
    finally:
        client.close()


def test_an_image_with_this_prorls_runner_files_starts(images):
    with DockerSandbox(image=images["current"], pool_size=1) as sb:
        assert sb.run("print(6 * 7)").stdout == "42\n"


def test_an_image_built_from_other_runner_files_is_refused_with_the_rebuild_command(images):
    tag = images["changed"]
    with pytest.raises(ImageOutdated) as info:
        DockerSandbox(image=tag, pool_size=2)
    message = str(info.value)
    assert f"the sandbox image {tag!r} is out of date" in message
    theirs = re.search(r"Its runner was built from runner files with digest (\w+), but", message).group(1)
    assert theirs != runner_digest() and f"have digest {runner_digest()}" in message
    assert f"`IMAGE={tag} bash docker/build.sh`" in message
    assert containers_of(tag) == [], "a refused sandbox leaves no container behind"


def test_an_image_from_before_runner_digests_gets_the_same_message_not_a_crash(images):
    tag = images["old"]
    with pytest.raises(ImageOutdated, match=r"reports no runner digest \(built before prorl checked it\)") as info:
        DockerSandbox(image=tag, pool_size=1)
    assert f"`IMAGE={tag} bash docker/build.sh`" in str(info.value)
    assert containers_of(tag) == []


def test_an_image_replaced_under_a_running_sandbox_answers_infra_error_naming_it(images):
    import docker

    tag = f"prorl-sandbox-test:{uuid.uuid4().hex[:8]}-swapped"
    client = docker.from_env()
    try:
        client.images.get(images["current"]).tag(tag)
        with DockerSandbox(image=tag, pool_size=1, recycle_after=1) as sb:
            assert sb.run("print(1)").status == "ok"  # the slot is recycled after this program
            client.images.get(images["changed"]).tag(tag)  # a rebuild by another prorl, under this process
            result = sb.run("print(2)")
        assert result.status == "infra_error"
        assert f"the sandbox image {tag!r} is out of date" in result.error
        assert f"`IMAGE={tag} bash docker/build.sh`" in result.error
    finally:
        client.images.remove(tag, force=True)
        client.close()


def test_make_sandbox_does_not_fall_back_to_local_on_an_outdated_image(images, monkeypatch):
    """`auto` uses LocalSandbox only where no engine or image answers: an outdated image is an error to fix."""
    from prorl.sandbox import make_sandbox

    monkeypatch.setenv("PRORL_SANDBOX_IMAGE", images["old"])
    with pytest.raises(ImageOutdated, match=re.escape(f"rebuild it from this prorl's checkout with "
                                                      f"`IMAGE={images['old']} bash docker/build.sh`")):
        make_sandbox("auto", pool_size=1)
