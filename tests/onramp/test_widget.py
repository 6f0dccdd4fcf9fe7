"""Buy-widget URLs: signed the way MoonPay recomputes it, with every value encoded."""

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from wallet_api.onramp.widget import build_widget_url, verify_widget_url

BASE = "https://buy-sandbox.moonpay.com"
PK = "pk_test_123"
SK = "sk_test_456"


def build(params, **overrides):
    kwargs = {"base_url": BASE, "publishable_key": PK, "secret_key": SK, "params": params}
    kwargs.update(overrides)
    return build_widget_url(**kwargs)


def test_known_answer_matches_an_independent_hmac_over_the_search_string():
    url = build({"currencyCode": "eth", "externalTransactionId": "ramp_1"})

    search = f"?apiKey={PK}&currencyCode=eth&externalTransactionId=ramp_1"
    digest = hmac.new(SK.encode(), search.encode(), hashlib.sha256).digest()
    expected_signature = base64.b64encode(digest).decode()
    assert url == f"{BASE}{search}&signature={quote(expected_signature, safe='')}"


def test_the_signature_verifies_and_a_changed_url_does_not():
    url = build({"walletAddress": "0xc216eD2D6c295579718dbd4a797845CdA70B3C36", "currencyCode": "eth"})

    assert verify_widget_url(url, SK)
    assert not verify_widget_url(url, "sk_other")
    assert not verify_widget_url(url.replace("0xc216", "0xdead"), SK)
    assert not verify_widget_url(url.replace("currencyCode=eth", "currencyCode=btc"), SK)
    assert not verify_widget_url(url + "&baseCurrencyAmount=1", SK)


def test_values_with_spaces_ampersands_and_equals_signs_are_encoded():
    url = build({"email": "a b&c=d+e@example.com", "redirectURL": "https://x.test/?a=1&b=2"})

    query = urlsplit(url).query
    assert "a%20b%26c%3Dd%2Be%40example.com" in query
    assert "https%3A%2F%2Fx.test%2F%3Fa%3D1%26b%3D2" in query
    # Decoding gives the original values back, and no value leaked into an extra parameter.
    pairs = parse_qsl(query, keep_blank_values=True)
    assert [name for name, _ in pairs] == ["apiKey", "email", "redirectURL", "signature"]
    assert dict(pairs)["email"] == "a b&c=d+e@example.com"
    assert verify_widget_url(url, SK)


def test_the_signature_is_the_last_parameter_and_is_itself_encoded():
    url = build({"currencyCode": "eth", "zzz": "last-key"})

    query = urlsplit(url).query
    last_name, last_value = query.rsplit("&", 1)[1].split("=", 1)
    assert last_name == "signature"
    # base64 may contain + / =, which must not reach the browser raw.
    assert not set("+/=") & set(last_value)


def test_the_api_key_comes_first_and_params_follow_in_a_stable_order():
    first = build({"b": "2", "a": "1", "c": "3"})
    second = build({"c": "3", "a": "1", "b": "2"})

    assert first == second
    assert urlsplit(first).query.startswith(f"apiKey={PK}&a=1&b=2&c=3&signature=")


def test_unicode_values_are_percent_encoded_as_utf8():
    url = build({"email": "zoë@example.com"})

    assert "zo%C3%AB%40example.com" in url
    assert verify_widget_url(url, SK)


@pytest.mark.parametrize("name", ["signature", "apiKey", "bad name", "a&b", ""])
def test_reserved_or_unsafe_parameter_names_are_refused(name):
    with pytest.raises(ValueError):
        build({name: "x"})


def test_non_string_values_are_refused():
    with pytest.raises(TypeError):
        build({"baseCurrencyAmount": 100})


def test_a_base_url_with_its_own_query_is_refused():
    with pytest.raises(ValueError):
        build({}, base_url=f"{BASE}?foo=1")


def test_an_empty_secret_key_is_refused():
    with pytest.raises(ValueError):
        build({}, secret_key="")


@pytest.mark.parametrize(
    "url",
    [
        BASE,
        f"{BASE}?apiKey={PK}",
        f"{BASE}?apiKey={PK}&signature=",
        f"{BASE}?apiKey={PK}&signature=abc&currencyCode=eth",
    ],
)
def test_unsigned_or_misplaced_signatures_do_not_verify(url):
    assert not verify_widget_url(url, SK)


def test_a_signature_not_in_last_place_does_not_verify():
    url = build({"currencyCode": "eth"})

    assert not verify_widget_url(url + "&extra=1", SK)
