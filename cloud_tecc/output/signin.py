"""Sign-in routes: token form, one-time link, OIDC redirect/callback, sign-out, whoami."""

from __future__ import annotations

import html
import logging
from typing import Final

import aiohttp
from aiohttp import web

from cloud_tecc.output.auth import SESSION_COOKIE, Principal
from cloud_tecc.output.gate import Gate
from cloud_tecc.output.oidc import OidcError

log = logging.getLogger("cloud_tecc.output.signin")
_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in — plant analytics</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css"></head>
<body class="signin"><main class="signin-box"><h1>Plant analytics — sign in</h1>
<p class="bad" id="signin-error">{error}</p>
<form method="post" action="/auth/signin">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button></form>
<p class="summary">The admin token of a new installation is in the output service's state
directory (<code>admin.token</code>); <code>./tecc demo</code> prints a one-time link.</p>
{oidc}</main></body></html>
"""


def _page(gate: Gate, error: str = "", status: int = 200) -> web.Response:
    oidc = (
        '<p><a id="oidc-signin" href="/auth/oidc/login">Sign in with your organisation</a></p>'
        if gate.oidc is not None
        else ""
    )
    body = _PAGE.format(error=html.escape(error), oidc=oidc)
    return web.Response(text=body, content_type="text/html", status=status)


def _signed_in(gate: Gate, who: Principal) -> web.Response:
    resp = web.HTTPSeeOther("/")
    gate.sign_in(resp, who)
    log.info("%s signed in (%s, %s)", who.subject, who.role.name.lower(), who.via)
    return resp


class SignIn:
    """The sign-in routes (their access rules are in ``auth.RULES``)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def form(self, _r: web.Request) -> web.Response:
        return _page(self.gate)

    async def submit(self, r: web.Request) -> web.Response:
        data = await r.post()
        token = str(data.get("token", "")).strip()
        who = self.gate.tokens.verify(token)
        if who is None:
            return _page(self.gate, "That token is not valid.", 401)
        return _signed_in(self.gate, who)

    async def once(self, r: web.Request) -> web.Response:
        who = self.gate.sessions.redeem(r.query.get("code", ""))
        if who is None:
            return _page(self.gate, "This sign-in link was used already or has expired.", 401)
        return _signed_in(self.gate, who)

    async def signout(self, r: web.Request) -> web.Response:
        sid = r.cookies.get(SESSION_COOKIE)
        if sid:
            self.gate.sessions.close(sid)
        resp = web.HTTPSeeOther("/auth/signin")
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    async def me(self, r: web.Request) -> web.Response:
        who: Principal = r["principal"]
        return web.json_response({"subject": who.subject, "role": who.role.name.lower()})

    async def oidc_login(self, r: web.Request) -> web.Response:
        if self.gate.oidc is None:
            raise web.HTTPNotFound
        redirect = self.gate.oidc.cfg.redirect_url or f"{r.scheme}://{r.host}/auth/oidc/callback"
        try:
            raise web.HTTPSeeOther(await self.gate.oidc.login_url(redirect))
        except (OidcError, aiohttp.ClientError, TimeoutError) as exc:
            return _page(self.gate, f"The identity provider is not reachable: {exc}", 502)

    async def oidc_callback(self, r: web.Request) -> web.Response:
        if self.gate.oidc is None:
            raise web.HTTPNotFound
        try:
            who = await self.gate.oidc.finish(r.query.get("state", ""), r.query.get("code", ""))
        except (OidcError, aiohttp.ClientError, TimeoutError) as exc:
            return _page(self.gate, f"Sign-in failed: {exc}", 401)
        return _signed_in(self.gate, who)

    def attach(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        app.router.add_get("/auth/signin", self.form)
        app.router.add_post("/auth/signin", self.submit)
        app.router.add_get("/auth/once", self.once)
        app.router.add_post("/auth/signout", self.signout)
        app.router.add_get("/auth/me", self.me)
        app.router.add_get("/auth/oidc/login", self.oidc_login)
        app.router.add_get("/auth/oidc/callback", self.oidc_callback)
