"""The systemd unit and its installer.

Three kinds of checks:

* ``systemd-analyze verify`` on the real unit file.  ``verify`` insists that every
  ``Exec*=`` binary exists and is executable, and /opt/continuon/venv does not exist
  on a development machine.  So the test builds a throw-away root directory holding
  (a) the unit file, copied byte for byte, at /etc/systemd/system, (b) a copy of this
  machine's own unit directory (sysinit.target, multi-user.target, ... that our unit
  depends on), and (c) an executable stub at each absolute path the unit's ``Exec*=``
  lines name.  Then ``systemd-analyze verify --root=ROOT`` checks it.  Nothing in the
  unit is rewritten.  Two control tests prove that this set-up really looks at the
  root (a missing stub fails) and that our "no warnings" assertion can fail (an
  unknown key is reported).
  ``verify`` does not resolve ``User=``/``Group=``/``SupplementaryGroups=`` (the user
  ``continuon`` does not exist here, and verify says nothing about it); the tests below
  check those names against what install.sh creates instead.
* The safety-critical settings, read with a small parser that keeps repeated keys.
* ``systemd/install.sh --dry-run``: the plan of commands, and that a dry run changes
  nothing; plus a real run into a ``--prefix`` with the system-changing tools
  replaced by stubs that only record their arguments.

Needs ``systemd-analyze`` (Debian package ``systemd``; the test skips without it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
UNIT_NAME = "continuon-brain.service"
UNIT = REPO / "systemd" / UNIT_NAME
INSTALL = REPO / "systemd" / "install.sh"
CONFIG_PATH = "/etc/continuon/robot.yaml"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)

# Where this machine keeps its packaged units (merged /usr on Debian 12: /lib -> usr/lib).
HOST_UNIT_DIRS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


# ----------------------------------------------------------------------------- parsing


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value, in order (systemd allows repeated keys).

    Handles comments (# and ;) and backslash line continuations.  An empty
    assignment (``Key=``) is kept as an empty string: in systemd it resets the list.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is not set"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> list[str]:
    """A list setting, with systemd's rule that an empty assignment resets it."""
    result: list[str] = []
    for value in unit.get(section, {}).get(key, []):
        if value == "":
            result = []
        else:
            result.extend(value.split())
    return result


def seconds(span: str) -> float:
    """A systemd time span as seconds (enough of the syntax for this unit)."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "ms": 0.001, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    for number, unit_name in parts:
        total += float(number) * units[unit_name]
    return total


def exec_binaries(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    """The absolute program path of every Exec*= line, prefixes like '-' or '@' removed."""
    paths = []
    for key, values in unit["Service"].items():
        if key.startswith("Exec"):
            for value in values:
                program = shlex.split(value)[0].lstrip("-@:+!")
                assert program.startswith("/"), f"{key}={value}: use an absolute path"
                paths.append(program)
    return paths


# ----------------------------------------------------------------------------- verify


def make_verify_root(root: Path, unit_text: bytes, stubs: list[str]) -> Path:
    """A file-system root in which `systemd-analyze verify --root` can load our unit."""
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / UNIT_NAME).write_bytes(unit_text)
    host_units = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("no packaged systemd units on this machine (sysinit.target not found)")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    for program in stubs:
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", UNIT_NAME],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def lines_about_unit(proc: subprocess.CompletedProcess[str]) -> list[str]:
    out = proc.stdout + proc.stderr
    return [line for line in out.splitlines() if UNIT_NAME in line]


@needs_systemd_analyze
def test_systemd_analyze_verify_passes_without_warnings(tmp_path: Path, unit) -> None:
    text = UNIT.read_bytes()
    root = make_verify_root(tmp_path / "root", text, exec_binaries(unit))
    # The file verified is the repository's file, unchanged.
    assert (root / "etc/systemd/system" / UNIT_NAME).read_bytes() == text
    proc = verify(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines_about_unit(proc) == [], proc.stdout + proc.stderr


@needs_systemd_analyze
def test_verify_control_missing_executable_fails(tmp_path: Path) -> None:
    """Without the stubs verify fails: it really checks the paths inside ROOT."""
    root = make_verify_root(tmp_path / "root", UNIT.read_bytes(), stubs=[])
    proc = verify(root)
    assert proc.returncode != 0
    assert "/opt/continuon/venv/bin/continuon" in proc.stdout + proc.stderr


@needs_systemd_analyze
def test_verify_control_unknown_key_is_reported(tmp_path: Path, unit) -> None:
    """A typo in the unit shows up as a line naming the unit (rc stays 0, hence that check)."""
    broken = UNIT.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=5\n", 1)
    root = make_verify_root(tmp_path / "root", broken.encode(), exec_binaries(unit))
    proc = verify(root)
    assert any("WatchdogSecs" in line for line in lines_about_unit(proc)), proc.stderr


@needs_systemd_analyze
def test_security_exposure_stays_low() -> None:
    """`systemd-analyze security --offline` scores the hardening; 1.6 when written.

    --threshold is on a 0-100 scale (the printed score times ten); fail above 2.5.
    """
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=25", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) <= 2.5


# ----------------------------------------------------------------------------- settings


def test_notify_and_watchdog(unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    watchdog = seconds(one(unit, "Service", "WatchdogSec"))
    assert 0 < watchdog <= 10, "the watchdog is the last line of defence: keep it short"
    assert seconds(one(unit, "Service", "TimeoutStartSec")) > 0
    assert seconds(one(unit, "Service", "TimeoutStopSec")) == 10


def test_restart_policy(unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) == 2
    # The start limit lives in [Unit] (in [Service] it is ignored by modern systemd).
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert "StartLimitIntervalSec" not in unit["Service"]
    assert "StartLimitBurst" not in unit["Service"]


def test_exec_lines_run_and_safe_stop_with_the_same_config(unit) -> None:
    start = shlex.split(one(unit, "Service", "ExecStart"))
    assert start == ["/opt/continuon/venv/bin/continuon", "run", "--config", CONFIG_PATH]
    post = one(unit, "Service", "ExecStopPost")
    # No "-" prefix: a failing safe-stop must show as a failure, not be ignored.
    assert not post.startswith(("-", "@", "+", "!", ":"))
    assert shlex.split(post) == [
        "/opt/continuon/venv/bin/continuon",
        "safe-stop",
        "--config",
        CONFIG_PATH,
    ]


def test_runs_as_unprivileged_user_with_exactly_the_device_groups(unit) -> None:
    user = one(unit, "Service", "User")
    group = one(unit, "Service", "Group")
    assert user not in {"root", "0"} and group not in {"root", "0"}
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user), "must be a plain system user name"
    assert "DynamicUser" not in unit["Service"]
    assert set(words(unit, "Service", "SupplementaryGroups")) == {"gpio", "i2c", "video"}
    assert words(unit, "Service", "CapabilityBoundingSet") == []
    assert words(unit, "Service", "AmbientCapabilities") == []


def test_hardening(unit) -> None:
    svc = "Service"
    assert one(unit, svc, "NoNewPrivileges") == "yes"
    assert one(unit, svc, "ProtectSystem") == "strict"
    assert one(unit, svc, "ProtectHome") == "yes"
    assert one(unit, svc, "PrivateTmp") == "yes"
    for key in (
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictSUIDSGID",
        "RestrictNamespaces",
        "LockPersonality",
    ):
        assert one(unit, svc, key) == "yes", key
    assert one(unit, svc, "SystemCallArchitectures") == "native"
    assert one(unit, svc, "UMask") == "0027"
    # PrivateDevices=yes would hide /dev/i2c-*, the camera and USB.
    assert unit[svc].get("PrivateDevices", ["no"])[-1] in {"no", "false"}
    # The LAN API and MQTT need the network.
    assert "IPAddressDeny" not in unit[svc]
    assert "PrivateNetwork" not in unit[svc]


def test_state_config_and_runtime_directories(unit) -> None:
    assert one(unit, "Service", "StateDirectory") == "continuon"
    assert one(unit, "Service", "ConfigurationDirectory") == "continuon"
    assert one(unit, "Service", "RuntimeDirectory") == "continuon"
    assert CONFIG_PATH.startswith("/etc/" + one(unit, "Service", "ConfigurationDirectory") + "/")


def test_device_allow_list(unit) -> None:
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = {}
    for value in unit["Service"].get("DeviceAllow", []):
        device, _, access = value.partition(" ")
        allowed[device] = access.strip()
    for device in (
        "char-i2c",
        "char-video4linux",
        "char-media",
        "char-dma_heap",
        "char-usb_device",
    ):
        assert allowed.get(device) == "rw", f"DeviceAllow={device} rw is missing"


def test_boots_without_network_or_time_sync(unit) -> None:
    """Ordering only: no hard dependency that could keep an offline robot from starting."""
    for key in ("Requires", "Requisite", "BindsTo", "Wants", "PartOf"):
        targets = words(unit, "Unit", key)
        assert not any(t.startswith(("network", "time-sync")) for t in targets), (key, targets)
    # systemd-time-wait-sync.service (if enabled) waits forever without NTP.
    assert "time-sync.target" not in words(unit, "Unit", "After")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_environment(unit) -> None:
    env = dict(v.split("=", 1) for value in unit["Service"]["Environment"] for v in value.split())
    assert env.get("PYTHONUNBUFFERED") == "1"


# ----------------------------------------------------------------------------- install.sh


def run_install(*args: str, env: dict[str, str] | None = None, user: int | None = None):
    cmd = [str(INSTALL), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def plan(proc: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The commands of a dry run: lines '+ cmd args...', shell-quoted."""
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def find(commands: list[list[str]], program: str) -> list[list[str]]:
    return [c for c in commands if Path(c[0]).name == program or c[0] == program]


def index_of(commands: list[list[str]], predicate) -> int:
    for i, command in enumerate(commands):
        if predicate(command):
            return i
    raise AssertionError(f"no such command in plan: {commands}")


def test_dry_run_plan_into_an_empty_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "target"  # does not exist: a dry run must not create it
    proc = run_install("--dry-run", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    commands = plan(proc)
    assert not prefix.exists(), "a dry run changed the file system"

    # Groups (none exist in an empty root) and the system user.
    created = {c[-1] for c in find(commands, "groupadd")}
    assert created == {"gpio", "i2c", "video"}
    for c in find(commands, "groupadd"):
        assert "--system" in c and c[c.index("--root") + 1] == str(prefix)
    (useradd,) = find(commands, "useradd")
    assert useradd[-1] == "continuon"
    assert "--system" in useradd
    assert useradd[useradd.index("--root") + 1] == str(prefix)
    assert useradd[useradd.index("--home-dir") + 1] == "/var/lib/continuon"
    assert useradd[useradd.index("--shell") + 1] in {"/usr/sbin/nologin", "/sbin/nologin"}
    assert set(useradd[useradd.index("--groups") + 1].split(",")) == {"gpio", "i2c", "video"}

    # The venv sees Debian's picamera2, and gets the project with the pi extra.
    venv = f"{prefix}/opt/continuon/venv"
    i_venv = index_of(commands, lambda c: c[1:3] == ["-m", "venv"])
    assert commands[i_venv][3:] == ["--system-site-packages", venv]
    i_pip = index_of(commands, lambda c: c[0] == f"{venv}/bin/python" and "pip" in c)
    assert commands[i_pip][-1] == f"{REPO}[pi]"
    assert "install" in commands[i_pip]

    # The default config goes to /etc/continuon/robot.yaml, readable by the group only.
    (config_install,) = [c for c in find(commands, "install") if c[-1].endswith("robot.yaml")]
    assert config_install[-2:] == [str(REPO / "configs/pi5-donkey.yaml"), f"{prefix}{CONFIG_PATH}"]
    assert config_install[config_install.index("-m") + 1] == "0640"

    # The unit is installed, verified, then enabled; the user exists before any of it.
    unit_dst = f"{prefix}/etc/systemd/system/{UNIT_NAME}"
    i_unit = index_of(commands, lambda c: c[0] == "install" and c[-1] == unit_dst)
    assert commands[i_unit][-2] == str(UNIT)
    i_verify = index_of(commands, lambda c: c[:2] == ["systemd-analyze", "verify"])
    assert f"--root={prefix}" in commands[i_verify]
    i_enable = index_of(commands, lambda c: c[0] == "systemctl" and "enable" in c)
    assert commands[i_enable] == ["systemctl", f"--root={prefix}", "enable", UNIT_NAME]
    i_user = index_of(commands, lambda c: c[0] == "useradd")
    assert i_user < i_venv < i_pip < i_verify < i_enable
    assert i_unit < i_verify
    # No running service manager is touched for a prefix.
    assert not any(c[:2] == ["systemctl", "daemon-reload"] for c in commands)


def test_dry_run_on_the_live_system_reloads_and_enables() -> None:
    proc = run_install("--dry-run")
    assert proc.returncode == 0, proc.stderr
    commands = plan(proc)
    unit_dst = f"/etc/systemd/system/{UNIT_NAME}"
    assert ["systemd-analyze", "verify", unit_dst] in commands
    i_reload = commands.index(["systemctl", "daemon-reload"])
    i_enable = commands.index(["systemctl", "enable", UNIT_NAME])
    assert i_reload < i_enable
    if Path("/opt/continuon/venv/bin/python").exists():  # installed here (make pi-check's root)
        assert "venv exists; upgrading the project in it" in proc.stdout
    else:
        venv_cmd = next(c for c in commands if c[1:3] == ["-m", "venv"])
        assert venv_cmd[3:] == ["--system-site-packages", "/opt/continuon/venv"]
    assert "journalctl -u continuon-brain -f" in proc.stdout


def test_no_start_leaves_the_service_manager_alone() -> None:
    """--no-start (chroots, image builds, make pi-check): the unit is installed and
    verified, but nothing is reloaded or enabled, so nothing starts now or at boot."""
    proc = run_install("--dry-run", "--no-start")
    assert proc.returncode == 0, proc.stderr
    commands = plan(proc)
    assert ["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT_NAME}"] in commands
    assert not find(commands, "systemctl"), commands
    assert "not enabled" in proc.stdout


def test_extras_choose_what_pip_installs() -> None:
    proc = run_install("--dry-run", "--extras", "pi,train")
    assert proc.returncode == 0, proc.stderr
    (pip,) = [c for c in plan(proc) if c[0].endswith("/bin/python") and "pip" in c]
    assert pip[-1] == f"{REPO}[pi,train]"
    # An extra is a name, never a path, a URL or a pip option.
    for bad in ("../x", "pi --index-url=http://x", "pi]", "", "-e"):
        proc = run_install("--dry-run", "--extras", bad)
        assert proc.returncode != 0, bad
        assert "--extras" in proc.stderr
        assert not plan(proc)


def test_existing_config_is_never_overwritten(tmp_path: Path) -> None:
    prefix = tmp_path / "target"
    config = prefix / CONFIG_PATH.lstrip("/")
    config.parent.mkdir(parents=True)
    config.write_text("# calibrated by the builder\n")
    proc = run_install("--dry-run", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    touching = [c for c in plan(proc) if any(str(config) == arg for arg in c)]
    assert touching == [], touching
    assert f"diff -u {config}" in proc.stdout


def test_chosen_config_and_existing_user(tmp_path: Path) -> None:
    prefix = tmp_path / "target"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/group").write_text("gpio:x:997:\ni2c:x:998:\nvideo:x:44:\ncontinuon:x:990:\n")
    (prefix / "etc/passwd").write_text(
        "continuon:x:990:990::/var/lib/continuon:/usr/sbin/nologin\n"
    )
    chosen = REPO / "configs" / "pi5-realsense-arm.yaml"
    proc = run_install("--dry-run", "--prefix", str(prefix), str(chosen))
    assert proc.returncode == 0, proc.stderr
    commands = plan(proc)
    assert find(commands, "groupadd") == [] and find(commands, "useradd") == []
    (usermod,) = find(commands, "usermod")
    assert "--append" in usermod and usermod[-1] == "continuon"
    (config_install,) = [c for c in find(commands, "install") if c[-1].endswith("robot.yaml")]
    assert config_install[-2] == str(chosen)
    # In a prefix the group is given by number, read from the prefix's /etc/group.
    (chown,) = find(commands, "chown")
    assert chown[1] == "root:990"


def test_refuses_to_run_as_non_root_without_dry_run() -> None:
    user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        user = 65534  # nobody
    proc = run_install(user=user)
    assert proc.returncode != 0
    assert "must run as root" in proc.stderr
    assert "--dry-run" in proc.stderr
    # ... while a dry run is fine for anyone.
    assert run_install("--dry-run", user=user).returncode == 0


def test_rejects_unknown_options_and_missing_config(tmp_path: Path) -> None:
    proc = run_install("--dry-run", "--no-such-option")
    assert proc.returncode != 0 and "unknown option" in proc.stderr
    proc = run_install("--dry-run", str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0 and "config not found" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh refuses to run for real as non-root")
def test_real_run_into_prefix_with_recording_stubs(tmp_path: Path) -> None:
    """Run without --dry-run into a prefix; the tools that would change users, pip or the
    service manager are stubs on $PATH that record their arguments, so the machine is
    untouched.  Real `install` copies the files, which is what this test checks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = f'#!/bin/sh\nprintf "%s\\n" "$(basename "$0") $*" >> "{log}"\n'
    for name in ("groupadd", "useradd", "usermod", "chown", "systemctl", "systemd-analyze"):
        path = bin_dir / name
        path.write_text(stub + "exit 0\n")
        path.chmod(0o755)
    # python3 stub: `-m venv ... DIR` creates DIR/bin/python (this same stub).
    python = bin_dir / "python3"
    python.write_text(
        stub + 'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  for d; do :; done; mkdir -p "$d/bin"; cp "$0" "$d/bin/python"\n'
        "fi\nexit 0\n"
    )
    python.chmod(0o755)
    prefix = tmp_path / "target"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python)}

    proc = run_install("--prefix", str(prefix), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed_unit = prefix / "etc/systemd/system" / UNIT_NAME
    assert installed_unit.read_bytes() == UNIT.read_bytes()
    assert stat.S_IMODE(installed_unit.stat().st_mode) == 0o644
    config = prefix / CONFIG_PATH.lstrip("/")
    assert config.read_bytes() == (REPO / "configs/pi5-donkey.yaml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    calls = log.read_text().splitlines()
    assert any(c.startswith("useradd ") and c.endswith(" continuon") for c in calls)
    assert f"systemctl --root={prefix} enable {UNIT_NAME}" in calls
    assert any("-m pip install --upgrade" in c for c in calls)

    # Second run: the builder has calibrated; the file must survive byte for byte.
    config.write_text("# calibrated\n")
    log.unlink()
    proc = run_install("--prefix", str(prefix), str(REPO / "configs/sim-donkey.yaml"), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert config.read_text() == "# calibrated\n"
    assert "diff -u" in proc.stdout
    calls = log.read_text().splitlines()
    assert not any(c.startswith("python3 -m venv") for c in calls), "venv was recreated"
