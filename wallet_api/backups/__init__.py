"""Encrypted database backups, restores that prove themselves, and the record of both.

    pg_dump --format=custom --> age encryption (streamed) --> BACKUP_DIR/wallet-<UTC stamp>.dump.age
                                                          --> S3 <prefix>wallet-<UTC stamp>.dump.age
    FILE | s3://... | latest --> age decryption (streamed) --> pg_restore --single-transaction --> verify

- Nothing passes through memory whole: pg_dump's stdout is read in chunks, encrypted in age's
  64 KiB chunks and written to a hidden `.partial` file that takes its final name only after
  pg_dump exited 0 and the file is on disk (fsync); only a finished file is uploaded.
- A restore verifies what it restored: the schema is at the code's migration head, and the
  ledger's invariants hold (the reconciliation checks, passed in by the CLI composer: this
  package sits below the domains and imports none of them).
- Every backup and every restore test is a recorded job run (`backup`, `restore-test`);
  `status.backup_status()` reads them for readiness checks.

Operator guide: docs/DATABASE_OPERATIONS.md.
"""
