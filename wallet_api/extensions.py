"""Extension singletons, bound to an app in `create_app`."""
from flask_limiter import Limiter
from flask_migrate import Migrate
from wallet_api.errors import WalletApi
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from wallet_api.database import ReconnectingSession
from wallet_api.jwt_manager import RememberingJWTManager
from wallet_api.ratelimit import rate_limit_key


class Base(DeclarativeBase):
    # Deterministic constraint names, so migrations can name what they alter or drop.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


db = SQLAlchemy(model_class=Base, session_options={"class_": ReconnectingSession})
migrate = Migrate()
api = WalletApi()
jwt = RememberingJWTManager()  # remembers verified access tokens: wallet_api/jwt_manager.py
limiter = Limiter(rate_limit_key)
