"""gunicorn entry point: `gunicorn -c gunicorn.conf.py wsgi:app`. Fails fast on bad config."""
from wallet_api import create_app

app = create_app()
