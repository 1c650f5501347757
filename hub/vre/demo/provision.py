"""The demo: synthetic cohorts, two projects, and one account per role, created on first start.

Shaped like EUCAIM use cases: a low-dose chest CT lung-cancer screening cohort and a prostate MR
cohort. Passwords are random, printed once and kept in a root-only file; none is in the repository.
Every step is idempotent, so an interrupted first start completes on the next one.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import select

from .. import db as vdb
from .. import projects as P
from ..accounts import add_account
from ..audit.events import emit
from ..catalog.cluster import in_cluster
from ..catalog.registry import add_dataset
from ..settings import Settings
from .synth import make_cohort

TERMS = ("Use only within the approved project, inside the VRE. No re-identification attempts; "
         "no export of images or derived data except through an approved airlock request.")

DATASETS = [
    dict(slug="lung-ct-screening", kind="lung-ct", seed=1,
         full=dict(patients=4, slices=120, size=512), small=dict(patients=2, slices=12, size=64),
         title="Lung cancer screening: low-dose chest CT (synthetic)",
         description="Low-dose chest CT of a lung-cancer screening cohort with solid pulmonary nodules; "
                     "synthetic phantoms with realistic geometry and HU calibration, plus a clinical table.",
         publisher="VRE demo data steward", condition="Lung cancer", interoperability_tier=2,
         keywords=["lung cancer", "screening", "LDCT", "nodule"]),
    dict(slug="prostate-mri", kind="prostate-mr", seed=2,
         full=dict(patients=3, slices=None, size=None), small=dict(patients=2, slices=8, size=64),
         title="Prostate cancer: T2-weighted MR (synthetic)",
         description="Axial T2-weighted prostate MR with PI-RADS-style lesions; synthetic, with a clinical "
                     "table (PSA, Gleason grade group).",
         publisher="VRE demo data steward", condition="Prostate cancer", interoperability_tier=2,
         keywords=["prostate cancer", "MRI", "T2w"]),
]

PROJECTS = [
    dict(slug="lung-screening", title="Lung nodule malignancy (LDCT)",
         description="Develop and validate a nodule malignancy classifier on screening CT.",
         datasets=["lung-ct-screening"], members=["alice"],
         profiles=[("small", 1, "2G", "everyday analysis"), ("large", 2, "6G", "heavier preprocessing")]),
    dict(slug="prostate-ai", title="Prostate MRI lesion detection",
         description="Detect clinically significant prostate cancer on T2-weighted MR.",
         datasets=["prostate-mri"], members=["bob"],
         profiles=[("small", 1, "2G", "everyday analysis")]),
]

ACCOUNTS = [("alice", "researcher"), ("bob", "researcher"), ("admin", "admin"), ("auditor", "auditor")]


def credentials_file(settings: Settings) -> Path:
    return settings.secrets_dir / "demo-credentials.txt"


def provision_demo(settings: Settings, log=print) -> None:
    data_root = settings.state_dir / "demo-data"
    with vdb.session_scope(settings.vre_db_url) as db:
        have = lambda model, **kw: db.scalar(select(model).filter_by(**kw)) is not None  # noqa: E731
        if have(vdb.Project, slug=PROJECTS[0]["slug"]) and have(vdb.Account, name=ACCOUNTS[-1][0]):
            return
        log("[vre] first start: creating the demo (synthetic datasets, projects, accounts)")
        audit: list[tuple[str, dict]] = []
        # on Kubernetes with datasets in claims or on NFS, sessions cannot mount folders of the hub's volume
        datasets = [] if in_cluster(settings) else DATASETS
        if not datasets:
            log(f"[vre] the demo's datasets would be folders on the hub's volume, which sessions cannot mount "
                f"here (k8s_dataset_volume = {settings.k8s_dataset_volume}): the demo has none; register "
                "yours with 'vre dataset add'")

        for spec in datasets:
            if have(vdb.Dataset, slug=spec["slug"]):
                continue
            out = data_root / spec["slug"]
            if not out.exists():
                log(f"[vre] writing synthetic cohort {spec['slug']} ...")
                make_cohort(spec["kind"], out, seed=spec["seed"], **spec[settings.demo_size])
                _world_readable(data_root)
            fields = {k: spec[k] for k in ("title", "description", "publisher", "condition",
                                           "interoperability_tier", "keywords")}
            _, report = add_dataset(db, settings, str(out), spec["slug"], access_rights=TERMS, **fields)
            log(f"[vre] dataset {spec['slug']}: {report.summary()}")
            audit.append(("dataset.register", dict(dataset=spec["slug"], target=str(out))))

        new_credentials = []
        for name, role in ACCOUNTS:
            if not have(vdb.Account, name=name):
                _, password = add_account(db, name, role=role)
                new_credentials.append((name, role, password))
                audit.append(("user.create", dict(target=f"user/{name}")))

        for spec in PROJECTS:
            if have(vdb.Project, slug=spec["slug"]):
                continue
            expires = (dt.date.today() + dt.timedelta(days=365)).isoformat()
            P.create_project(db, spec["slug"], spec["title"], spec["description"], expires)
            for d in spec["datasets"] if datasets else ():
                P.grant(db, spec["slug"], d)
            for m in spec["members"]:
                P.add_member(db, spec["slug"], m)
            for name, cpu, mem, text in spec["profiles"]:
                P.set_profile(db, spec["slug"], name, cpu=cpu, memory=mem, description=text)
            audit.append(("project.create", dict(project=spec["slug"], details={
                "datasets": spec["datasets"] if datasets else [], "members": spec["members"]})))

    for action, fields in audit:  # recorded after the transaction committed
        details = {"via": "demo", **fields.pop("details", {})}
        emit(settings, action, actor="system", actor_role="system", details=details, **fields)

    if new_credentials:
        path = credentials_file(settings)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            for name, role, password in new_credentials:
                f.write(f"{name}\t{role}\t{password}\n")
        os.chmod(path, 0o600)
        log("[vre] demo accounts (passwords shown once; also in %s, readable by root only):" % path)
        for name, role, password in new_credentials:
            log(f"[vre]   {name:8s} {role:10s} {password}")


def _world_readable(root: Path) -> None:
    """Sessions read datasets as unprivileged uids."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    os.chmod(root.parent, os.stat(root.parent).st_mode | 0o011)
