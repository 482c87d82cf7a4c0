"""The Celery worker: takes job ids from Redis and runs the jobs stored in PostgreSQL."""
