"""Celery: the app (`tasks.app`), worker lifecycle (`tasks.worker`), thin tasks per domain."""

import os

# One OpenMP thread per inference call: a worker already runs INFERENCE_THREADS native threads
# per process, and scikit-learn's tree ensembles would start one OpenMP thread per core inside
# each call, all spinning for the same cores as the API. It must be in the environment before
# scikit-learn loads libgomp, which reads it once; a threadpoolctl limit holds only on the thread
# that sets it, never on the native threads inference runs on. An operator's own value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
