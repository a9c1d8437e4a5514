"""Plain HTTP only on a loopback address, at either end of encrypted diagnosis.

A hospital's ciphertexts and keys are not secret, but the model hash it pins and the
answers it decrypts must come from the service: over plain HTTP anyone on the network
path could forge both.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
