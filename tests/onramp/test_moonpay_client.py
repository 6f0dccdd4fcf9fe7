"""MoonPay REST client against a real local HTTP server: auth, retries, exact amounts, paging."""

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from werkzeug import Response

from wallet_api.onramp.moonpay_client import (
    MoonPayApi,
    MoonPayApiError,
    MoonPayClient,
    MoonPayTransaction,
)

SK = "sk_test_very_secret_key_0123"
AUTH = {"Authorization": f"Api-Key {SK}"}


def tx(id_="tx_1", **fields):
    """A MoonPay buy transaction body as JSON text (amounts stay literal in the text)."""
    body = {
        "id": id_,
        "status": "completed",
        "createdAt": "2024-03-01T10:30:00.000Z",
        "updatedAt": "2024-03-01T10:31:00.000Z",
        "externalTransactionId": "ramp_1",
        "externalCustomerId": "user_1",
        "currency": {"code": "ETH"},
        "baseCurrency": {"code": "usd"},
        "cryptoTransactionId": "0xabc",
        "failureReason": None,
    }
    body.update(fields)
    return body


def as_json(*items):
    return json.dumps(items[0] if len(items) == 1 else list(items))


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(httpserver, sleeps):
    with MoonPayClient(
        f"http://{httpserver.host}:{httpserver.port}",
        SK,
        timeout=2.0,
        retries=2,
        backoff_seconds=0.01,
        max_backoff_seconds=5.0,
        sleep=sleeps.append,
    ) as c:
        yield c


# --------------------------------------------------------------------------- basics


def test_get_transaction_sends_the_api_key_header_and_parses_the_record(httpserver, client):
    httpserver.expect_request("/v1/transactions/tx_1", method="GET", headers=AUTH).respond_with_data(
        as_json(tx(baseCurrencyAmount=295.45, quoteCurrencyAmount=0.1819)),
        content_type="application/json",
    )

    record = client.get_transaction("tx_1")

    httpserver.check_assertions()
    assert record is not None
    assert record.id == "tx_1"
    assert record.status == "completed"
    assert record.external_transaction_id == "ramp_1"
    assert record.external_customer_id == "user_1"
    assert record.base_currency_amount == Decimal("295.45")
    assert record.quote_currency_amount == Decimal("0.1819")
    assert record.currency_code == "eth"
    assert record.base_currency_code == "usd"
    assert record.crypto_transaction_id == "0xabc"
    assert record.raw["currency"] == {"code": "ETH"}
    request, _ = httpserver.log[0]
    assert request.headers["Authorization"] == f"Api-Key {SK}"


def test_an_unknown_transaction_is_none_and_an_unknown_external_id_is_empty(httpserver, client):
    httpserver.expect_request("/v1/transactions/nope").respond_with_data("{}", status=404)
    httpserver.expect_request("/v1/transactions/ext/nope").respond_with_data("{}", status=404)

    assert client.get_transaction("nope") is None
    assert client.find_by_external_id("nope") == []
    assert len(httpserver.log) == 2  # a 404 is an answer, not a failure to retry


def test_find_by_external_id_returns_every_match_because_moonpay_allows_duplicates(
    httpserver, client
):
    httpserver.expect_request("/v1/transactions/ext/ramp_1", headers=AUTH).respond_with_data(
        as_json(tx("tx_1"), tx("tx_2", status="failed")), content_type="application/json"
    )

    records = client.find_by_external_id("ramp_1")

    assert [(r.id, r.status) for r in records] == [("tx_1", "completed"), ("tx_2", "failed")]


def test_ids_are_escaped_into_a_single_path_segment(httpserver, client):
    httpserver.expect_request("/v1/transactions/ext/a/b").respond_with_data("[]")

    assert client.find_by_external_id("a/b") == []
    request, _ = httpserver.log[0]
    assert request.environ["REQUEST_URI"] == "/v1/transactions/ext/a%2Fb"
    with pytest.raises(ValueError):
        client.get_transaction("..")
    with pytest.raises(ValueError):
        client.get_transaction("")


def test_amounts_never_pass_through_a_float(httpserver, client):
    body = (
        '{"id": "tx_1", "status": "completed", "baseCurrencyAmount": 100.10,'
        ' "quoteCurrencyAmount": 0.000000000000000001, "currency": {"code": "eth"}}'
    )
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_data(body)
    httpserver.expect_request("/v1/transactions/tx_2").respond_with_data(
        '{"id": "tx_2", "status": "completed", "quoteCurrencyAmount": 12345678901234567890.123456789012345678}'
    )

    first = client.get_transaction("tx_1")
    second = client.get_transaction("tx_2")

    assert first.quote_currency_amount == Decimal("0.000000000000000001")
    assert str(first.quote_currency_amount) == "1E-18"
    assert str(first.base_currency_amount) == "100.10"  # even the trailing zero survives
    assert second.quote_currency_amount == Decimal("12345678901234567890.123456789012345678")


# --------------------------------------------------------------------------- retries


def test_a_server_error_is_retried_with_backoff_until_it_succeeds(httpserver, client, sleeps):
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data("boom", status=500)
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data("", status=503)
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(as_json(tx()))

    record = client.get_transaction("tx_1")

    assert record.id == "tx_1"
    assert len(httpserver.log) == 3
    assert sleeps == [0.01, 0.02]  # exponential


def test_persistent_server_errors_give_up_after_the_configured_retries(httpserver, client, sleeps):
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_json(
        {"message": "internal error"}, status=502
    )

    with pytest.raises(MoonPayApiError) as excinfo:
        client.get_transaction("tx_1")

    assert excinfo.value.status == 502
    assert "internal error" in excinfo.value.message
    assert len(httpserver.log) == 3  # 1 try + 2 retries
    assert len(sleeps) == 2


def test_429_honours_retry_after_seconds(httpserver, client, sleeps):
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "2"}
    )
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(as_json(tx()))

    assert client.get_transaction("tx_1").id == "tx_1"
    assert sleeps == [2.0]


def test_retry_after_is_capped_and_an_http_date_falls_back_to_backoff(httpserver, client, sleeps):
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(
        "", status=429, headers={"Retry-After": "3600"}
    )
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(
        "", status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(as_json(tx()))

    assert client.get_transaction("tx_1").id == "tx_1"
    assert sleeps == [5.0, 0.02]


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
def test_other_client_errors_are_never_retried(httpserver, client, sleeps, status):
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_json(
        {"message": "Invalid request"}, status=status
    )

    with pytest.raises(MoonPayApiError) as excinfo:
        client.get_transaction("tx_1")

    assert excinfo.value.status == status
    assert len(httpserver.log) == 1
    assert sleeps == []


def test_the_secret_key_never_appears_in_an_error_even_when_echoed(httpserver, client):
    echo = f"Unauthorized: header was 'Api-Key {SK}'" + " padding" * 30
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_data(echo, status=401)

    with pytest.raises(MoonPayApiError) as excinfo:
        client.get_transaction("tx_1")

    assert SK not in str(excinfo.value)
    assert SK not in excinfo.value.message
    assert SK not in repr(client)


def test_a_slow_server_times_out_is_retried_and_then_raises(httpserver, sleeps):
    release = threading.Event()

    def stall(request):
        release.wait(timeout=5)
        return Response(as_json(tx()), content_type="application/json")

    httpserver.expect_request("/v1/transactions/tx_1").respond_with_handler(stall)
    impatient = MoonPayClient(
        f"http://{httpserver.host}:{httpserver.port}",
        SK,
        timeout=0.1,
        retries=2,
        backoff_seconds=0.01,
    )
    started = time.monotonic()
    try:
        with pytest.raises(MoonPayApiError) as excinfo:
            impatient.get_transaction("tx_1")
        elapsed = time.monotonic() - started
    finally:
        impatient.close()
        release.set()
        # The single-threaded server still owes the abandoned requests an answer; let it
        # drain them so they cannot land on the next test's handlers.
        deadline = time.monotonic() + 5
        while len(httpserver.log) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)

    assert excinfo.value.status is None
    assert "Timeout" in excinfo.value.message
    assert "3 attempt(s)" in excinfo.value.message
    assert elapsed < 2
    assert len(httpserver.log) == 3


def test_a_timeout_followed_by_a_prompt_answer_succeeds(httpserver):
    def slow_once(request):
        time.sleep(0.25)
        return Response(as_json(tx()), content_type="application/json")

    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_handler(slow_once)
    httpserver.expect_ordered_request("/v1/transactions/tx_1").respond_with_data(as_json(tx()))
    # The backoff outlasts the stalled handler, so the single-threaded server is free again.
    with MoonPayClient(
        f"http://{httpserver.host}:{httpserver.port}",
        SK,
        timeout=0.1,
        retries=1,
        backoff_seconds=0.4,
    ) as patient:
        assert patient.get_transaction("tx_1").id == "tx_1"
    assert len(httpserver.log) == 2


def test_an_unreachable_server_is_retried_then_reported_without_a_status(sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again on exit: nothing listens there
    with MoonPayClient(
        f"http://127.0.0.1:{port}", SK, retries=2, backoff_seconds=0.01, sleep=sleeps.append
    ) as offline:
        with pytest.raises(MoonPayApiError) as excinfo:
            offline.get_transaction("tx_1")

    assert excinfo.value.status is None
    assert "ConnectError" in excinfo.value.message
    assert sleeps == [0.01, 0.02]


# --------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"id": "tx_1", "status": "completed", "quoteCurrencyAmount": NaN}',
        '{"status": "completed"}',  # no id
        '{"id": "tx_1", "status": "completed", "quoteCurrencyAmount": true}',
        '["not", "an", "object"]',
        "null",
    ],
)
def test_a_malformed_answer_is_an_api_error_and_is_not_retried(httpserver, client, body):
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_data(body)

    with pytest.raises(MoonPayApiError) as excinfo:
        client.get_transaction("tx_1")

    assert excinfo.value.status == 200
    assert len(httpserver.log) == 1


def test_an_answer_about_another_transaction_is_refused(httpserver, client):
    httpserver.expect_request("/v1/transactions/tx_1").respond_with_data(as_json(tx("tx_9")))

    with pytest.raises(MoonPayApiError):
        client.get_transaction("tx_1")


# --------------------------------------------------------------------------- listing


def test_listing_a_time_window_sends_dates_and_limit_and_follows_offset_pages(httpserver, client):
    start = datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc)
    end = start + timedelta(hours=1)
    window = {"startDate": "2024-03-01", "endDate": "2024-03-02", "limit": "2"}
    httpserver.expect_ordered_request(
        "/v1/transactions", headers=AUTH, query_string={**window, "offset": "0"}
    ).respond_with_data(
        as_json(
            [
                tx("tx_late", createdAt="2024-03-01T11:00:00.000Z"),  # end is exclusive
                tx("tx_3", createdAt="2024-03-01T10:59:59.999Z"),
            ]
        )
    )
    httpserver.expect_ordered_request(
        "/v1/transactions", query_string={**window, "offset": "2"}
    ).respond_with_data(
        as_json(
            [
                tx("tx_3", createdAt="2024-03-01T10:59:59.999Z"),  # shifted by a new arrival
                tx("tx_2", createdAt="2024-03-01T10:00:00.000Z"),
            ]
        )
    )
    httpserver.expect_ordered_request(
        "/v1/transactions", query_string={**window, "offset": "4"}
    ).respond_with_data(as_json([tx("tx_early", createdAt="2024-03-01T09:59:59.000Z")]))

    records = client.list_transactions(start=start, end=end, limit=2)

    httpserver.check_assertions()
    assert [r.id for r in records] == ["tx_3", "tx_2"]


def test_a_window_in_another_timezone_is_sent_as_utc_dates(httpserver, client):
    plus_five = timezone(timedelta(hours=5))
    start = datetime(2024, 3, 2, 2, 0, tzinfo=plus_five)  # 2024-03-01T21:00Z
    httpserver.expect_request(
        "/v1/transactions",
        query_string={"startDate": "2024-03-01", "endDate": "2024-03-02", "limit": "50", "offset": "0"},
    ).respond_with_data("[]")

    assert client.list_transactions(start=start, end=start + timedelta(hours=1)) == []
    httpserver.check_assertions()


def test_a_server_ignoring_offset_is_reported_not_looped(httpserver, client):
    httpserver.expect_request("/v1/transactions").respond_with_data(
        as_json([tx("tx_1"), tx("tx_2")])
    )
    start = datetime(2024, 3, 1, 10, tzinfo=timezone.utc)

    with pytest.raises(MoonPayApiError, match="not advancing"):
        client.list_transactions(start=start, end=start + timedelta(hours=1), limit=2)
    assert len(httpserver.log) == 2


def test_paging_is_bounded(httpserver, client):
    def page(request):
        offset = int(request.args["offset"])
        return Response(as_json([tx(f"tx_{offset}"), tx(f"tx_{offset + 1}")]))

    httpserver.expect_request("/v1/transactions").respond_with_handler(page)
    start = datetime(2024, 3, 1, 10, tzinfo=timezone.utc)

    with pytest.raises(MoonPayApiError, match="more than 3 pages"):
        client.list_transactions(start=start, end=start + timedelta(hours=1), limit=2, max_pages=3)
    assert len(httpserver.log) == 3


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2024, 3, 1, 10), datetime(2024, 3, 1, 11)),  # naive
        (
            datetime(2024, 3, 1, 11, tzinfo=timezone.utc),
            datetime(2024, 3, 1, 10, tzinfo=timezone.utc),
        ),
    ],
)
def test_a_bad_window_is_refused_before_any_request(httpserver, client, start, end):
    with pytest.raises(ValueError):
        client.list_transactions(start=start, end=end)
    assert httpserver.log == []


def test_the_client_satisfies_the_protocol_jobs_depend_on(client):
    assert isinstance(client, MoonPayApi)


# --------------------------------------------------------------------------- from_payload


def test_from_payload_accepts_numbers_numeric_strings_and_floats_exactly():
    record = MoonPayTransaction.from_payload(
        {"id": "tx_1", "status": "pending", "baseCurrencyAmount": "50.00", "quoteCurrencyAmount": 0.1}
    )

    assert record.base_currency_amount == Decimal("50.00")
    assert record.quote_currency_amount == Decimal("0.1")  # not 0.1000000000000000055...
    assert record.currency_code is None
    assert record.external_transaction_id is None


def test_from_payload_treats_absent_amounts_and_ids_as_none():
    record = MoonPayTransaction.from_payload(
        {"id": "tx_1", "status": "waitingPayment", "quoteCurrencyAmount": None, "externalTransactionId": ""}
    )

    assert record.quote_currency_amount is None
    assert record.external_transaction_id is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"status": "completed"}, "id"),
        ({"id": "", "status": "completed"}, "id"),
        ({"id": "   ", "status": "completed"}, "id"),
        ({"id": 42, "status": "completed"}, "id"),
        ({"id": "x" * 300, "status": "completed"}, "id"),
        ({"id": "tx_1"}, "status"),
        ({"id": "tx_1", "status": 3}, "status"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": True}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": "NaN"}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": "1_000"}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": " 1"}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": "-1"}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": "1e999999"}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": float("inf")}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": Decimal("NaN")}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "quoteCurrencyAmount": [1]}, "quoteCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "baseCurrencyAmount": {}}, "baseCurrencyAmount"),
        ({"id": "tx_1", "status": "completed", "currency": "eth"}, "currency"),
        ({"id": "tx_1", "status": "completed", "currency": {"code": 1}}, "currency.code"),
        ({"id": "tx_1", "status": "completed", "externalTransactionId": 7}, "externalTransactionId"),
        ({"id": "tx_1", "status": "completed", "cryptoTransactionId": 8.2e75}, "cryptoTransactionId"),
    ],
)
def test_from_payload_rejects_bad_fields_naming_them(data, field):
    with pytest.raises(ValueError) as excinfo:
        MoonPayTransaction.from_payload(data)

    assert str(excinfo.value).startswith(f"{field}:")


def test_from_payload_rejects_a_non_object():
    with pytest.raises(ValueError, match="data"):
        MoonPayTransaction.from_payload(["tx_1"])


def test_records_compare_by_value_ignore_raw_and_are_hashable():
    first = MoonPayTransaction.from_payload({"id": "tx_1", "status": "completed", "extra": 1})
    second = MoonPayTransaction.from_payload({"id": "tx_1", "status": "completed", "extra": 2})

    assert first == second
    assert hash(first) == hash(second)
    assert "extra" not in repr(first)
