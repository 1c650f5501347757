"""Bad input at the edges of what the database holds gives a clear error that says what to fix,
never an OverflowError or a database error (HTTP 500): expiries far in the future or the past,
memory and byte sizes beyond any column, ids no id column holds (in a URL or the CLI), titles
longer than their ``String(255)`` column (PostgreSQL refuses the write; SQLite does not care).
Through the real functions on both backends, and the access-request and Users pages over HTTP."""


import pytest
import requests
from sqlalchemy import select
from tornado import web
from tornado.testing import bind_unused_port

from fakehub import FakeHubAuth, named_by_header, served

from vre import access_requests as AR
from vre import admin_running
from vre import db as vdb
from vre import project_admin as PA
from vre import projects as P
from vre.accounts import add_account
from vre.catalog.index import CatalogError
from vre.catalog.metadata import build_record
from vre.errors import NotFound, VREError
from vre.roles import ADMIN_SCOPE, CATALOGUE_SCOPE
from vre.settings import Settings

OPERATOR = AR.Actor.cli(None)
HUGE = "1" + "0" * 400  # float() makes it inf, int(inf) raised OverflowError
BIG_ID = 2**70  # SQLite's driver cannot bind it (OverflowError); no Integer id column holds it


@pytest.mark.parametrize("text", ["9999-12-31", "0001-01-01T00:00:00+05:00", "1969-12-30", "2201-01-01",
                                  "2200-12-31T23:00:00-05:00", "0001-01-01"])
def test_an_expiry_outside_1970_to_2200_is_refused_with_the_range(text):
    with pytest.raises(VREError, match=r"is out of range: give a date from 1970-01-01 to 2200-12-31 \(UTC\), or "
                                       "'never'"):
        P.parse_expiry(text)


def test_the_edges_of_the_expiry_range_are_kept():
    assert P.parse_expiry("2200-12-31").isoformat() == "2201-01-01T00:00:00+00:00"  # through that day
    assert P.parse_expiry("1970-01-01T00:00:00Z").isoformat() == "1970-01-01T00:00:00+00:00"
    assert P.parse_expiry("never") is None


def test_memory_and_byte_sizes_are_capped_below_their_columns():
    for text in (HUGE, "3000000G", "65537G", 10**400):
        with pytest.raises(VREError, match=r"is too large: at most 65536G \(64 TiB\)"):
            P.parse_memory(text)
    assert P.parse_memory("65536G") == P.MAX_MEM_MB < 2**31  # fits mem_mb: Integer, 32-bit on PostgreSQL
    for text in (HUGE, "99999999T", "1025T"):
        with pytest.raises(VREError, match=r"is too large: at most 1024T \(1 PiB\), or none"):
            P.parse_bytes(text)
    assert P.parse_bytes("1024T") == P.MAX_BYTES < 2**63  # fits egress_cap: BigInteger
    with pytest.raises(VREError) as e:
        P.parse_memory(HUGE)
    assert len(str(e.value)) < 120  # the 401 digits are not repeated in full


def test_ids_no_id_column_holds_name_no_row(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        add_account(db, "admin", role="admin", password="admin-password-1")
    with vdb.session_scope(db_url) as db:
        assert [vdb.get_by_id(db, vdb.Account, i) for i in (BIG_ID, 2**31, 0, -1, "x", None)] == [None] * 6
        assert vdb.get_by_id(db, vdb.Account, "1").name == "admin"
    for call in (lambda: AR.approve(settings, OPERATOR, BIG_ID), lambda: AR.withdraw(settings, OPERATOR, BIG_ID),
                 lambda: AR.deny(settings, OPERATOR, BIG_ID, "not needed")):
        with pytest.raises(NotFound, match=f"there is no access request {BIG_ID}"):
            call()
    with pytest.raises(NotFound, match=f"there is no job {BIG_ID}"):
        admin_running.cancel_job(settings, OPERATOR, BIG_ID)


def test_titles_and_descriptions_longer_than_their_columns_are_refused(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with pytest.raises(VREError, match=r"the project's title is too long: at most 255 characters \(you wrote 256\)"):
        PA.create(settings, OPERATOR, "long", "t" * 256)
    assert PA.create(settings, OPERATOR, "long", " " + "t" * 255 + " ").startswith("created project 'long'")
    with pytest.raises(VREError, match="the profile's description is too long: at most 255 characters"):
        PA.set_profile(settings, OPERATOR, "long", "std", cpu=1, memory="4G", description="d" * 256)
    assert PA.project_details(settings, "long")["profiles"] == []
    with pytest.raises(CatalogError, match=r"the title is too long: at most 255 characters \(you wrote 300\)"):
        build_record({"title": "x" * 300}, {})
    assert build_record({"title": "x" * 255}, {})["title"] == "x" * 255


def test_the_cli_refuses_an_id_too_large_with_a_message(tmp_path, monkeypatch, capsys):
    from vre import cli

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", db_url=url)
    monkeypatch.setattr(cli, "_settings", lambda args: settings)
    for argv, said in ((["jobs", "show", str(BIG_ID)], f"there is no job {BIG_ID}"),
                       (["access-request", "approve", str(BIG_ID)], f"there is no access request {BIG_ID}")):
        assert cli.main(argv) == 2
        assert said in capsys.readouterr().err


# --- the pages over HTTP -------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path, monkeypatch):
    """The access-request and Users pages on a loopback port, SQLite, with bob's open request 1 (project
    lung asks for lung-ct) that admin may decide; yields (settings, base URL)."""
    from vre.api import access_pages, admin_pages
    from vre.api.base import ServiceHandler

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", db_url=url)
    with vdb.session_scope(url) as db:
        add_account(db, "admin", role="admin", password="admin-password-1")
        add_account(db, "bob", role="researcher", password="bob-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT", path="/srv/lung", catalog={"title": "Lung CT"}))
        db.flush()
        P.create_project(db, "lung", "Lung")
        P.add_member(db, "lung", "bob")
    AR.create(settings, AR.Actor("bob"), "lung", "lung-ct", mode="interactive",
              justification="Validate our nodule detector on this cohort.", intended_use="Batch inference only.")
    monkeypatch.setattr(ServiceHandler, "_hub_auth", FakeHubAuth(named_by_header(
        lambda name: [CATALOGUE_SCOPE] + ([ADMIN_SCOPE] if name == "admin" else []))))
    sock, port = bind_unused_port()
    routes = access_pages.handlers(settings) + admin_pages.handlers(settings)
    with served(lambda: web.Application([(f"/services/vre/{p}", *rest) for p, *rest in routes],
                                        cookie_secret=b"x" * 32), sock):
        yield settings, f"http://127.0.0.1:{port}/services/vre"


def post(url, **form):
    return requests.post(url, data={"_xsrf": "x", **form}, headers={"X-Test-User": "admin"}, allow_redirects=False,
                         timeout=30)


def test_the_pages_answer_an_id_too_large_with_404_and_a_message(site):
    _, base = site
    r = post(f"{base}/access-requests/{BIG_ID}/approve", mode="", expires="2099-01-01", reason="")
    assert (r.status_code, f"there is no access request {BIG_ID}" in r.text) == (404, True)
    r = post(f"{base}/admin/jobs/{BIG_ID}/cancel")
    assert (r.status_code, f"there is no job {BIG_ID}" in r.text) == (404, True)


def test_an_unexpected_error_is_the_page_with_a_message_and_the_traceback_in_the_log(site, monkeypatch, caplog):
    _, base = site

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail of the bug")
    monkeypatch.setattr(AR, "approve", broken)
    with caplog.at_level("ERROR"):
        r = post(f"{base}/access-requests/1/approve", mode="", expires="2099-01-01", reason="")
    assert r.status_code == 500 and "an unexpected error on the server" in r.text
    assert "secret detail" not in r.text and "Traceback" not in r.text and 'value="2099-01-01"' in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and "access-requests/1/approve" in rec.getMessage()]
    assert logged and "secret detail of the bug" in str(logged[0].exc_info[1])


def test_an_account_created_meanwhile_is_a_conflict_that_says_so(db_url, tmp_path, monkeypatch):
    """Two admins create the same name at once: the loser's unique constraint error becomes a clear
    Conflict (409 on the Users page), not a 500."""
    from vre import accounts, admin
    from vre.errors import Conflict

    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    real = accounts.add_account

    def late(db, name, **kw):
        with vdb.session_scope(db_url) as other:  # the other admin's commit lands after our check
            real(other, name, oidc=True)
        monkeypatch.setattr(db, "scalar", lambda *q, **k: None)  # our "is the name free?" saw no row
        return real(db, name, **kw)
    monkeypatch.setattr(accounts, "add_account", late)
    with pytest.raises(Conflict, match="account 'carla' was just created by someone else; reload and choose another"):
        admin.create_account(settings, OPERATOR, "Carla")


def test_a_demoted_admin_reads_no_admin_page_while_the_token_still_says_admin(site):
    """The hub's answer about a token (its scopes) is cached for minutes; the admin pages ask the
    database too, so a demoted or disabled admin is refused at once, reading as well as changing."""
    settings, base = site
    as_admin = {"X-Test-User": "admin"}
    assert requests.get(f"{base}/admin/users", headers=as_admin, timeout=30).status_code == 200
    with vdb.session_scope(settings.vre_db_url) as db:
        db.scalar(select(vdb.Account).where(vdb.Account.name == "admin")).role = "researcher"
    r = requests.get(f"{base}/admin/users", headers=as_admin, timeout=30)  # the fake hub still says admin
    assert r.status_code == 403 and "not an active admin any more" in r.text
