"""Helpers for the console's tests: a signed-in HTTP client (httpx, cookies kept) and form tokens read from pages."""

from __future__ import annotations

import re

import httpx

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
NONCE_RE = re.compile(r'name="nonce" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def sign_in(url: str, token: str) -> tuple[httpx.Client, httpx.Response]:
    """A client signed in to the console at ``url`` with ``token``, and the sign-in's answer."""
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/ui/login")
    match = NONCE_RE.search(form.text)
    assert match, form.text[:300]
    answer = client.post("/ui/login", data={"token": token, "nonce": match.group(1), "next": "/ui"})
    return client, answer
