"""The MoonPay on-ramp: purchases of crypto with fiat, and the webhook pipeline that credits them.

The webhook pipeline: receive -> persist -> enqueue -> apply exactly once
-------------------------------------------------------------------------
MoonPay delivers at least once, out of order, and wants a 2xx within 5 s. So the request path
does only cheap, local work and PostgreSQL (never Redis) holds everything that matters:

1. Receive (runs in the web request; `intake.py`): IP allowlist (403), body size (413),
   `Moonpay-Signature-V2` over the raw bytes (401), body shape (400), then ONE statement
   `INSERT ... ON CONFLICT (provider, event_key) DO NOTHING` and a commit. The processing job
   goes to RQ only after the commit (`queues.enqueue_after_commit`), so a job never sees a row
   that was rolled back. The answer is 200 whether the enqueue worked or not: a stored event
   whose job was lost is found by the sweeper. The request path never touches a wallet.

2. Event identity (`intake.event_key`). MoonPay sends no event id, so we derive one:
   sha256 of ("moonpay", type, data.id, data.status, data.updatedAt). Not a hash of the raw
   body, because a redelivery is not guaranteed to be byte-identical (a resend may re-serialise
   the JSON, reorder keys or refresh volatile fields such as exchange rates) and it must still
   dedupe; and not (data.id, status) alone, because MoonPay can legitimately send the same status
   twice with new content (e.g. cryptoTransactionId filled in later), which MoonPay marks with a
   new updatedAt. Distinct status updates therefore get distinct keys and are each processed;
   deliveries of one update share a key and are stored once (the duplicate is answered
   `{"received": true, "duplicate": true}`). When updatedAt is absent, a canonical
   serialisation of `data` (sorted keys, exact decimals) stands in for it. Processing is
   idempotent anyway, so a missed dedupe costs a no-op run, never money.

3. Apply (runs in a worker; `apply_job.py`; jobs take the event id only): in ONE database
   transaction lock the event row (FOR UPDATE), skip it if already processed, lock the on-ramp
   transaction row (FOR UPDATE), move its status forward only, and for `completed` call
   `ledger.credit(commit=False)` with the key `webhook:moonpay:{moonpay_tx_id}:{wallet_id}:credit`;
   mark the on-ramp transaction completed and the event processed; commit. Concurrent
   deliveries and workers serialise on the row locks; the ledger's unique idempotency key is the
   backstop; a crash before the commit leaves no trace, and the event is simply run again.

4. Fail and retry: a run that fails (unknown transaction, currency mismatch, an amount with
   more decimals than the currency allows - never rounded -, a conflicting terminal status...)
   rolls back its own work and records attempts, last_error and next_attempt_at in the same
   transaction. The first run is followed by up to WEBHOOK_MAX_RETRIES retries, 1, 5, 15, 30
   and 60 minutes apart (`apply_job.RETRY_BACKOFF`); when the last one fails the event is parked
   in the dead letter queue (`dead_letters.py`) and a WEBHOOK_FAILURE alert (high) is raised.
   Infrastructure errors (the database gone) raise instead, and RQ's own Retry re-runs the job.

5. Recover (runs in a worker; `retry_job.py`, the periodic webhook-retry job): enqueue retries
   that are due, and sweep events that are still `pending` although their last enqueue is older
   than WEBHOOK_STALE_AFTER_SECONDS (Redis flushed, enqueue failed, worker SIGKILLed). Rows are
   claimed with FOR UPDATE SKIP LOCKED, so an event being processed right now is never touched,
   and two schedulers never claim the same row. Each enqueue gets a new RQ job id
   `webhook-moonpay-<event id>-<enqueue generation>`, so RQ never holds two different jobs under
   one id.

MoonPay's vocabulary (statuses, currency codes, event types, the transaction record) lives in
`moonpay.py`; its REST client in `moonpay_client.py`. Every function takes `now` so tests walk
the retry schedule with a controllable clock.
"""
