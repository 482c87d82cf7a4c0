"""The job domain shared by the gRPC server and the Celery worker.

Settings, the database schema and queries, the job math and the job events
live here once; `server` and `worker` are thin adapters around it.
"""
