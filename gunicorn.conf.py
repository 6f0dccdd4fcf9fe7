"""gunicorn settings: gthread workers (keep-alive, short handlers), sized from the environment."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # keep DB_POOL_SIZE >= threads
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 25  # inside Heroku's 30 s between SIGTERM and SIGKILL
keepalive = 5
max_requests = 2000
max_requests_jitter = 200
accesslog = None  # the app logs one structured line per request, with its request id
forwarded_allow_ips = "*" if int(os.environ.get("TRUSTED_PROXY_COUNT", "0")) else "127.0.0.1"


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
