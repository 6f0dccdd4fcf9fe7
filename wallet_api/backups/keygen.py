"""`python -m wallet_api.backups.keygen` (`bin/backup --generate-key`): print a new BACKUP_ENCRYPTION_KEY.

The secret key goes to stdout alone (redirect it into a file or a secret manager); its public key
and what to do with it go to stderr.
"""
import sys

from wallet_api.backups.crypto import generate_key


def main() -> None:
    secret, public = generate_key()
    print(secret)
    print(f"# public key: {public}\n"
          "# Store the line above in a secret manager and set it as BACKUP_ENCRYPTION_KEY.\n"
          "# Keep a copy outside the platform too: without it no backup can be restored.", file=sys.stderr)


if __name__ == "__main__":
    main()
