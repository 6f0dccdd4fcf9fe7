"""RQ job entry points, the worker process and the periodic schedule.

Thin on purpose: jobs take ids, open an app context, call one wallet_api service and return.
- `worker.jobs`: the job functions (what RQ imports by dotted name).
- `worker.main`: the worker process (bin/start-worker): a pool of non-forking workers.
- `worker.runner`: the Worker class (`WalletWorker`) and the app it runs jobs in.
- `worker.schedule`: the periodic jobs, held in rq-scheduler under stable ids.
- `worker.scheduler`: the scheduler process (bin/start-scheduler).
"""
