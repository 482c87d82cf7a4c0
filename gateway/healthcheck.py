"""Container healthcheck of the gateway: `python -m gateway.healthcheck` exits 0 if /health is 200.

Asks Envoy on this container's loopback, over TLS when GATEWAY_TLS_CERT_FILE is set. The
certificate is not checked: it names the public host, not 127.0.0.1, and this probe only asks
whether the local Envoy and its upstreams are healthy.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

PORT = 8000


def main() -> int:
    """0 when the gateway answers /health with 200, else 1."""
    tls = bool(os.environ.get("GATEWAY_TLS_CERT_FILE"))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if tls else 'http'}://127.0.0.1:{PORT}/health"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"gateway unhealthy: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
