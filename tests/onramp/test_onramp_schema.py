"""The database itself refuses on-ramp rows that break the pipeline's rules, whatever code writes them."""
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from wallet_api.extensions import db


def _insert_event(**overrides):
    values = dict(id=uuid.uuid4(), provider="moonpay", event_key="k" * 64, event_type="transaction_updated",
                  external_id="mp_1", external_status="completed", payload="{}", status="pending")
    values.update(overrides)
    db.session.execute(text(f"INSERT INTO webhook_events ({', '.join(values)}) "
                            f"VALUES ({', '.join(':' + k for k in values)})"), values)
    return values["id"]


def _refused(statement):
    with pytest.raises(IntegrityError):
        with db.session.begin_nested():
            statement()


def test_an_event_is_stored_once_per_provider_and_key(app_ctx):
    _insert_event()
    _refused(lambda: _insert_event())
    _insert_event(provider="other")  # another provider's key space
    db.session.rollback()


def test_event_states_are_checked(app_ctx):
    _refused(lambda: _insert_event(status="done"))
    _refused(lambda: _insert_event(status="retry_scheduled"))  # a retry needs a time
    _refused(lambda: _insert_event(status="processed"))  # processed needs a time
    _refused(lambda: _insert_event(attempts=-1))
    db.session.rollback()


def test_a_completed_onramp_transaction_must_name_its_credit(app_ctx, user, crypto_wallet):
    wallet_id = crypto_wallet(user, "ETH")
    base = dict(id=uuid.uuid4(), user_id=user.id, wallet_id=wallet_id, currency="ETH", base_currency="USD",
                base_amount=10)

    def insert(**overrides):
        values = {**base, "id": uuid.uuid4(), **overrides}
        db.session.execute(text(f"INSERT INTO onramp_transactions ({', '.join(values)}) "
                                f"VALUES ({', '.join(':' + k for k in values)})"), values)

    insert()
    _refused(lambda: insert(status="completed"))
    _refused(lambda: insert(status="refunded"))
    _refused(lambda: insert(base_currency="JPY"))
    _refused(lambda: insert(base_amount=0))
    insert(moonpay_transaction_id="mp_1")
    _refused(lambda: insert(moonpay_transaction_id="mp_1"))
    db.session.rollback()


def test_one_unresolved_dlq_entry_per_event_and_resolutions_are_attributed(app_ctx, admin):
    event_id = _insert_event(status="dead_lettered")

    def park(**overrides):
        values = dict(id=uuid.uuid4(), provider="moonpay", external_id="mp_1", event_id=event_id,
                      event_type="transaction_updated", payload="{}", failure_reason="x", attempts=6, **overrides)
        db.session.execute(text(f"INSERT INTO dead_letter_queue ({', '.join(values)}) "
                                f"VALUES ({', '.join(':' + k for k in values)})"), values)

    park()
    _refused(lambda: park())
    _refused(lambda: park(resolved_at="2026-11-28T12:00:00Z", resolution="replay"))  # no admin, no note
    park(resolved_at="2026-11-28T12:00:00Z", resolution="discard", resolved_by=admin.id, resolution_note="ok")
    db.session.rollback()


def test_the_moonpay_api_factory_uses_the_configured_base_url_and_key(app_ctx):
    import httpx

    from wallet_api.onramp.moonpay_client import MoonPayApi, moonpay_api

    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["auth"] = str(request.url), request.headers["Authorization"]
        return httpx.Response(404)

    settings = app_ctx.config["SETTINGS"].replace(moonpay_api_base_url="https://moonpay.stub.test")
    api = moonpay_api(settings)
    assert isinstance(api, MoonPayApi)
    api._client._transport = httpx.MockTransport(handler)
    assert api.get_transaction("tx_1") is None
    assert seen == {"url": "https://moonpay.stub.test/v1/transactions/tx_1", "auth": "Api-Key sk_test_moonpay_secret"}
