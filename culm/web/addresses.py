"""Client addresses as per-address limits count them: no FastAPI here, so the worker's metrics
endpoint and the command line import it without the ``web`` extra."""

from __future__ import annotations

import ipaddress


def address_key(host: str) -> str:
    """The client ``host`` counts as for a per-address limit (see :func:`culm.web.auth.client_key`)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
