"""Celery: the app (`tasks.app`), worker lifecycle (`tasks.worker`), thin tasks per domain."""

from config import limit_openmp_threads

# Before any task module imports scikit-learn (see config.limit_openmp_threads).
limit_openmp_threads()
