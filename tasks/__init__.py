"""Celery: the app (`tasks.app`), worker lifecycle (`tasks.worker`), thin tasks per domain."""
