"""The operators' web console at ``/ui``, on the API's port: server-rendered Jinja2 pages over the same service
and store calls as the API's routes (no second source of truth), htmx (vendored, pinned, with its integrity
hash) for the live parts, readable without JavaScript.

Sign-in takes an API token and gives an HttpOnly, SameSite=Strict session cookie (``session.py``); every
form carries the session's CSRF token; what a role may not do is not offered, and refused anyway.
``create_app`` mounts it with ``mount(app, service, auth)``. Jinja2 and the templates load when it is mounted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fleet.api_access import Authenticator
    from fleet.service import FleetService


def mount(app: FastAPI, service: FleetService, auth: Authenticator) -> None:
    """Serve the console under ``/ui`` of ``app`` (the access middleware leaves ``/ui`` to the console)."""
    from fleet.ui.actions import action_routes
    from fleet.ui.capture import capture_routes
    from fleet.ui.console import Console
    from fleet.ui.pages import page_routes

    console = Console.create(service, auth)
    console.install(app)
    page_routes(app, console)
    action_routes(app, console)
    capture_routes(app, console)
