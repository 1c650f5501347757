"""The catalogue's JSON API (``vre.api.catalogue``), the route sessions reach on the VRE service's
unix socket: records only (never a path), what each of the caller's projects holds, the filters,
bad filters and missing scopes refused with a message; then the session's relay call
(``vre_session.jobs.service_request``) over that socket, with a stand-in for the hub's auth."""

import json

import pytest
import requests
from sqlalchemy import select
from tornado.netutil import bind_unix_socket
from tornado.testing import bind_unused_port

from fakehub import FakeHubAuth, served

from vre import access_requests as AR
from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.roles import CATALOGUE_READ_SCOPE, CATALOGUE_SCOPE, load_roles
from vre.settings import Settings

LUNG = {"title": "Lung CT record", "description": "Screening CT", "condition": "Lung cancer",
        "interoperability_tier": 2, "modalities": ["CT"], "body_parts": ["CHEST"], "num_subjects": 4}
PROSTATE = {"title": "Prostate MR record", "condition": "Prostate cancer", "interoperability_tier": 3,
            "modalities": ["MR"], "body_parts": ["PROSTATE"], "num_subjects": 3}
KIDNEY = {"title": "Kidney CT record", "condition": "Kidney cancer", "interoperability_tier": 1,
          "modalities": ["CT"], "body_parts": ["ABDOMEN"]}
#: token -> (user, scopes): alice's session (the server role's scopes), a token without the scope
TOKENS = {"alice-server": ("alice", ["custom:vre-jobs", CATALOGUE_READ_SCOPE]), "bare": ("alice", []),
          # her lung-screening session's server token, as the hub expands the server role's scopes
          "alice-lung-session": ("alice", [CATALOGUE_READ_SCOPE, "access:servers!server=alice/lung-screening",
                                           "users:activity!user=alice"]),
          # a token of hers with the user role's scopes: every server of hers, so no one session
          "alice-browser": ("alice", [CATALOGUE_READ_SCOPE, "access:servers!user=alice",
                                      "access:servers!server=alice/lung-screening"])}


def by_token(handler):
    """The caller of ``TOKENS`` named by the request's Authorization header."""
    token = handler.request.headers.get("Authorization", "").removeprefix("token ")
    if token not in TOKENS:
        return None
    name, scopes = TOKENS[token]
    return {"name": name, "kind": "user", "scopes": scopes}


@pytest.fixture
def service(tmp_path, monkeypatch):
    """The service's sessions-only app (what its unix socket serves) on a loopback port and on a
    unix socket; alice in lung-screening (lung-ct granted, kidney-ct asked for) and in prostate-ai
    (prostate-mri batch-only). Yields (settings, base URL, socket path)."""
    from vre.api.base import ServiceHandler
    from vre.api.service import make_app

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", db_url=url)
    with vdb.session_scope(url) as db:
        add_account(db, "alice", role="researcher", password="alice-password-1")
        for slug, record in (("lung-ct", LUNG), ("prostate-mri", PROSTATE), ("kidney-ct", KIDNEY)):
            db.add(vdb.Dataset(slug=slug, title=slug, path=f"/srv/secret/{slug}", catalog=record))
        db.flush()
        for project in ("lung-screening", "prostate-ai"):
            P.create_project(db, project, project)
            P.add_member(db, project, "alice")
        P.grant(db, "lung-screening", "lung-ct")
        P.grant(db, "prostate-ai", "prostate-mri", mode="batch-only")
    AR.create(settings, AR.Actor("alice"), "lung-screening", "kidney-ct", mode="interactive",
              justification="Compare screening findings with kidney CT.", intended_use="Batch inference only.")
    monkeypatch.setattr(ServiceHandler, "_hub_auth", FakeHubAuth(by_token))
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/vre/")
    sock, port = bind_unused_port()
    path = str(tmp_path / "vre.sock")
    unix = bind_unix_socket(path)  # bound before the test runs: the server thread may start late
    with served(lambda: make_app(settings, sessions_only=True), sock, unix):
        yield settings, f"http://127.0.0.1:{port}/services/vre/api/catalogue", path


@pytest.fixture
def catalogue(service):
    """The catalogue listener (``make_app(catalogue_only=True)``, Kubernetes' ``k8s_catalogue_port``)
    over ``service``'s world. Yields (settings, its base URL)."""
    from vre.api.service import make_app

    settings = service[0]
    sock, port = bind_unused_port()
    with served(lambda: make_app(settings, catalogue_only=True), sock):
        yield settings, f"http://127.0.0.1:{port}/services/vre/api"


def get(url, token="alice-server", **params):
    return requests.get(url, params=params, headers={"Authorization": f"token {token}"}, timeout=30)


def test_sessions_reach_the_read_only_route_and_their_token_carries_only_reading():
    from vre.api import routes
    from vre.api.catalogue import CatalogueAPIHandler

    for sessions_only in (True, False):
        found = [r for r in routes(Settings(), sessions_only=sessions_only) if r[0] == r"api/catalogue/?"]
        assert [r[1] for r in found] == [CatalogueAPIHandler]
    roles = {r["name"]: r for r in load_roles()}
    assert CATALOGUE_READ_SCOPE in roles["server"]["scopes"] and CATALOGUE_SCOPE not in roles["server"]["scopes"]
    assert CATALOGUE_READ_SCOPE in roles["user"]["scopes"]  # a token's scopes are its owner's at most


def test_records_without_paths_with_what_each_project_holds(service):
    _, url, _ = service
    r = get(url)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    assert "/srv/secret" not in r.text and '"path"' not in r.text
    body = r.json()
    access = {d["slug"]: d["access"] for d in body["datasets"]}
    assert access == {
        "kidney-ct": {"lung-screening": "requested", "prostate-ai": "not granted"},
        "lung-ct": {"lung-screening": "granted", "prostate-ai": "not granted"},
        "prostate-mri": {"lung-screening": "not granted", "prostate-ai": "batch-only"}}
    assert body["facets"]["modality"] == ["CT", "MR"] and body["facets"]["tier"] == ["1", "2", "3"]
    assert [p["slug"] for p in body["projects"]] == ["lung-screening", "prostate-ai"]
    assert [d["slug"] for d in get(url, modality="ct").json()["datasets"]] == ["kidney-ct", "lung-ct"]
    assert [d["slug"] for d in get(url, modality="CT", body_part="abdomen").json()["datasets"]] == ["kidney-ct"]
    assert [d["slug"] for d in get(url, condition="Prostate cancer", tier="3").json()["datasets"]] == ["prostate-mri"]
    assert get(url, tier="9").json()["datasets"] == []


def test_a_sessions_token_sees_its_own_project_only(service):
    """Code in alice's lung-screening session learns what lung-screening holds and asks, not her
    other projects (their names, grants, requests); her other tokens see all her projects."""
    _, url, _ = service
    body = get(url, token="alice-lung-session").json()
    assert [p["slug"] for p in body["projects"]] == ["lung-screening"]
    assert {d["slug"]: d["access"] for d in body["datasets"]} == {
        "kidney-ct": {"lung-screening": "requested"}, "lung-ct": {"lung-screening": "granted"},
        "prostate-mri": {"lung-screening": "not granted"}}
    assert "prostate-ai" not in json.dumps(body)
    assert [p["slug"] for p in get(url, token="alice-browser").json()["projects"]] == ["lung-screening", "prostate-ai"]


def test_bad_filters_and_missing_scopes_are_refused_with_a_message(service):
    _, url, _ = service
    r = get(url, colour="red")
    assert r.status_code == 400 and r.json()["message"] == (
        "unknown filter 'colour': the filters are modality, body_part, condition, tier")
    r = get(url, token="bare")
    assert r.status_code == 403 and CATALOGUE_READ_SCOPE in r.json()["message"]
    assert get(url, token="nobody").status_code == 403
    assert requests.post(url, headers={"Authorization": "token alice-server"}, timeout=30).status_code == 405


def test_the_sessions_relay_reaches_it_over_the_unix_socket(service, monkeypatch):
    from vre_session.catalogue import ROUTES, CatalogueProxyHandler
    from vre_session.jobs import service_request

    _, _, path = service
    monkeypatch.setenv("VRE_API_URL", "http+unix://" + path.replace("/", "%2F") + "/services/vre/api")
    status, body = service_request("catalogue", "GET", "?modality=MR", token="alice-server")
    assert status == 200 and [d["slug"] for d in body["datasets"]] == ["prostate-mri"]
    assert "/srv/secret" not in json.dumps(body)
    assert ROUTES == [(r"/vre/api/catalogue/?", CatalogueProxyHandler)]
    assert CatalogueProxyHandler.SUPPORTED_METHODS == ("GET",)  # read only: nothing else is relayed

    class Asked:  # what the Lab asks: its cache-busting parameter is not a filter and stays here
        args = {"modality": "MR", "tier": "", "1796454505958": ""}

        def get_query_argument(self, name, default):
            return self.args.get(name, default)
    assert CatalogueProxyHandler.query(Asked()) == "modality=MR"


def ticket_get(url, ticket, **kw):
    return requests.get(url, headers={"Authorization": f"vre-ticket {ticket}"}, timeout=30, **kw)


def test_a_pod_fetches_the_catalogue_files_its_ticket_names_and_no_others(service, catalogue):
    """``api/catalogue/<slug>/<file>`` (what a pod's first container fetches under claims): the
    files of a dataset the ticket's start mounts, while its project's grants still mount it in the
    ticket's role (and a Job's job has not ended); no JupyterHub token opens it (a member mints
    those, narrowed to any of her servers, anywhere). Only the catalogue listener serves it, and
    it serves nothing else (batch pods reach it: a held job's code must find no API there)."""
    from vre.api import routes
    from vre.api.catalogue import CatalogueFileHandler
    from vre.catalog import tickets

    settings, api = catalogue
    url = f"{api}/catalogue"
    for slug in ("lung-ct", "prostate-mri"):
        folder = settings.catalog_dir / slug
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"slug": slug}))
        (folder / "index.sqlite").write_bytes(b"SQLite format 3\x00" + slug.encode() * 5000)
    ticket = tickets.make(settings, "lung-screening", ["lung-ct"])
    r = ticket_get(f"{url}/lung-ct/index.sqlite", ticket)
    assert r.status_code == 200 and r.content == (settings.catalog_dir / "lung-ct" / "index.sqlite").read_bytes()
    assert r.headers["Content-Length"] == str(len(r.content))
    assert ticket_get(f"{url}/lung-ct/record.json", ticket).json() == {"slug": "lung-ct"}
    # not named by the ticket; named, but not mounted in the project (batch-only elsewhere, asked for, unknown)
    assert ticket_get(f"{url}/prostate-mri/record.json", ticket).status_code == 404
    for slug in ("prostate-mri", "kidney-ct", "no-such"):
        wide = tickets.make(settings, "lung-screening", [slug])
        r = ticket_get(f"{url}/{slug}/record.json", wide)
        assert r.status_code == 404 and "no dataset" in r.json()["message"], r.text
    # a batch pod's ticket names its role, which decides what the grants mount: prostate-ai's
    # batch-only dataset is its held workers' alone, lung-ct is its sessions' and workers'
    for role, slug, status in (("held", "prostate-mri", 200), ("worker", "prostate-mri", 404),
                               ("session", "prostate-mri", 404), ("worker", "lung-ct", 200)):
        project = "prostate-ai" if slug == "prostate-mri" else "lung-screening"
        r = ticket_get(f"{url}/{slug}/record.json", tickets.make(settings, project, [slug], role=role))
        assert r.status_code == status, (role, slug, r.text)
    with pytest.raises(ValueError, match="no catalogue ticket for a 'scheduler' pod"):
        tickets.make(settings, "lung-screening", ["lung-ct"], role="scheduler")
    # a ticket made before tickets named a role is a session's, never a held worker's
    import base64
    import hashlib
    import hmac
    old = base64.urlsafe_b64encode(json.dumps({"p": "prostate-ai", "s": ["prostate-mri"], "e": 2**40}).encode()
                                   ).decode().rstrip("=")
    old += "." + hmac.new(tickets._key(settings), old.encode(), hashlib.sha256).hexdigest()
    assert tickets.check(settings, old).role == "session"
    assert ticket_get(f"{url}/prostate-mri/record.json", old).status_code == 404
    # a Kubernetes Job's ticket lasts while its job has not ended (and is its project's job)
    with vdb.session_scope(settings.vre_db_url) as db:
        lung = db.scalar(select(vdb.Project).where(vdb.Project.slug == "lung-screening"))
        alice = db.scalar(select(vdb.Account).where(vdb.Account.name == "alice"))
        job = vdb.Job(project_id=lung.id, account_id=alice.id, kind="script", target="a.py", profile="small",
                      cpu=1, mem_mb=256, max_runtime_s=60, state="running")
        db.add(job)
        db.flush()
        job_id = job.id
    by_job = tickets.make(settings, "lung-screening", ["lung-ct"], role="worker", job=job_id, ttl=tickets.BATCH_TTL_S)
    assert ticket_get(f"{url}/lung-ct/record.json", by_job).status_code == 200
    elsewhere = tickets.make(settings, "prostate-ai", ["prostate-mri"], role="held", job=job_id)
    r = ticket_get(f"{url}/prostate-mri/record.json", elsewhere)   # another project's job
    assert r.status_code == 404 and f"job {job_id} has ended" in r.json()["message"], r.text
    with vdb.session_scope(settings.vre_db_url) as db:
        db.get(vdb.Job, job_id).state = "succeeded"
    r = ticket_get(f"{url}/lung-ct/record.json", by_job)
    assert r.status_code == 404 and f"job {job_id} has ended" in r.json()["message"], r.text
    # no ticket, a forged or expired one, or any JupyterHub token: refused
    forged = ticket.rsplit(".", 1)[0] + "." + "0" * 64
    expired = tickets.make(settings, "lung-screening", ["lung-ct"], now=0)
    for bad in ("", forged, expired, "garbage", "a.b"):
        assert ticket_get(f"{url}/lung-ct/index.sqlite", bad).status_code == 403
    for token in ("alice-lung-session", "alice-browser", "alice-server"):
        assert get(f"{url}/lung-ct/index.sqlite", token=token).status_code == 403
    # only the catalogue's own files, by name
    for name in ("index.sqlite-wal", "..%2Frecord.json", "other.txt"):
        assert ticket_get(f"{url}/lung-ct/{name}", ticket).status_code == 404
    # neither the hub's public app (behind the proxy) nor the sessions listener has the route
    assert not [r for r in routes(settings) if r[1] is CatalogueFileHandler]
    assert not [r for r in routes(settings, sessions_only=True) if r[1] is CatalogueFileHandler]
    assert ticket_get(f"{service[1]}/lung-ct/record.json", ticket).status_code == 404
    # and the catalogue listener has no other: no API to write through, with any credential
    for path in ("catalogue", "jobs", "airlock/requests", "audit/events", "audit/host-events"):
        for headers in ({"Authorization": "token alice-server"}, {"Authorization": f"vre-ticket {ticket}"}):
            assert requests.get(f"{api}/{path}", headers=headers, timeout=30).status_code == 404, path
            assert requests.post(f"{api}/{path}", headers=headers, json={}, timeout=30).status_code in (404, 405), path


def test_the_pods_first_container_fetches_whole_files_or_leaves_them_out(catalogue, tmp_path):
    """``vre.catalog.fetch`` run as in the pod (``python3 -I -c``) against the catalogue listener:
    the mounted dataset's files, read-only; a dataset it may not have is left out with a line, a
    failed start only for a batch pod (``--required``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vre.backends.kubernetes import CATALOG_FETCH
    from vre.catalog import tickets

    settings, api = catalogue
    folder = settings.catalog_dir / "lung-ct"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text('{"slug": "lung-ct"}')
    (folder / "index.sqlite").write_bytes(os.urandom(3 << 20))
    root = tmp_path / "catalog"
    root.mkdir()
    env = {"PATH": os.environ["PATH"], "VRE_API_URL": api,
           "VRE_CATALOG_TICKET": tickets.make(settings, "lung-screening", ["lung-ct", "prostate-mri"])}
    proc = subprocess.run([sys.executable, "-I", "-c", CATALOG_FETCH.read_text(), "--root", str(root), "--wait", "5",
                           "lung-ct", "prostate-mri"], env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (root / "lung-ct" / "index.sqlite").read_bytes() == (folder / "index.sqlite").read_bytes()
    assert (root / "lung-ct" / "record.json").stat().st_mode & 0o777 == 0o444
    assert not list(Path(root).rglob("*.part")) and not (root / "prostate-mri" / "record.json").exists()
    assert "prostate-mri/record.json: HTTP Error 404" in proc.stdout and "1 of 2 catalogue(s) fetched" in proc.stdout
    required = subprocess.run([sys.executable, "-I", "-c", CATALOG_FETCH.read_text(), "--root", str(tmp_path / "r"),
                               "--wait", "5", "--required", "lung-ct", "prostate-mri"], env=env, cwd="/",
                              capture_output=True, text=True, timeout=60)
    assert required.returncode == 1 and "prostate-mri/record.json: HTTP Error 404" in required.stdout
    assert "the pod does not start" in required.stdout
    bad = subprocess.run([sys.executable, "-I", "-c", CATALOG_FETCH.read_text(), "--root", str(root)],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "VRE_CATALOG_TICKET" in bad.stderr
