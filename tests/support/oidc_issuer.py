"""A small OpenID Connect issuer for tests: discovery, JWKS, authorization code + PKCE, token.

Run as its own process (``python -m tests.support.oidc_issuer --port P``).
``/authorize`` signs in the user named by ``--user`` without a form (the
test plays the user) and insists on S256 PKCE; ``/token`` checks the code
verifier. ``/mint`` hands out bearer JWTs with chosen claims, for tests of
the API's bearer path. Tokens are RS256, signed with joserfc.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey


def build_app(issuer: str, client_id: str, user: str, role: str) -> web.Application:
    """The issuer's routes."""
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
    codes: dict[str, dict[str, Any]] = {}

    def sign(claims: dict[str, Any]) -> str:
        now = int(time.time())
        body = {"iss": issuer, "iat": now, "exp": now + 300, **claims}
        return jwt.encode({"alg": "RS256", "kid": "k1"}, body, key)

    async def discovery(_r: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def jwks(_r: web.Request) -> web.Response:
        return web.json_response({"keys": [key.as_dict(private=False)]})

    async def authorize(r: web.Request) -> web.Response:
        q = r.query
        if q.get("client_id") != client_id or q.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request"}, status=400)
        code = secrets.token_urlsafe(16)
        codes[code] = {
            "challenge": q["code_challenge"],
            "nonce": q.get("nonce", ""),
            "redirect": q["redirect_uri"],
        }
        query = urlencode({"code": code, "state": q.get("state", "")})
        raise web.HTTPFound(f"{q['redirect_uri']}?{query}")

    async def token(r: web.Request) -> web.Response:
        form = await r.post()
        grant = codes.pop(str(form.get("code", "")), None)
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if (
            grant is None
            or digest.rstrip(b"=").decode() != grant["challenge"]
            or form.get("redirect_uri") != grant["redirect"]
            or form.get("client_id") != client_id
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        claims = {"sub": user, "preferred_username": user, "aud": client_id, "tecc_role": role}
        return web.json_response(
            {
                "token_type": "Bearer",
                "id_token": sign({**claims, "nonce": grant["nonce"]}),
                "access_token": sign(claims),
            }
        )

    async def mint(r: web.Request) -> web.Response:
        claims: dict[str, Any] = {"sub": r.query.get("sub", "svc")}
        for name in ("aud", "tecc_role"):
            if name in r.query:
                claims[name] = r.query[name]
        if "exp" in r.query:
            claims["exp"] = int(r.query["exp"])
        return web.Response(text=sign(claims))

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    app.router.add_get("/mint", mint)
    return app


def main() -> None:
    """Serve until killed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", default="dashboard")
    ap.add_argument("--user", default="olga")
    ap.add_argument("--role", default="operator")
    args = ap.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    web.run_app(
        build_app(issuer, args.client_id, args.user, args.role),
        host="127.0.0.1",
        port=args.port,
        print=None,
    )


if __name__ == "__main__":
    main()
