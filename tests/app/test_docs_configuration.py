"""docs/CONFIGURATION.md stays true: every variable the platform reads has a row, and the page names
exactly the variables of .env.example. A variable added to config.py (or read by gunicorn.conf.py)
without its row fails here; tests/app/test_config.py holds .env.example to config.py, and
tests/deploy/test_app_manifest.py holds app.json to .env.example."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.app.test_config import GOOD
from tests.deploy.test_app_manifest import env_example_names
from wallet_api.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "CONFIGURATION.md"
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|")
# Read from the environment outside config.py, by code that is not the app's configuration:
# the platform sets PORT; local_services.py reads the test and development harness's own variables.
NOT_CONFIGURATION = {"PORT"}
ENV_READ = re.compile(r"""os\.(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")


class RecordingEnvironment(dict):
    """A mapping that remembers every name the configuration asked for."""

    def __init__(self, values):
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def documented_names() -> list[str]:
    return [m.group(1) for line in PAGE.read_text().splitlines() if (m := ROW.match(line))]


@pytest.fixture(scope="module")
def read_by_config() -> set[str]:
    asked = set()
    for app_env in ("development", "production"):
        environment = RecordingEnvironment({**GOOD, "APP_ENV": app_env})
        load_settings(environment)
        asked |= environment.asked
    assert len(asked) > 60  # every declaration was reached, not just the first few
    return asked


def read_by_process_code() -> set[str]:
    """Variables the processes read straight from os.environ (gunicorn.conf.py, the app, the workers)."""
    files = [ROOT / "gunicorn.conf.py", *(ROOT / "wallet_api").rglob("*.py"), *(ROOT / "worker").rglob("*.py")]
    names = set()
    for path in files:
        if path.name == "local_services.py":
            continue
        names |= set(ENV_READ.findall(path.read_text()))
    return names - NOT_CONFIGURATION


def test_every_variable_config_reads_has_a_row(read_by_config):
    missing = sorted(read_by_config - set(documented_names()))
    assert not missing, f"docs/CONFIGURATION.md lacks variables config.py reads: {missing}"


def test_every_variable_the_processes_read_directly_is_documented():
    names = read_by_process_code()
    assert {"WEB_CONCURRENCY", "GUNICORN_THREADS"} <= names
    missing = sorted(names - set(env_example_names()) | names - set(documented_names()))
    assert not missing, f"read from os.environ but not in .env.example and docs/CONFIGURATION.md: {missing}"


def test_the_page_and_env_example_name_the_same_variables_once():
    documented = documented_names()
    assert len(documented) == len(set(documented)), "docs/CONFIGURATION.md has a variable twice"
    example = set(env_example_names())
    assert not sorted(example - set(documented)), f"not in docs/CONFIGURATION.md: {sorted(example - set(documented))}"
    assert not sorted(set(documented) - example), f"not in .env.example: {sorted(set(documented) - example)}"


def test_the_readme_links_the_page():
    assert "docs/CONFIGURATION.md" in (ROOT / "README.md").read_text()
