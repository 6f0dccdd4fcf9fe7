from email_validator import EmailNotValidError, validate_email
from marshmallow import Schema, ValidationError, fields, validate

PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 128


def normalise_email(value: str) -> str:
    """Lower-cased, syntax-checked address; no DNS lookups (the API answers offline)."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(str(exc)) from None
    return result.normalized.lower()


class EmailField(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        return normalise_email(super()._deserialize(value, attr, data, **kwargs).strip())


class RegisterSchema(Schema):
    email = EmailField(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(
        min=PASSWORD_MIN_LENGTH, max=PASSWORD_MAX_LENGTH,
        error=f"Password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters."))


class LoginSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH))


class UserSchema(Schema):
    id = fields.UUID(dump_only=True)
    email = fields.String(dump_only=True)
    role = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class TokenPairSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer(metadata={"description": "Access token lifetime in seconds"})
