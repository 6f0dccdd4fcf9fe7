"""The MoonPay on-ramp: purchases of crypto with fiat, and the webhook pipeline that credits them.

The webhook pipeline: receive -> persist -> enqueue -> apply exactly once
-------------------------------------------------------------------------
MoonPay delivers at least once, out of order, and wants a 2xx within 5 s. So the request path
does only cheap, local work and PostgreSQL (never Redis) holds everything that matters:

1. Receive (runs in the web request; `intake.py`): IP allowlist (403), body size (413),
   `Moonpay-Signature-V2` over the raw bytes (401), body shape (400), then ONE statement
   `INSERT ... ON CONFLICT (provider, event_key) DO NOTHING` and a commit. Only after the commit
   does it ask the workers for a drain (`drain_queue.py`): at most one drain job waits in the
   queue, and the running drain holds its flag as a lease, so a burst or a steady stream of
   webhooks queues one job, not one per event. The answer is 200 whether
   Redis took the request or not: an event left pending is found by the sweeper. The request
   path never touches a wallet.

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

3. Apply (runs in a worker; `apply_job.py`): a drain claims the oldest pending event nobody else
   holds (FOR UPDATE SKIP LOCKED) and, in ONE database transaction, skips it if already
   processed, locks the on-ramp transaction row (FOR UPDATE), moves its status forward only, and
   for `completed` calls `ledger.credit(commit=False, savepoint=False)` with the key
   `webhook:moonpay:{moonpay_tx_id}:{wallet_id}:credit`; marks the on-ramp transaction completed
   and the event processed; commits; and takes the next event, until none is left (it waits
   briefly for one more first) or its time budget is spent. A backlog brings in helper drains:
   several workers drain side by side without touching each other's events.
   Concurrent deliveries of one purchase serialise on the on-ramp row lock; the ledger's unique
   idempotency key is the backstop; a crash before the commit leaves no trace, and the event is
   simply applied again.

4. Fail and retry: a run that fails (unknown transaction, currency mismatch, an amount with
   more decimals than the currency allows - never rounded -, a conflicting terminal status...)
   rolls its whole transaction back, locks the event again and, if no one else has run it
   meanwhile, records attempts, last_error and next_attempt_at. The first run is followed by up
   to WEBHOOK_MAX_RETRIES retries, 1, 5, 15, 30 and 60 minutes apart
   (WEBHOOK_RETRY_BACKOFF_SECONDS); when the last one fails the event is parked in the dead
   letter queue (`dead_letters.py`) and a WEBHOOK_FAILURE alert (high) is raised.
   Infrastructure errors (the database gone) raise instead, and RQ's own Retry re-runs the job.

5. Recover (runs in a worker; `retry_job.py`, the periodic webhook-retry job): make retries that
   are due pending again, and sweep events that are still `pending` although they were last
   queued more than WEBHOOK_STALE_AFTER_SECONDS ago (Redis flushed, worker SIGKILLed, no drain
   asked for), then ask for a drain. Rows are claimed with FOR UPDATE SKIP LOCKED, so an event
   being processed right now is never touched, and two runs never claim the same row.

MoonPay's vocabulary (statuses, currency codes, event types, the transaction record) lives in
`moonpay.py`; its REST client in `moonpay_client.py`. Every function takes `now` so tests walk
the retry schedule with a controllable clock.
"""
