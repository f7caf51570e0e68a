"""Build the image with podman and run the simulator and the gateway from it.

Opt-in (``RUN_IMAGE_TESTS=1``, marker ``image``): it needs root, Debian's podman and
debootstrap, and a few minutes. No registry image can be pulled here, so the base is a
Debian bookworm root made with debootstrap (or ``IMAGE_TEST_BASE``, an image already
present). The host's CA bundle is copied into that base so that pip inside the build
trusts what the host trusts.

podman cannot start containers on a host with hybrid cgroups (crun refuses), so the
processes run from the built image's own filesystem, mounted read-only, with
``chroot --userspec`` as the image's user and tmpfs on ``/tmp`` and ``/var/lib/gantry``:
the same files, user, environment and read-only root a container would have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gantry.netutil import free_port
from tests.helpers import ROOT, run_proc

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        os.environ.get("RUN_IMAGE_TESTS") != "1", reason="opt-in: RUN_IMAGE_TESTS=1"
    ),
    pytest.mark.timeout(1800),
]
BASE = os.environ.get("IMAGE_TEST_BASE", "localhost/gantry-base:bookworm")
IMAGE = "localhost/gantry:test"


def sh(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, capture_output=True, text=True, timeout=1500, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r  # type: ignore[no-any-return]


def ensure_base(tmp: Path) -> None:
    if subprocess.run(["podman", "image", "exists", BASE]).returncode == 0:
        return
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip("no base image and no debootstrap as root to make one")
    root = tmp / "rootfs"
    sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
       "bookworm", str(root))  # fmt: skip
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/")
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    sh("podman", "import", "-", BASE, stdin=tar.stdout)
    tar.wait()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object]]]:
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (apt-get install podman)")
    tmp = tmp_path_factory.mktemp("image")
    ensure_base(tmp)
    sh("podman", "build", "--format", "docker", "--isolation", "chroot", "--network", "host",
       "--build-arg", f"BASE_IMAGE={BASE}", "-t", IMAGE, str(ROOT))  # fmt: skip
    inspected = json.loads(sh("podman", "image", "inspect", IMAGE).stdout)[0]
    config = {**inspected["Config"], "Healthcheck": inspected["Healthcheck"]}
    mnt = Path(sh("podman", "image", "mount", IMAGE).stdout.strip())
    mounted = []
    try:
        for d in ("tmp", "var/lib/gantry"):
            sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(mnt / d))
            mounted.append(mnt / d)
        yield mnt, config
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)])
        subprocess.run(["podman", "image", "unmount", IMAGE])


def in_image(mnt: Path, config: dict[str, object], *args: str) -> list[str]:
    env = [e for e in config["Env"]]  # type: ignore[attr-defined]
    user = str(config["User"])
    return ["chroot", f"--userspec={user}", str(mnt), "/usr/bin/env", "-i", *env, *args]


def test_image_metadata(image: tuple[Path, dict[str, object]]) -> None:
    mnt, config = image
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["gantry"]
    assert "HEALTHCHECK_URL" in " ".join(config["Healthcheck"]["Test"])  # type: ignore[index]
    with pytest.raises(OSError):
        (mnt / "opt/gantry/x").write_text("")  # the root filesystem is read-only


def test_simulator_and_gateway_run_from_the_image(
    image: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    mnt, config = image
    sp, gp = free_port(), free_port()
    sim = in_image(mnt, config, "gantry", "sim", "--host", "127.0.0.1", "--port", str(sp),
                   "--profile", "instant", "--served-model-name", "m")  # fmt: skip
    with run_proc(sim, sp, tmp_path):
        health = config["Healthcheck"]["Test"][1:]  # type: ignore[index]
        env_health = f"HEALTHCHECK_URL=http://127.0.0.1:{sp}/health"
        probe = in_image(mnt, config, env_health, *health)
        assert subprocess.run(probe, timeout=30).returncode == 0
        serve = in_image(mnt, config, "GANTRY_SECURITY__AUTH=off", "gantry", "serve",
                         "--port", str(gp), "--engine", f"http://127.0.0.1:{sp}")  # fmt: skip
        with run_proc(serve, gp, tmp_path, health="/readyz") as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
