"""API keys issued by the service: made and revoked in PostgreSQL, verified from memory.

A key is `jobs_<8 hex>_<43 base64url>` (jobcore.keys.material); only its SHA-256 is stored.
jobcore.keys.store.KeyStore makes, lists and revokes keys; every server holds them all in a
jobcore.keys.ring.KeyRing, re-read every API_KEY_REFRESH_SECONDS under its supervisor, so
verifying a key costs no database round trip and a revocation reaches every server process
within that time. The first admin key of a deployment is made by `python -m jobcore.keys
create`, straight in the database.

This module and jobcore.keys.material, .records and .expiry do no I/O and import nothing
heavy, so the `jobs` CLI can use them; the store and the ring are imported from their modules.
"""
