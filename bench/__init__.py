"""`tripq bench`: tripq against a no-op ceiling, an in-process model and the older Celery design."""
