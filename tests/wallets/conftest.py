"""Concurrent runners for the wallet tests (the money fixtures live in tests/conftest.py)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


from wallet_api.extensions import db


def run_concurrently(app, jobs, *, workers: int):
    """Run callables on `workers` threads, each in its own app context (own session and connection).

    Returns [(result | None, exception | None)] in job order. A barrier makes the first wave start together.
    """
    barrier = threading.Barrier(min(workers, len(jobs)))

    def run(index_job):
        index, job = index_job
        with app.app_context():
            try:
                if index < barrier.parties:
                    barrier.wait(timeout=30)
                return job(), None
            except Exception as exc:  # collected and asserted on by the test
                return None, exc
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, enumerate(jobs)))
