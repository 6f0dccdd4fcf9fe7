"""The docs name real things: every file path (`wallet_api/onramp/intake.py`, `bin/backup`, or a path
inside the package such as `onramp/apply_job.py`) exists, and every dotted name (`worker.jobs.webhook_retry`,
`wallet_api.queues.QUEUE_NAMES`) imports. A rename that leaves the docs behind fails here."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "wallet_api"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Paths start with a directory of the repository or of the package; anything else (a shared note,
# a URL path such as /openapi.json) is not ours to check.
PREFIXES = sorted({p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
                  | {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")})
PATH = re.compile(r"`((?:%s)/[A-Za-z0-9_./-]*)`" % "|".join(map(re.escape, PREFIXES)))
DOTTED = re.compile(r"`((?:worker|wallet_api)\.[A-Za-z_][A-Za-z0-9_.]*)`")


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_every_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for path in PATH.findall(doc.read_text()):
            path = path.rstrip("/")
            if not ((ROOT / path).exists() or (PACKAGE / path).exists()):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, f"paths named in the docs that do not exist: {missing}"


def test_every_dotted_name_the_docs_use_imports():
    broken = [f"{doc.relative_to(ROOT)}: {name}" for doc in DOCS for name in DOTTED.findall(doc.read_text())
              if not resolves(name)]
    assert not broken, f"names in the docs that do not import: {broken}"
