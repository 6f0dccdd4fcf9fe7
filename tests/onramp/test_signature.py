"""MoonPay webhook signatures: only MoonPay's key, over the exact bytes, recently, is accepted."""

import hashlib
import hmac

import pytest

from wallet_api.onramp.signature import (
    MAX_HEADER_LENGTH,
    SignatureError,
    sign_webhook,
    verify_webhook_signature,
)

SECRET = "wk_test_5f2a9c"
BODY = b'{"type":"transaction_updated","data":{"id":"tx_1","quoteCurrencyAmount":0.1819}}'
NOW = 1_700_000_000
TOLERANCE = 300


def verify(header, *, body=BODY, secret=SECRET, now=NOW, tolerance=TOLERANCE):
    return verify_webhook_signature(
        header=header, body=body, secret=secret, tolerance_seconds=tolerance, now=now
    )


def reason_of(header, **kwargs) -> str:
    with pytest.raises(SignatureError) as excinfo:
        verify(header, **kwargs)
    return excinfo.value.reason


def test_a_header_signed_with_the_webhook_key_verifies_and_returns_its_timestamp():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)

    assert verify(header) == NOW


def test_the_signature_is_hmac_sha256_of_timestamp_dot_raw_body_in_lowercase_hex():
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign_webhook(body=BODY, secret=SECRET, timestamp=NOW) == f"t={NOW},s={expected}"


def test_a_signature_made_with_another_key_is_refused():
    header = sign_webhook(body=BODY, secret="someone-else", timestamp=NOW)

    assert reason_of(header) == "signature_mismatch"


def test_a_body_changed_after_signing_is_refused():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)
    tampered = BODY.replace(b"0.1819", b"9.1819")

    assert reason_of(header, body=tampered) == "signature_mismatch"


def test_a_re_serialised_body_is_refused_because_only_the_raw_bytes_are_signed():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)

    assert reason_of(header, body=BODY.replace(b",", b", ")) == "signature_mismatch"


def test_a_changed_timestamp_breaks_the_signature():
    signature = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW).split(",s=")[1]

    assert reason_of(f"t={NOW - 1},s={signature}") == "signature_mismatch"


def test_a_stale_delivery_outside_the_tolerance_is_refused():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW - TOLERANCE - 1)

    assert reason_of(header) == "timestamp_out_of_tolerance"


def test_a_future_timestamp_outside_the_tolerance_is_refused():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW + TOLERANCE + 1)

    assert reason_of(header) == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("skew", [-TOLERANCE, TOLERANCE, 0])
def test_timestamps_at_the_edge_of_the_tolerance_are_accepted(skew):
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW + skew)

    assert verify(header, now=NOW) == NOW + skew


def test_a_fractional_now_is_compared_exactly():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)

    assert reason_of(header, now=NOW + TOLERANCE + 0.5) == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_refused(header):
    assert reason_of(header) == "missing_header"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "t=,s=",
        f"s={'a' * 64}",  # no timestamp
        f"t={NOW}",  # no signature
        f"t=abc,s={'a' * 64}",
        f"t=-{NOW},s={'a' * 64}",
        f"t={NOW}.5,s={'a' * 64}",
        f"t=١٧٠٠٠٠٠٠٠٠,s={'a' * 64}",  # non-ASCII digits that int() would accept
        f"t=99999999999999999999,s={'a' * 64}",
        f"t={NOW},t={NOW},s={'a' * 64}",  # two timestamps: ambiguous
        f"t={NOW},s=not-hex",
        f"t={NOW},s={'a' * 63}",
        f"t={NOW},s=é{'a' * 63}",  # non-ASCII would make compare_digest raise TypeError
        ",,,===,,,",
        "t" * 5000,
        f"t={NOW}," + ",".join(f"s={'a' * 64}" for _ in range(100)),  # oversized
    ],
)
def test_garbage_headers_are_refused_as_malformed(header):
    assert reason_of(header) == "malformed_header"


def test_an_oversized_header_is_refused_before_any_hmac_work():
    valid = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)
    padded = valid + ",x=" + "y" * MAX_HEADER_LENGTH

    assert reason_of(padded) == "malformed_header"


def test_several_signatures_are_allowed_and_any_match_is_enough():
    good = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW).split(",s=")[1]
    old_key = sign_webhook(body=BODY, secret="retired-key", timestamp=NOW).split(",s=")[1]

    assert verify(f"t={NOW},s={old_key},s={good}") == NOW
    assert verify(f"t={NOW},s={good},s={old_key}") == NOW
    assert reason_of(f"t={NOW},s={old_key},s={'0' * 64}") == "signature_mismatch"


def test_unknown_keys_whitespace_and_key_order_are_tolerated():
    signature = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW).split(",s=")[1]

    assert verify(f" s={signature} , v0=legacy, t={NOW} ,novalue") == NOW


def test_uppercase_hex_is_the_same_signature():
    signature = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW).split(",s=")[1]

    assert verify(f"t={NOW},s={signature.upper()}") == NOW


def test_signature_error_is_a_value_error_carrying_a_machine_reason():
    error = SignatureError("signature_mismatch")

    assert isinstance(error, ValueError)
    assert error.reason == "signature_mismatch"
    assert str(error) == "signature_mismatch"


def test_an_empty_secret_is_a_configuration_error_not_a_bad_signature():
    header = sign_webhook(body=BODY, secret=SECRET, timestamp=NOW)

    with pytest.raises(ValueError) as excinfo:
        verify(header, secret="")
    assert not isinstance(excinfo.value, SignatureError)
    with pytest.raises(ValueError):
        sign_webhook(body=BODY, secret="", timestamp=NOW)


def test_an_empty_body_can_be_signed_and_verified():
    header = sign_webhook(body=b"", secret=SECRET, timestamp=NOW)

    assert verify(header, body=b"") == NOW
