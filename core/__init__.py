"""The domain: schemas, errors, the model, the job client; free of FastAPI and of Celery."""
