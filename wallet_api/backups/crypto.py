"""Backup encryption: age (age-encryption.org/v1) with an X25519 key, streamed.

The format is age's: a text header holding the per-file key wrapped for the recipient (the public
half of BACKUP_ENCRYPTION_KEY), then the payload in 64 KiB chunks, each sealed with
ChaCha20-Poly1305; the last chunk is marked, so a truncated, reordered or altered file fails to
decrypt instead of restoring a part. Any age implementation decrypts a backup without this code:
`age -d -i key.txt FILE > FILE.dump` (or `rage`).

`bin/backup --generate-key` (wallet_api/backups/keygen.py) prints a new key.
"""
from __future__ import annotations

from typing import BinaryIO

import pyrage
from pyrage import x25519

KEY_PREFIX = "AGE-SECRET-KEY-1"
SUFFIX = ".age"


class InvalidKey(ValueError):
    """BACKUP_ENCRYPTION_KEY is not an age X25519 secret key. The message never repeats the value."""


class DecryptionFailed(RuntimeError):
    """The file cannot be decrypted with this key, or it was truncated or altered."""


def parse_key(value: str) -> x25519.Identity:
    """The age identity of a BACKUP_ENCRYPTION_KEY value; InvalidKey (not naming it) when malformed."""
    value = value.strip()
    if not value.upper().startswith(KEY_PREFIX):
        raise InvalidKey(f"Must be an age X25519 secret key ({KEY_PREFIX}...); "
                         "generate one with `bin/backup --generate-key`.")
    try:
        return x25519.Identity.from_str(value)
    except pyrage.IdentityError:
        raise InvalidKey(f"Not a valid age X25519 secret key: {KEY_PREFIX} followed by 58 Bech32 characters "
                         "with a valid checksum; generate one with `bin/backup --generate-key`.") from None


def generate_key() -> tuple[str, str]:
    """A new (secret key, public key) pair."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def public_key(key: str) -> str:
    """The recipient (age1...) of a secret key: safe to print, names which key a backup needs."""
    return str(parse_key(key).to_public())


def encrypt(reader: BinaryIO, writer: BinaryIO, *, key: str) -> None:
    """Encrypt everything `reader` yields into `writer`, chunk by chunk, until EOF."""
    pyrage.encrypt_io(reader, writer, [parse_key(key).to_public()])


def decrypt(reader: BinaryIO, writer: BinaryIO, *, key: str) -> None:
    """Decrypt `reader` into `writer`, chunk by chunk; DecryptionFailed on a wrong key or a damaged file.

    Chunks are written as they authenticate: on a failure part of the plaintext may already be in
    `writer`, so the consumer must be discarded (pg_restore runs in one transaction and is killed).
    """
    identity = parse_key(key)
    try:
        pyrage.decrypt_io(reader, writer, [identity])
    except pyrage.DecryptError as exc:
        raise DecryptionFailed(f"cannot decrypt ({exc}): not a backup made with this BACKUP_ENCRYPTION_KEY "
                               f"(its public key is {identity.to_public()}), or not an age file") from None
    except BrokenPipeError:
        raise  # the consumer (pg_restore) stopped reading; its own error says why
    except OSError as exc:
        raise DecryptionFailed(f"the backup is damaged or truncated ({exc}); nothing from it may be trusted") from None

