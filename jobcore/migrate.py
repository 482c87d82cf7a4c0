"""Apply Alembic migrations up to head: `python -m jobcore.migrate` (used by `make run`, tests, compose).

Two roles when DATABASE_MIGRATION_URL names a different user than DATABASE_URL:
- the migration role (the schema's owner, a superuser in `make run` and Compose) runs the
  migrations, so it owns every table, sequence and function they create;
- the application role (DATABASE_URL's user) is created or updated here, as an ordinary login
  role with that URL's password, and gets row access only: SELECT, INSERT, UPDATE, DELETE on
  the tables and use of the sequences, read-only on `alembic_version`. It owns nothing, so it
  can neither alter nor drop the schema, and without superuser it cannot read server files
  (`pg_read_file`), create roles or databases, or run programs (`COPY ... PROGRAM`).
The grants are given again after every upgrade, so tables a new migration adds are covered.
Rotating the application's password is: change DATABASE_URL, run this, restart the processes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from jobcore.database import asyncpg_dsn
from jobcore.settings import get_settings

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# PostgreSQL's own default iteration count for SCRAM-SHA-256 verifiers.
SCRAM_ITERATIONS = 4096

# -- find_role --
FIND_ROLE = "SELECT rolsuper FROM pg_roles WHERE rolname = $1"
# -- current_role_may_manage_roles --
MAY_MANAGE_ROLES = "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
# -- set_app_role -- ({verb} is CREATE or ALTER; identifiers and literals quoted by us)
SET_APP_ROLE = (
    "{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
    " NOBYPASSRLS PASSWORD {verifier}"
)
# -- grant_app_role --
GRANT_APP_ROLE = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role};
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {role};
"""


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config that needs no alembic.ini; the migration URL unless one is given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str | None = None) -> None:
    """Bring the database schema to the latest revision."""
    command.upgrade(alembic_config(database_url), "head")


def scram_sha_256_verifier(password: str, *, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for `password` (RFC 5802/7677), so the plain text is never sent.

    `ALTER ROLE ... PASSWORD '<verifier>'` is taken as is; statement logs then hold no password.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def quote_identifier(name: str) -> str:
    """`name` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as a PostgreSQL string literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


async def provision_app_role(*, migration_url: str, app_url: str) -> None:
    """Create or update DATABASE_URL's role with row access only; nothing if it migrates itself."""
    app = make_url(app_url)
    if not app.username or app.username == make_url(migration_url).username:
        return
    role = quote_identifier(app.username)
    connection = await asyncpg.connect(asyncpg_dsn(migration_url))
    try:
        existing = await connection.fetchrow(FIND_ROLE, app.username)
        may_manage = bool(await connection.fetchval(MAY_MANAGE_ROLES))
        if existing is not None and existing["rolsuper"]:
            # Never demote a superuser someone chose on purpose; its rights stay as they are.
            logger.warning("DATABASE_URL's role %s is a superuser; left unchanged", app.username)
        elif may_manage:
            verifier = scram_sha_256_verifier(app.password or "")
            await connection.execute(
                SET_APP_ROLE.format(
                    verb="CREATE" if existing is None else "ALTER",
                    role=role,
                    verifier=quote_literal(verifier),
                )
            )
        elif existing is None:
            raise RuntimeError(
                f"role {app.username} does not exist and the migration role may not create it"
            )
        await connection.execute(GRANT_APP_ROLE.format(role=role))
    finally:
        await connection.close()


def main() -> None:
    """Migrate as the migration role, then give the application role its rights."""
    settings = get_settings()
    upgrade(settings.migration_database_url)
    asyncio.run(
        provision_app_role(
            migration_url=settings.migration_database_url, app_url=settings.database_url
        )
    )


if __name__ == "__main__":
    main()
