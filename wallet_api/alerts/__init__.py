"""Alerts: what the system hands to a human. Raised by jobs and workers, resolved by an admin."""
