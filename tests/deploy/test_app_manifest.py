"""app.json, the Heroku app manifest, describes the app as it is: the Procfile's processes, the
two add-ons that provide DATABASE_URL and REDIS_URL, and every variable that .env.example names,
each described, required exactly where the app refuses to start without it, with defaults the
app accepts. A variable added to .env.example fails here until app.json has it too.
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from wallet_api.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
# The add-ons set these; a value given at deploy time would collide with the attachment.
FROM_ADDONS = {"DATABASE_URL": "heroku-postgresql", "REDIS_URL": "heroku-redis"}
# Secrets the app can be given any random value of; the others come from MoonPay's dashboard.
GENERATED_SECRETS = {"JWT_SECRET", "JWT_REFRESH_SECRET", "METRICS_TOKEN"}
ENV_KEYS = {"description", "value", "required", "generator"}


def env_example_names() -> list[str]:
    """Variables of .env.example, set (`NAME=value`) or commented out (`# NAME=value`)."""
    names = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"(?:#\s*)?([A-Z][A-Z0-9_]*)=", line.strip())
        if match:
            names.append(match.group(1))
    return names


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((ROOT / "app.json").read_text())


def procfile_processes() -> set[str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {line.split(":", 1)[0].strip() for line in lines if ":" in line and not line.startswith("#")}


def test_app_json_names_every_variable_of_env_example_and_no_other(manifest):
    documented = env_example_names()
    assert len(documented) == len(set(documented)), ".env.example names a variable twice"
    missing = sorted(set(documented) - set(manifest["env"]))
    extra = sorted(set(manifest["env"]) - set(documented))
    problems = ([f"missing from app.json: {', '.join(missing)}"] if missing else []) + (
        [f"in app.json but not in .env.example: {', '.join(extra)}"] if extra else [])
    assert not problems, f"app.json env is out of step with .env.example; {'; '.join(problems)}"


def test_every_variable_is_described_and_says_whether_it_is_required(manifest):
    # app.json's `required` defaults to true: an entry that leaves it out would block a deploy.
    for name, entry in manifest["env"].items():
        assert isinstance(entry, dict), f"app.json env {name}: an object with a description"
        unknown = sorted(set(entry) - ENV_KEYS)
        assert not unknown, f"app.json env {name}: unknown keys {unknown}"
        assert isinstance(entry.get("description"), str) and entry["description"].strip(), (
            f"app.json env {name} has no description")
        assert isinstance(entry.get("required"), bool), f"app.json env {name}: say required true or false"
        assert isinstance(entry.get("value", ""), str), f"app.json env {name}: values are strings"


def test_required_variables_are_the_ones_production_refuses_to_start_without(manifest):
    defaults = {name: entry["value"] for name, entry in manifest["env"].items() if "value" in entry}
    with pytest.raises(ConfigError) as refused:
        load_settings({**defaults, "APP_ENV": "production"})
    required = {name for name, entry in manifest["env"].items() if entry.get("required", True)}
    # APP_ENV is pinned too (unset it already means production; the manifest says so explicitly).
    expected = (set(refused.value.problems) - set(FROM_ADDONS)) | {"APP_ENV"}
    assert required == expected, (
        f"app.json should require {sorted(expected - required)} and not {sorted(required - expected)}")
    assert manifest["env"]["APP_ENV"]["value"] == "production"


def test_the_add_on_variables_are_left_to_the_add_ons(manifest):
    plans = [addon["plan"] if isinstance(addon, dict) else addon for addon in manifest["addons"]]
    for name, addon in FROM_ADDONS.items():
        assert any(plan.split(":")[0] == addon for plan in plans), f"app.json lacks the {addon} add-on"
        entry = manifest["env"][name]
        assert entry["required"] is False and "value" not in entry, (
            f"app.json env {name} is set by {addon}: not required, no value")
    for addon in manifest["addons"]:
        if isinstance(addon, dict) and "as" in addon:
            assert f"{addon['as']}_URL" in FROM_ADDONS, f"add-on {addon['plan']} attaches as {addon['as']}"


def test_secrets_are_generated_only_where_the_app_can_make_its_own(manifest):
    generated = {name for name, entry in manifest["env"].items() if "generator" in entry}
    assert generated == GENERATED_SECRETS
    for name in generated:
        assert manifest["env"][name]["generator"] == "secret"
        assert "value" not in manifest["env"][name], f"app.json env {name}: a generated secret has no value"


def test_the_defaults_of_app_json_are_values_the_app_accepts(manifest):
    # What a deploy from app.json starts with: its values, generated secrets (64 hex characters),
    # the add-ons' URLs and, for the other required variables, what an operator would type in.
    environ = {name: entry["value"] for name, entry in manifest["env"].items() if "value" in entry}
    environ.update({name: secrets.token_hex(32) for name in GENERATED_SECRETS})  # what generator: secret gives
    environ.update(DATABASE_URL="postgres://u:p@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d",
                   REDIS_URL="rediss://:p@ec2-1-2-3-4.compute-1.amazonaws.com:6380")  # Heroku Redis: TLS
    environ.update(MOONPAY_WEBHOOK_SECRET="wk_live_7Hq2Zm9RtX4cVb1N", MOONPAY_SECRET_KEY="sk_live_K3p8Wq1Zr6Tx9Vm2",
                   CORS_ALLOWED_ORIGINS="https://app.example.com")
    settings = load_settings(environ)
    assert settings.is_production
    assert settings.trusted_proxy_count == 1  # Heroku's router appends one X-Forwarded-For hop
    assert settings.redis_url.endswith("?ssl_cert_reqs=none")  # Heroku Redis's certificate is self-signed
    assert settings.database_url.endswith("?sslmode=require")


def test_formation_runs_the_procfile_processes(manifest):
    formation = manifest["formation"]
    assert {"web", "worker", "scheduler"} <= set(formation)
    unknown = sorted(set(formation) - procfile_processes())
    assert not unknown, f"app.json formation names processes the Procfile lacks: {unknown}"
    for process, dyno in formation.items():
        assert isinstance(dyno.get("quantity"), int) and dyno["quantity"] >= 1, process
        assert isinstance(dyno.get("size"), str) and dyno["size"], process
    # One scheduler: it registers the periodic jobs and moves them onto their queues.
    assert formation["scheduler"]["quantity"] == 1
    # Heroku runs the release phase from the Procfile; the migrations run there.
    assert "release" in procfile_processes()


def test_the_python_buildpack_builds_it(manifest):
    assert manifest["buildpacks"] == [{"url": "heroku/python"}]
    assert 3 <= len(manifest["name"]) <= 30
    assert manifest["description"] and len(manifest["description"]) <= 140
    assert "repository" not in manifest and "website" not in manifest
