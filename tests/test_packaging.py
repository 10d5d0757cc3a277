"""A non-editable install (what systemd/install.sh does) has its default config and runs.

The wheel is built from this tree and installed with ``--no-deps`` into a fresh
venv whose dependencies come from the test venv's site-packages through a
``.pth`` file (a path line, so that venv's own ``.pth`` files, including the
editable install of this project, are not processed).  Commands run from a
directory outside the repository with no PYTHONPATH, so only the wheel can
answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from brain.config import CONFIG_DIR, DEFAULT_CONFIG, SYSTEM_CONFIG, default_config_path

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


# ----------------------------------------------------------------------------- lookup (fast)


def test_default_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUON_CONFIG", str(tmp_path / "mine.yaml"))
    assert default_config_path() == tmp_path / "mine.yaml"
    monkeypatch.delenv("CONTINUON_CONFIG")
    monkeypatch.setattr("brain.paths.SYSTEM_CONFIG", tmp_path / "robot.yaml")
    assert default_config_path() == DEFAULT_CONFIG
    (tmp_path / "robot.yaml").write_text("robot: {id: x}\n")
    assert default_config_path() == tmp_path / "robot.yaml"


def test_packaged_configs_are_the_top_level_configs() -> None:
    """One copy: brain/configs is the top-level configs/ directory, not a duplicate."""
    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {"sim-donkey.yaml", "pi5-donkey.yaml", "pi5-realsense-arm.yaml"} <= shipped


def test_config_check_without_files_checks_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from brain.cli import main

    monkeypatch.delenv("CONTINUON_CONFIG", raising=False)
    monkeypatch.setattr("brain.paths.SYSTEM_CONFIG", tmp_path / "absent.yaml")
    assert main(["config", "check"]) == 0
    assert f"{DEFAULT_CONFIG}: OK (robot sim-donkey-01" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: {id: x, kind: car}\nhardware: {camera: {fps: -1}}\n")
    monkeypatch.setenv("CONTINUON_CONFIG", str(bad))
    assert main(["config", "check"]) == 1
    assert "fps" in capsys.readouterr().err


def _make_n_hw_check(*args: str) -> str:
    r = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.installed-dev", "hw-check", *args],
        cwd=ROOT,
        # run from inside `make test`: the outer make's level and flags must not leak in
        env={k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_hw_check_uses_the_installed_command(tmp_path: Path) -> None:
    installed = tmp_path / "continuon"
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    out = _make_n_hw_check(f"INSTALLED_CONTINUON={installed}")
    # the robot's own config (no --config: the lookup finds /etc/continuon/robot.yaml)
    assert out.strip() == f"{installed} hw-check"
    out = _make_n_hw_check(f"INSTALLED_CONTINUON={installed}", "CONFIG=x.yaml", "ARGS=--move")
    assert out.strip() == f"{installed} hw-check --config x.yaml --move"
    out = _make_n_hw_check(f"INSTALLED_CONTINUON={tmp_path / 'absent'}")
    assert ".venv/bin/continuon hw-check --config configs/sim-donkey.yaml" in out


# ----------------------------------------------------------------------------- the wheel (slow)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding this project's wheel, non-editable; returns its bin/ directory."""
    # Built without isolation (no network in tests): the environment's own setuptools must
    # meet pyproject's build requirement (the SPDX `license` string needs setuptools 77).
    # Debian Bookworm's is 66, so under `make pi-check` this builds nothing and says so.
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip(f"setuptools {version('setuptools')} here cannot build this project (>= 77)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,  # brain/configs stays the link the build follows
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
        ),
    )
    dist = tmp / "dist"
    run = [sys.executable, "-m", "pip"]
    quiet = {"capture_output": True, "text": True, "timeout": 240}
    r = subprocess.run(
        [*run, "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(dist)],
        **quiet,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = dist.glob("continuon_brain-*.whl")
    venv = tmp / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    install = [*run, "--python", str(py), "install", "--no-deps", "-q", str(wheel)]
    r = subprocess.run(install, **quiet)
    assert r.returncode == 0, r.stderr
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            **quiet,
        ).stdout.strip()
    )
    (site / "_continuon_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONTINUON_CONFIG")}
    env["STATE_DIRECTORY"] = str(tmp / "state")
    return env


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(SYSTEM_CONFIG.exists(), reason="this machine has an installed robot config")
def test_wheel_install_has_its_default_config(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    kw = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 120}
    where = subprocess.run(
        [str(installed / "python"), "-c", "import brain.config as c; print(c.__file__)"], **kw
    )
    assert where.stdout.strip().startswith(str(installed.parent)), where  # the wheel, not the tree

    r = subprocess.run([str(installed / "continuon"), "config", "check"], **kw)
    assert r.returncode == 0, r.stderr
    assert "sim-donkey.yaml: OK (robot sim-donkey-01" in r.stdout
    assert str(installed.parent) in r.stdout  # the packaged file

    r = subprocess.run([str(installed / "continuon"), "hw-check", "--sim"], **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"config: {installed.parent}" in r.stdout
    assert "FAIL" not in r.stdout.replace("0 FAIL", "")
    assert r.stdout.strip().splitlines()[-1].startswith("hw-check: ")


@pytest.mark.integration
@pytest.mark.slow
def test_wheel_install_runs_the_daemon(installed: Path, tmp_path: Path) -> None:
    """`continuon run` from the wheel: READY, then SIGTERM → exit 0 (loopback-only config)."""
    raw = yaml.safe_load((ROOT / "configs" / "sim-donkey.yaml").read_text())
    raw["hardware"]["camera"].update(width=160, height=120)
    raw["logging"] = {"level": "WARNING", "format": "text"}
    raw["api"] = {"host": "127.0.0.1", "port": 0}
    raw["discovery"] = {"enabled": False}
    cfg = tmp_path / "robot.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    env = _env(tmp_path) | {"NOTIFY_SOCKET": str(notify), "CONTINUON_CONFIG": str(cfg)}
    proc = subprocess.Popen(
        [str(installed / "continuon"), "run"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        got = ""
        while "READY=1" not in got:
            got += sock.recv(4096).decode()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
