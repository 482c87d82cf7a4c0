"""Apply Alembic migrations up to head: `python -m jobcore.migrate` (used by `make run`, tests, compose)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config that needs no alembic.ini; DATABASE_URL is used unless a URL is given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str | None = None) -> None:
    """Bring the database schema to the latest revision."""
    command.upgrade(alembic_config(database_url), "head")


if __name__ == "__main__":
    upgrade()
