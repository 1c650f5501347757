"""The airlock's browser side without a browser: the session relay passes the requester's JSON
routes only (never downloads, reviews or previews), the checkers' pages and the download links are
routes of the VRE service (not of its session socket), and the templates render. The pages
themselves are driven in Chromium by tests/browser/test_airlock_flow.py."""

from __future__ import annotations

import pytest

from vre.settings import Settings


@pytest.mark.parametrize("path,allowed", [
    ("/requests", True), ("/requests/12", True), ("/requests/12/files", True), ("/requests/12/files/3", True),
    ("/requests/12/files/3/update", True), ("/requests/12/check", True), ("/requests/12/submit", True),
    ("/requests/12/withdraw", True), ("/requests/12/record", True), ("/rules/prostate-ai", True),
    ("/requests/12/download", False), ("/requests/12/files/3/download", False), ("/requests/12/reviews", False),
    ("/requests/12/files/3/preview", False), ("/requests/12/release", False), ("/requests/12/../../jobs", False),
    ("", False), ("/requests/x", False),
])
def test_session_relay_passes_the_requesters_json_routes_only(path, allowed):
    from vre_session.airlock import ALLOWED

    assert bool(ALLOWED.fullmatch(path)) is allowed


def test_pages_are_routes_of_the_service_not_of_sessions():
    from vre.api import routes
    from vre.api.airlock_pages import DownloadLink, ReviewListPage, ReviewPage

    full = {r[0]: r[1] for r in routes(Settings()) if isinstance(r[1], type)}
    assert full[r"airlock/?"] is ReviewListPage and full[r"airlock/(\d+)/?"] is ReviewPage
    assert full[r"airlock/(\d+)/download"] is DownloadLink
    assert full[r"airlock/(\d+)/files/(\d+)/download"] is DownloadLink
    sessions = [r[0] for r in routes(Settings(), sessions_only=True)]
    assert not any(p.startswith("airlock") for p in sessions)


@pytest.mark.parametrize("template", ["airlock-list.html", "airlock-review.html"])
def test_templates_render_on_the_hubs_page(template):
    from vre.api.pages import environment

    config = {"api": "/services/vre/api/airlock", "pages": "/services/vre/airlock", "id": 7,
              "decisions": ["approve", "changes", "reject"], "states": ["draft", "submitted"], "state": "",
              "project": ""}

    html = environment().get_template(template).render(
        airlock_config=config, airlock_id=7, airlock_title="<b>results</b>", base_url="/hub/", prefix="/",
        static_url=lambda p, include_version=True: "/hub/static/" + p, user=None, services=[], parsed_scopes={},
        expanded_scopes=set(), no_spawner_check=True, xsrf_token="", announcement=None, version_hash="",
        login_url="/hub/login", logout_url="/hub/logout")
    assert "window.vreAirlock" in html and 'id="airlock-config"' in html
    assert "<b>results</b>" not in html  # the title is escaped
