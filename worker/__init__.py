"""RQ job entry points, the worker process and the periodic schedule.

Thin on purpose: jobs take ids, open an app context, call one wallet_api service and return.
- `worker.jobs`: the job functions (what RQ imports by dotted name).
- `worker.runner`: the Worker class (`rq worker -w worker.runner.WalletWorker`) and the app it runs jobs in.
- `worker.schedule`: every periodic job, registered with rq-scheduler under stable ids.
- `worker.preflight`: fail-fast configuration check used by bin/start-worker.
"""
