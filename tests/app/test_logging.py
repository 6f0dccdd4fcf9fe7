"""Secrets never reach the logs: values of secret-looking keys are redacted at any depth."""
import json
import subprocess
import sys

SCRIPT = """
import logging, structlog
from wallet_api.logging import configure_logging
configure_logging(level="INFO", json=True)
log = structlog.get_logger("probe")
log.info("login", email="a@example.com", password="hunter2", headers={"Authorization": "Bearer abc.def"})
log.info("webhook", signature="deadbeef", payload={"nested": {"api_key": "sk_live_x", "amount": "1.5"}})
log.debug("invisible at INFO", secret="never")
logging.getLogger("rq.worker").info("stdlib line")
"""


def test_secret_values_are_redacted_and_lines_are_json():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    text = proc.stderr
    for secret in ("hunter2", "abc.def", "deadbeef", "sk_live_x", "never"):
        assert secret not in text
    login, webhook, stdlib = lines
    assert login["password"] == "[redacted]" and login["email"] == "a@example.com"
    assert webhook["payload"]["nested"]["amount"] == "1.5"
    assert stdlib["event"] == "stdlib line" and stdlib["logger"] == "rq.worker"
