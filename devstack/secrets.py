"""The stack's generated passwords: one file each in a folder only its owner can open.

Each secret is created on first use and kept, so a restart finds the same credentials in the
data it left. The folder is 0700 and every file 0600; a file is written under a temporary
name and renamed, so a crash never leaves a half-written password behind. The development API
key is kept here too, though the service mints it (devstack.stack), not new_secret().
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# 32 random bytes, URL-safe base64: usable in a database or Redis URL without quoting.
_SECRET_BYTES = 32

POSTGRES_SUPERUSER = "postgres-superuser-password"
POSTGRES_APP = "postgres-app-password"
REDIS_ADMIN = "redis-admin-password"
REDIS_APP = "redis-app-password"
FLOWER = "flower-password"
# Signs ListJobs page tokens (PAGE_TOKEN_SECRET), the same for every server process.
PAGE_TOKENS = "page-token-secret"
# make run's development API key (tenant `default`, every scope), minted by the stack itself.
API_KEY = "api-key"


def new_secret() -> str:
    """A fresh random password."""
    return secrets.token_urlsafe(_SECRET_BYTES)


class SecretStore:
    """Named secrets in `folder` (created 0700); each file holds one value and is 0600."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def path(self, name: str) -> Path:
        """Where the secret `name` is kept."""
        return self.folder / name

    def read(self, name: str) -> str | None:
        """The stored value of `name`, or None if there is none yet."""
        try:
            value = self.path(name).read_text().strip()
        except FileNotFoundError:
            return None
        return value or None

    def write(self, name: str, value: str) -> None:
        """Store `value` as `name`, readable by this user only."""
        self._ensure_folder()
        target = self.path(name)
        temporary = target.with_name(f".{name}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(value + "\n")
        temporary.chmod(0o600)
        temporary.replace(target)

    def get(self, name: str) -> str:
        """The value of `name`, generated and stored on first use."""
        value = self.read(name)
        if value is None:
            value = new_secret()
            self.write(name, value)
        self._ensure_folder()
        return value

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Also tightens a folder an older run (or a umask) left open.
        self.folder.chmod(0o700)
        for entry in self.folder.iterdir():
            if entry.is_file():
                entry.chmod(0o600)
