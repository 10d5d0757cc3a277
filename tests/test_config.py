import subprocess
import sys
from pathlib import Path

import pytest

from brain.cli import main
from brain.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
# Robot configs; configs/provider_thresholds.yaml is the export bench's, not a robot's.
CONFIGS = sorted(
    p for p in (ROOT / "configs").glob("*.yaml") if p.name != "provider_thresholds.yaml"
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.robot.id


def test_pi5_donkey_has_the_documented_wiring():
    cfg = load_config(ROOT / "configs" / "pi5-donkey.yaml")
    act = cfg.hardware.actuators
    assert act.driver == "pca9685_car"
    assert act.pca9685.address == 0x40
    assert (act.steering.channel, act.throttle.channel) == (0, 1)
    cam = cfg.hardware.camera
    assert (cam.driver, cam.width, cam.height, cam.fps) == ("picamera2", 640, 480, 30)
    assert cfg.control.rate_hz == 20


def test_arm_config_has_joint_limits():
    cfg = load_config(ROOT / "configs" / "pi5-realsense-arm.yaml")
    assert cfg.hardware.depth.driver == "realsense"
    for j in cfg.hardware.actuators.joints:
        lo, hi = j.soft_limits
        assert j.min_deg <= lo < hi <= j.max_deg


def write(tmp_path, text):
    p = tmp_path / "robot.yaml"
    p.write_text(text)
    return p


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_unknown_key_named_with_line(tmp_path):
    msg = problems(tmp_path, "robot:\n  id: a\ncontrol:\n  rate_hz: 20\n  ratehz: 30\n")
    assert "robot.yaml:5" in msg
    assert "unknown key 'control.ratehz'" in msg
    assert "30" in msg


def test_out_of_range_value_names_key_value_and_expectation(tmp_path):
    text = "hardware:\n  actuators:\n    driver: pca9685_car\n    steering:\n      channel: 16\n"
    msg = problems(tmp_path, text)
    assert "hardware.actuators.steering.channel = 16" in msg
    assert "less than or equal to 15" in msg
    assert "robot.yaml:5" in msg


def test_wrong_type(tmp_path):
    msg = problems(tmp_path, "control:\n  rate_hz: fast\n")
    assert "control.rate_hz = 'fast'" in msg and "number" in msg


def test_semantic_errors(tmp_path):
    msg = problems(
        tmp_path,
        "hardware:\n  actuators:\n    driver: pca9685_car\n    steering: {channel: 1}\n",
    )
    assert "both 1" in msg
    msg = problems(
        tmp_path,
        "hardware:\n  actuators:\n    driver: pca9685_car\ncontrol:\n  autopilot: expert\n",
    )
    assert "only on the simulated robot" in msg
    msg = problems(tmp_path, "safety:\n  limits:\n    gas: [0, 1]\n")
    assert "unknown actions ['gas']" in msg
    msg = problems(
        tmp_path,
        "hardware:\n  actuators:\n    steering: {left_us: 1000, center_us: 2100, right_us: 2000}\n",
    )
    assert "center_us 2100 must lie strictly between" in msg


def test_not_yaml_and_not_mapping(tmp_path):
    assert "not valid YAML" in problems(tmp_path, "robot: [unclosed\n")
    assert "mapping" in problems(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_config_check_cli(tmp_path, capsys):
    good = ROOT / "configs" / "sim-donkey.yaml"
    bad = write(tmp_path, "control:\n  rate_hz: 500\n")
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["config", "check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "control.rate_hz = 500" in err


@pytest.mark.integration
def test_daemon_refuses_bad_config(tmp_path):
    bad = write(tmp_path, "control:\n  rate_hz: 500\n")
    r = subprocess.run(
        [sys.executable, "-m", "brain.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "control.rate_hz = 500" in r.stderr


def test_config_hash_changes_with_content(tmp_path):
    a = load_config(write(tmp_path, "control:\n  rate_hz: 20\n"))
    b = load_config(write(tmp_path, "control:\n  rate_hz: 30\n"))
    assert a.config_hash() != b.config_hash()
    assert (
        a.config_hash() == load_config(write(tmp_path, "control:\n  rate_hz: 20\n")).config_hash()
    )


def _leaf_keys(model, prefix=""):
    from typing import get_args

    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        sub = [a for a in get_args(field.annotation) if isinstance(a, type)] or [field.annotation]
        nested = [t for t in sub if isinstance(t, type) and issubclass(t, BaseModel)]
        if nested and name != "actuators":
            for t in nested:
                keys += _leaf_keys(t, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_configuration_reference_documents_every_key():
    from brain.config import (
        ArmActuatorsConfig,
        CarActuatorsConfig,
        Config,
        JointConfig,
        PCA9685Config,
        SteeringConfig,
        ThrottleConfig,
    )

    doc = (ROOT / "docs" / "configuration.md").read_text()
    names = {k.rsplit(".", 1)[-1] for k in _leaf_keys(Config)}
    for model in (
        CarActuatorsConfig,
        ArmActuatorsConfig,
        JointConfig,
        PCA9685Config,
        SteeringConfig,
        ThrottleConfig,
    ):
        names |= set(model.model_fields)

    def mentioned(n):
        return any(f"{a}{n}{b}" in doc for a in ("`", ".") for b in ("`", "."))

    missing = sorted(n for n in names if not mentioned(n))
    assert not missing, f"docs/configuration.md does not mention {missing}"
