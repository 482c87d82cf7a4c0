"""Principals the tests act as when they call the store directly, without a server."""

from __future__ import annotations

from jobcore.identity import ALL_SCOPES, DEFAULT_TENANT, Principal

# The tenant `make run`'s development key and the test stack's key belong to.
TEST_OWNER = Principal(DEFAULT_TENANT, ALL_SCOPES, "test")
