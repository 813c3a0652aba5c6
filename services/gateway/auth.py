"""API keys: `Authorization: Bearer <key>` -> tenant.

Keys are held only as SHA-256 digests and compared in constant time against every
configured digest, so neither memory dumps nor response timing reveal a key.
"""

from __future__ import annotations

import hashlib
import hmac


class ApiKeys:
    def __init__(self, keys: dict[str, str]):
        self._digests = [(hashlib.sha256(key.encode()).digest(), tenant) for key, tenant in keys.items()]

    def __len__(self) -> int:
        return len(self._digests)

    def tenant_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for candidate, tenant in self._digests:  # no early exit: constant work per request
            if hmac.compare_digest(candidate, digest):
                found = tenant
        return found
