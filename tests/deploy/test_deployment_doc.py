"""docs/DEPLOYMENT.md names only commands this repository provides: every `bin/` script exists and is
executable, every `bin/flask` command is registered with the app's CLI (with the options the doc
gives it), and every variable it sets is one the app reads."""
import os
import re
from pathlib import Path

from flask_migrate.cli import db as migrate_cli

from tests.deploy.test_app_manifest import env_example_names

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
# Set by the platform, not read from .env.example: the doc names them as such.
PLATFORM_VARS = {"PORT", "DYNO"}


def code_lines() -> list[str]:
    blocks = re.findall(r"```(?:bash|console)?\n(.*?)```", DOC, flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.strip()]


def test_every_bin_script_the_doc_runs_exists():
    scripts = set(re.findall(r"\bbin/([a-z][a-z-]*)", DOC))
    assert {"flask", "backup", "release"} <= scripts
    for name in scripts:
        path = ROOT / "bin" / name
        assert path.is_file() and os.access(path, os.X_OK), f"docs/DEPLOYMENT.md runs bin/{name}, which is missing"


def test_every_flask_command_the_doc_runs_is_registered_with_its_options(app):
    calls = [re.split(r"\s+", m) for line in code_lines() for m in re.findall(r"bin/flask ([^;&|]+)", line)]
    assert calls, "the doc runs no bin/flask command"
    for words in calls:
        command, rest = app.cli.get_command(None, words[0]) or _flask_builtin(words[0]), words[1:]
        assert command is not None, f"bin/flask {words[0]} is not a command of the app"
        if hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
            command, rest = command.get_command(None, rest[0]), rest[1:]
            assert command is not None, f"bin/flask {' '.join(words)}: no such subcommand"
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in known, f"bin/flask {' '.join(words)}: {word} is not an option"


def _flask_builtin(name):
    """Commands that extensions register through entry points rather than on app.cli."""
    return {"db": migrate_cli}.get(name)


def test_every_variable_the_doc_sets_is_one_the_app_reads():
    names = set(env_example_names()) | PLATFORM_VARS
    set_in_doc = {m for line in code_lines() if "config:set" in line
                  for m in re.findall(r"\b([A-Z][A-Z0-9_]+)=", line)}
    assert "REDIS_TLS_VERIFY" in set_in_doc
    unknown = sorted(set_in_doc - names)
    assert not unknown, f"docs/DEPLOYMENT.md sets variables the app does not read: {unknown}"
