"""gunicorn settings: gthread workers (keep-alive, short handlers), sized from the environment.

See docs/PERFORMANCE.md ("Request path") for the measurements behind these numbers.
"""
import gc
import glob
import json
import os
import shutil
import tempfile

import gunicorn.http.wsgi
import gunicorn.util

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # keep DB_POOL_SIZE >= threads
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 25  # inside Heroku's 30 s between SIGTERM and SIGKILL
keepalive = 5
# The master imports the app once and forks ready workers: a worker that boots on its own spends
# about a second of CPU importing, which under max_requests recycling was a large share of every
# request's cost. create_app opens no connection (engines, Redis and the limiter's storage connect
# on first use), so nothing is shared across the fork; post_fork below makes sure of it.
preload_app = True
# Recycling guards against slow leaks; it is cheap now (a fork), but not free (new connections).
max_requests = 20000
max_requests_jitter = 2000
accesslog = None  # the app logs one structured line per request, with its request id
# The longest request line gunicorn reads (its maximum); a longer one is answered 414 below.
limit_request_line = 8190
forwarded_allow_ips = "*" if int(os.environ.get("TRUSTED_PROXY_COUNT", "0")) else "127.0.0.1"

# Prometheus multiprocess mode: every worker writes its counters to files in one directory and
# GET /metrics sums them, so a scrape answered by any worker reports all of them. prometheus_client
# picks its mode when it is first imported, which with preload_app is when the master loads the
# app, after this file and before any hook (even on_starting): so the directory is prepared here.
# Unset, the master makes a private one (removed in on_exit). Either way it is emptied once per
# master (not again when a SIGHUP re-reads this file), so no earlier run's numbers are summed in.
_METRICS_DIR_OWNER = "WALLET_METRICS_DIR_MASTER"  # the pid of the master that prepared the directory
_METRICS_DIR_PRIVATE = "WALLET_METRICS_DIR_PRIVATE"  # the pid of the master that made it (and removes it)
if os.environ.get(_METRICS_DIR_OWNER) != str(os.getpid()):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Only prometheus_client's own files (<kind>_<pid>.db): the directory may be shared or mistyped.
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
            os.remove(stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wallet-metrics-")
        os.environ[_METRICS_DIR_PRIVATE] = str(os.getpid())
    os.environ[_METRICS_DIR_OWNER] = str(os.getpid())


def on_exit(server):
    if os.environ.get(_METRICS_DIR_PRIVATE) == str(os.getpid()):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def pre_fork(server, worker):
    # The preloaded app is about 160,000 objects that every worker's full (generation 2) collections
    # would walk, while the worker holds the GIL: a stall of all its threads of 90-300 ms, once a
    # minute or so under load, which is where the p99 of the mixed load went (bench/mixed_load.py;
    # docs/PERFORMANCE.md). Frozen before the fork, they are never scanned again (a full
    # collection then takes ~2 ms), and the collector no longer writes to their pages.
    gc.freeze()


def post_fork(server, worker):
    # Belt and braces for preload_app: a pooled connection inherited from the master would be
    # shared by two processes. Drop (without closing) anything the master may have opened.
    app = server.app.wsgi()
    with app.app_context():
        from wallet_api.extensions import db  # the app is loaded by now: no import cost, no cycle

        for engine in db.engines.values():
            engine.dispose(close=False)


def child_exit(server, worker):
    from prometheus_client import multiprocess  # loaded by the app by now

    multiprocess.mark_process_dead(worker.pid)


# gunicorn answers requests it cannot parse (a request line or headers too long, a malformed
# request line or chunk) itself, before the app sees them, with an HTML page, and names itself in
# every response. It has no setting for either, so its two module-level names are replaced here:
# those answers become the API's JSON error envelope (without echoing the request back), and the
# Server header no longer advertises the server and its version.
gunicorn.http.wsgi.SERVER = "wallet-api"


def _json_error(sock, status_int, reason, mesg):
    body = json.dumps({"code": status_int, "status": reason,
                       "message": f"{reason}: the request could not be read.",
                       "error": reason.lower().replace(" ", "_").replace("-", "_")})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n\r\n")
    gunicorn.util.write_nonblock(sock, (head + body).encode("latin1"))


gunicorn.util.write_error = _json_error
