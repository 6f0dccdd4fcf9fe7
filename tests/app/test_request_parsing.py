"""The edge's text rule (request_parsing.unstorable_text / storable) is exactly "a NUL or a surrogate"."""
import random

import pytest

from wallet_api.request_parsing import storable, unstorable_text


def _by_the_definition(value: str) -> bool:
    return any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in value)


@pytest.mark.parametrize("value", ["", "plain", "a\x00b", "\x00", "x\ud800y", "\udfff", "\ud7ff\ue000\uffff",
                                   "😀", "\U0010ffff", "\ud83d\ude00", "ünïcödé \u2028"])
def test_unstorable_text_is_a_nul_or_a_surrogate(value):
    assert unstorable_text(value) is _by_the_definition(value)
    assert storable(value) == "".join("\ufffd" if _by_the_definition(ch) else ch for ch in value)
    assert not unstorable_text(storable(value))


def test_random_text_agrees_with_the_definition():
    rng = random.Random(8)
    # Mostly around the edges of the surrogate block, NUL and the rest of the BMP and beyond.
    pool = [0, 1, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF, 0x41]
    for _ in range(2000):
        value = "".join(chr(rng.choice(pool) if rng.random() < 0.7 else rng.randrange(0x110000))
                        for _ in range(rng.randrange(0, 12)))
        assert unstorable_text(value) is _by_the_definition(value)
