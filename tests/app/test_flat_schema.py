"""FlatSchema dumps exactly what marshmallow's own Schema dumps, only faster."""
import dataclasses
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from marshmallow import Schema, fields, post_dump

from wallet_api.flat_schema import FlatSchema
from wallet_api.wallets import schemas


def as_marshmallow(schema_class: type[FlatSchema], **kwargs) -> Schema:
    """The same schema dumped by marshmallow's own Schema._serialize."""
    plain = type(f"Plain{schema_class.__name__}", (schema_class,), {"_serialize": Schema._serialize})
    return plain(**kwargs)


NOW = dt.datetime(2026, 11, 28, 10, 48, 26, 918182, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class WalletLike:
    id: uuid.UUID
    currency: str
    balance: Decimal | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None = None


def entry(n: int, **overrides) -> dict:
    return {"id": n, "transaction_id": uuid.uuid4(), "amount": Decimal("-1.5"), "balance_after": Decimal("98.5"),
            "currency": "ETH", "created_at": NOW, "kind": "transfer", "reference": None, **overrides}


@pytest.mark.parametrize("schema_class,obj", [
    (schemas.WalletSchema, WalletLike(uuid.uuid4(), "USD", Decimal("12.3"), NOW)),
    (schemas.WalletSchema, WalletLike(uuid.uuid4(), "BTC", None, None)),
    (schemas.WalletSchema, {"id": uuid.uuid4(), "currency": "ETH", "balance": Decimal("0E-18")}),  # keys missing
    (schemas.LedgerEntrySchema, entry(7)),
    (schemas.LedgerEntrySchema, entry(8, reference="r\u2028\x00", balance_after=None)),
    (schemas.TransferSchema, {"id": uuid.uuid4(), "from_wallet_id": uuid.uuid4(), "to_wallet_id": uuid.uuid4(),
                              "amount": Decimal("1"), "currency": "USD", "reference": None, "created_at": NOW}),
])
def test_the_api_response_schemas_dump_as_marshmallow_does(schema_class, obj):
    assert schema_class().dump(obj) == as_marshmallow(schema_class).dump(obj)
    assert schema_class(many=True).dump([obj, obj]) == as_marshmallow(schema_class, many=True).dump([obj, obj])
    assert list(schema_class().dump(obj)) == list(as_marshmallow(schema_class).dump(obj))  # same key order


def test_a_ledger_page_dumps_as_marshmallow_does():
    from wallet_api.pagination import Page

    page = Page(items=[entry(n) for n in range(20, 0, -1)], next_cursor="MTA")
    plain_page = Schema.from_dict({"items": fields.List(fields.Nested(as_marshmallow(schemas.LedgerEntrySchema))),
                                   "next_cursor": fields.String(allow_none=True)})
    assert schemas.LedgerPageSchema().dump(page) == plain_page().dump(page)


class Everything(FlatSchema):
    renamed = fields.String(data_key="outside")
    from_attribute = fields.Integer(attribute="elsewhere")
    dotted = fields.String(attribute="inner.name")
    defaulted = fields.String(dump_default="d")
    called_default = fields.Integer(dump_default=lambda: 42)
    absent = fields.String()
    method = fields.Method("compute")
    function = fields.Function(lambda obj: "f")
    nested = fields.Nested(schemas.WalletSchema, allow_none=True)
    custom = type("Custom", (fields.String,), {"serialize": lambda self, attr, obj, accessor=None, **kw: "own"})()
    odd_get = type("OddGet", (fields.String,), {
        "get_value": lambda self, obj, attr, accessor=None, default=None: "by get_value"})()
    none_value = fields.UUID(allow_none=True)

    def compute(self, obj):
        return "m"

    @post_dump
    def mark(self, data, **kwargs):
        return {**data, "hooked": True}


class Accessing(Everything):
    def get_attribute(self, obj, attr, default):
        value = super().get_attribute(obj, attr, default)
        return f"accessed {value}" if isinstance(value, str) else value


@pytest.mark.parametrize("schema_class", [Everything, Accessing])
@pytest.mark.parametrize("kwargs", [{}, {"only": ("renamed", "dotted", "nested")}, {"exclude": ("method",)}])
def test_every_kind_of_field_dumps_as_marshmallow_does(schema_class, kwargs):
    obj = {"renamed": "r", "elsewhere": 3, "inner": {"name": "n"}, "none_value": None,
           "nested": WalletLike(uuid.uuid4(), "SOL", Decimal("1.000000001"), NOW)}
    mine, theirs = schema_class(**kwargs), as_marshmallow(schema_class, **kwargs)
    assert mine.dump(obj) == theirs.dump(obj)
    assert mine.dump([obj, {}], many=True) == theirs.dump([obj, {}], many=True)
    assert mine.dump(WalletLike(uuid.uuid4(), "USD", None, NOW)) == theirs.dump(WalletLike(uuid.uuid4(), "USD", None, NOW))
