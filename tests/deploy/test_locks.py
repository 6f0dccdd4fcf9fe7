"""The locks say what setup.cfg says: a platform that installs requirements.txt gets the app's
direct dependencies at exactly their pinned versions, every transitive one pinned and hashed, and
nothing that only the tests need. bin/lock makes both files; these tests catch a lock left stale
after setup.cfg changed, or edited by hand.
"""
from __future__ import annotations

import configparser
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # runtime closure of gunicorn, limits, webargs

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.txt"
DEV_LOCK = ROOT / "requirements-dev.txt"
RELOCK = "Run bin/lock and commit setup.cfg with both locks."


def canonical(name: str) -> str:
    """PEP 503: Flask-SQLAlchemy, flask_sqlalchemy and flask.sqlalchemy are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """name -> Pin for every requirement of a pip-compile lock; fails on an unpinned line."""
    pins: dict[str, Pin] = {}
    for number, line in logical_lines(path):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=\S+)*)", line)
        assert match, f"{path.name}:{number} is not `name==version --hash=...`: {line[:80]!r}"
        name, version, hashes = match.groups()
        assert canonical(name) not in pins, f"{path.name} pins {name} twice"
        pins[canonical(name)] = Pin(version, tuple(h.split("=", 1)[1] for h in hashes.split()))
    return pins


def logical_lines(path: Path):
    """(first line number, text without comments) of each requirement, continuations joined."""
    start, parts = 0, []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not parts:
            start = number
        if text.endswith("\\"):
            parts.append(text[:-1])
            continue
        line = " ".join(parts + [text]).strip()
        parts = []
        if line:
            yield start, line


def direct_dependencies(group: str) -> dict[str, str]:
    """name -> pinned version of setup.cfg's install_requires ("runtime") or the dev extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    raw = (cfg["options"]["install_requires"] if group == "runtime"
           else cfg["options.extras_require"][group])
    pins = {}
    for line in filter(None, (line.strip() for line in raw.splitlines())):
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"setup.cfg pins every direct dependency with ==; {line!r} does not")
        pins[canonical(requirement.name)] = specs[0].version
    return pins


@pytest.fixture(scope="module")
def runtime_pins() -> dict[str, str]:
    return direct_dependencies("runtime")


@pytest.fixture(scope="module")
def dev_pins() -> dict[str, str]:
    return direct_dependencies("dev")


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Pin]:
    return read_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, Pin]:
    return read_lock(DEV_LOCK)


@pytest.mark.parametrize("path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_locked_package_is_pinned_with_hashes(path):
    pins = read_lock(path)
    assert pins, f"{path.name} locks nothing"
    unhashed = sorted(name for name, pin in pins.items() if not pin.hashes)
    assert not unhashed, f"{path.name} has no --hash for {unhashed}. {RELOCK}"
    weak = sorted(name for name, pin in pins.items()
                  if not all(h.startswith("sha256:") for h in pin.hashes))
    assert not weak, f"{path.name} has hashes other than sha256 for {weak}"


def pin_mismatches(wanted: dict[str, str], lock: dict[str, Pin], lock_name: str) -> list[str]:
    return [f"{name}: setup.cfg =={version}, {lock_name} "
            + (f"=={lock[name].version}" if name in lock else "lacks it")
            for name, version in sorted(wanted.items())
            if name not in lock or lock[name].version != version]


def test_the_runtime_lock_has_every_direct_dependency_at_its_setup_cfg_pin(runtime_pins, runtime_lock):
    wrong = pin_mismatches(runtime_pins, runtime_lock, "requirements.txt")
    assert not wrong, f"{'; '.join(wrong)}. {RELOCK}"


def test_the_dev_lock_has_every_direct_dependency_at_its_setup_cfg_pin(runtime_pins, dev_pins, dev_lock):
    wrong = pin_mismatches({**runtime_pins, **dev_pins}, dev_lock, "requirements-dev.txt")
    assert not wrong, f"{'; '.join(wrong)}. {RELOCK}"


def test_the_dev_lock_agrees_with_the_runtime_lock(runtime_lock, dev_lock):
    missing = sorted(set(runtime_lock) - set(dev_lock))
    assert not missing, f"requirements-dev.txt lacks {missing} of requirements.txt. {RELOCK}"
    differ = [f"{name}: requirements.txt =={pin.version}, requirements-dev.txt =={dev_lock[name].version}"
              for name, pin in sorted(runtime_lock.items()) if dev_lock[name].version != pin.version]
    assert not differ, f"{'; '.join(differ)}. {RELOCK}"


def test_the_runtime_lock_is_exactly_what_install_requires_pulls_in(runtime_pins, runtime_lock):
    """Nothing dev-only reaches the platform, and nothing it needs is missing (with
    --require-hashes pip would refuse the whole install). The dependency graph is read from the
    installed packages' metadata, which bin/setup installed from the dev lock."""
    needed = runtime_closure(runtime_pins)
    dev_only = sorted(set(runtime_lock) - needed)
    assert not dev_only, f"requirements.txt holds packages the app does not need: {dev_only}. {RELOCK}"
    missing = sorted(needed - set(runtime_lock))
    assert not missing, f"requirements.txt lacks dependencies of install_requires: {missing}. {RELOCK}"


def test_no_dev_extra_package_is_in_the_runtime_lock(dev_pins, runtime_lock):
    leaked = sorted(set(dev_pins) & set(runtime_lock))
    assert not leaked, f"requirements.txt installs dev-only {leaked} on the platform. {RELOCK}"


def test_the_tests_run_on_the_locked_versions(dev_lock):
    drift = []
    for name, pin in sorted(dev_lock.items()):
        try:
            installed = "==" + importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != "==" + pin.version:
            drift.append(f"{name}: locked =={pin.version}, installed {installed}")
    assert not drift, f"{'; '.join(drift)}. Run bin/setup"


@pytest.mark.parametrize("path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_the_locks_are_compiled_for_the_python_of_python_version(path):
    header = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", path.read_text())
    assert header, f"{path.name} lacks pip-compile's header. {RELOCK}"
    want = (ROOT / ".python-version").read_text().strip()
    assert header.group(1) == want, (
        f"{path.name} was compiled with Python {header.group(1)}, .python-version says {want}")


def test_python_version_names_the_interpreter_the_tests_run_on():
    want = (ROOT / ".python-version").read_text().strip()
    have = "%d.%d" % sys.version_info[:2]
    assert want == have, (
        f".python-version says {want} (what the platform installs), the tests run on {have}")


def runtime_closure(roots: dict[str, str]) -> set[str]:
    """Canonical names of the roots and everything they require on this interpreter, extras
    followed, from the installed distributions' metadata."""
    wanted: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in roots]
    while todo:
        name, extras = todo.pop()
        key = canonical(name)
        if key in wanted and extras <= wanted[key]:
            continue
        wanted.setdefault(key, set()).update(extras)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # reported as missing from the lock by the caller (or by the pin tests)
        for line in requires:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra})
                                     for extra in sorted(wanted[key]) or [""]):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return set(wanted)
