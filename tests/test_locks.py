"""The two locks: what a deployment installs, and that plus the dev tools, at one version each."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[_name(match.group(1))] = match.group(2)
    return pins


def _declared(group: str | None) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    declared = {}
    for spec in specs:
        match = re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;]+)", spec)
        assert match, f"{spec!r} is not pinned exactly"
        declared[_name(match.group(1))] = match.group(2)
    return declared


def test_the_runtime_lock_pins_every_dependency_and_no_dev_tool():
    runtime = _pins("requirements.lock")
    for name, version in _declared(None).items():
        assert runtime.get(name) == version, name
    for name in _declared("dev"):
        assert name not in runtime, f"{name} is a dev tool in the runtime lock"


def test_the_dev_lock_is_the_runtime_lock_plus_the_dev_tools_at_the_same_versions():
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    for name, version in _declared("dev").items():
        assert dev.get(name) == version, name
