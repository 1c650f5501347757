"""Unit-test fixtures shared between modules."""

import pytest

from vre import db as vdb


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_url(request, tmp_path_factory):
    """One migrated database per backend for this module; ``audit_url`` empties the audit tables
    before each test. (The ``db_url`` fixture makes a new database per test, which costs about a
    second each on PostgreSQL; it is used below where a pristine database matters.)"""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'vre.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url)
    return url


@pytest.fixture
def audit_url(shared_url):
    with vdb.engine_for(shared_url).begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_events")
        conn.exec_driver_sql("DELETE FROM audit_checkpoints")
    return shared_url
