"""Verifies tokens against Signet's live JWKS with PyJWT's PyJWKClient.

Usage: verify_pyjwt.py JWKS_URL ISSUER TOKEN... ; prints one JSON line per token:
{"valid": true, "sub": ...} or {"valid": false, "error": ...}.
"""
import json
import sys

import jwt

jwks_url, issuer, tokens = sys.argv[1], sys.argv[2], sys.argv[3:]
# No caching between tokens: each verification sees the JWKS as it is now.
client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, cache_keys=False)
for token in tokens:
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key,
            algorithms=[key.algorithm_name],
            issuer=issuer,
            options={"verify_aud": False, "require": ["exp", "iss", "iat"]},
        )
        print(json.dumps({"valid": True, "sub": claims.get("sub")}))
    except Exception as e:  # every failure is a result, not a crash
        print(json.dumps({"valid": False, "error": f"{type(e).__name__}: {e}"}))
