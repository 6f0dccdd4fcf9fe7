from flask import request
from flask.views import MethodView
from flask_jwt_extended import get_jwt_identity, jwt_required

from wallet_api.auth import service
from wallet_api.auth.schemas import (
    LoginSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)
from wallet_api.errors import NotFound, Unauthorized
from wallet_api.auth.limits import auth_budget, login_failures
from wallet_api.request_parsing import Blueprint

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Registration, login and token rotation")
blueprints = [blp]


def _bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send the refresh token as 'Authorization: Bearer <token>'.",
                           error="missing_refresh_token")
    return token.strip()


@blp.route("/register")
class Register(MethodView):
    decorators = [auth_budget]

    @blp.arguments(RegisterSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(409, description="Email already registered")
    def post(self, data):
        """Create a USER account"""
        return service.register_user(email=data["email"], password=data["password"])


@blp.route("/login")
class Login(MethodView):
    decorators = [login_failures, auth_budget]

    @blp.arguments(LoginSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid email or password")
    def post(self, data):
        """Exchange credentials for an access token (15 min) and a refresh token"""
        return service.login(email=data["email"], password=data["password"])


@blp.route("/refresh")
class Refresh(MethodView):
    decorators = [auth_budget]

    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid, expired or reused refresh token")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self):
        """Rotate the refresh token (Bearer) for a new pair; a reused token revokes its family"""
        return service.refresh(refresh_token=_bearer_token())


@blp.route("/logout")
class Logout(MethodView):
    decorators = [auth_budget]

    @blp.response(204)
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self):
        """Revoke the refresh token (Bearer) and its family"""
        service.logout(refresh_token=_bearer_token())


@blp.route("/me")
class Me(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, UserSchema)
    @blp.alt_response(404, description="The token's user no longer exists")
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self):
        """The authenticated user"""
        import uuid

        user = service.get_user(user_id=uuid.UUID(get_jwt_identity()))
        if user is None:
            raise NotFound("User not found.")
        return user
