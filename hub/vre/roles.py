"""Who may do what through the hub: the VRE's custom scopes, the roles that carry them and the
groups that carry the roles. hubconfig registers them; the VRE service's handlers check the scopes
(vre.api.base); the authenticator puts each account in the groups of its VRE role."""

from __future__ import annotations

AUDIT_READ_SCOPE = "custom:vre-audit:read"
JOBS_SCOPE = "custom:vre-jobs"
#: Ask for exports through the airlock, follow one's requests, download released files.
AIRLOCK_SCOPE = "custom:vre-airlock"
#: Review others' airlock requests (output checkers; the account's checker flag must also be set).
AIRLOCK_REVIEW_SCOPE = "custom:vre-airlock:review"
#: Browse the whole catalogue (records only) and ask for access for one's own projects; deciding
#: requests is then the database's call (admins, the dataset's stewards: ``vre.access_requests``).
#: Browser logins only: the ``server`` role (session tokens) does not carry it.
CATALOGUE_SCOPE = "custom:vre-catalogue"
#: Read the catalogue's records (``GET api/catalogue``: metadata only, never files) and what one's
#: projects hold of each. The ``server`` role carries this one, not ``CATALOGUE_SCOPE``: the Lab's
#: Datasets panel lists the records, but a session's token can never ask for access or decide.
CATALOGUE_READ_SCOPE = "custom:vre-catalogue:read"
#: The VRE's admin pages (``/services/vre/admin/...``: accounts; each change audited). VRE admins only.
ADMIN_SCOPE = "custom:vre-admin"
#: The hub-managed service that serves the VRE's pages and APIs (vre.api.service), at /services/vre/.
SERVICE_NAME = "vre"
#: The access layer's OAuth client (vre.access.auth.SERVICE).
ACCESS_LAYER = "vre-access"
#: Reaching that service at all (JupyterHub's service auth requires it of every token and login);
#: what a caller may do there is still the custom scopes above.
SERVICE_ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: Logging in to the access layer (the OAuth client in front of every session, ``vre.access``).
ACCESS_LAYER_SCOPE = f"access:services!service={ACCESS_LAYER}"

#: JupyterHub's ``custom_scopes``: defined once the config loads.
CUSTOM_SCOPES = {
    AUDIT_READ_SCOPE: {"description": "Read, export and verify the VRE audit trail (auditors)."},
    JOBS_SCOPE: {"description": "Use the batch queue of one's own projects (submit, follow, cancel jobs)."},
    AIRLOCK_SCOPE: {"description": "Request exports through the airlock and download released results."},
    AIRLOCK_REVIEW_SCOPE: {"description": "Review, preview and release others' airlock requests (output checkers)."},
    CATALOGUE_SCOPE: {"description": "Browse the dataset catalogue, request access for one's projects, decide "
                                     "requests where the account may (admins, dataset stewards)."},
    CATALOGUE_READ_SCOPE: {"description": "Read the dataset catalogue's records (metadata only) and what one's "
                                          "projects hold of each (the Lab's Datasets panel)."},
    ADMIN_SCOPE: {"description": "Use the VRE's admin pages: create accounts, disable, enable, unlock them, reset "
                                 "their second factor, change roles; stop sessions and cancel jobs (VRE admins)."},
}

AUDITOR_ROLE = "vre-auditor"
AUDITOR_GROUP = "vre-auditors"
CHECKER_ROLE = "output-checker"
CHECKER_GROUP = "output-checkers"
ADMIN_ROLE = "vre-admin"
ADMIN_GROUP = "vre-admins"
#: What a VRE admin may do through the hub: see users, servers and groups, stop servers, and use the
#: VRE's admin pages (accounts: create, disable, unlock, reset the second factor, roles; stop
#: sessions, cancel jobs). Not JupyterHub's all-powerful admin: no changing the hub's users or
#: groups directly (roles are VRE accounts' and reach the hub's groups at the next login), no
#: tokens for others, no access to anyone's session.
ADMIN_SCOPES = ["self", "admin-ui", "list:users", "read:users", "read:servers", "delete:servers",
                "list:groups", "read:groups", "read:roles", "read:hub", "read:metrics", ADMIN_SCOPE]
#: What the VRE service's own token may do at the hub's API: see who has a session running and
#: stop one, for the Users admin page (which lets only VRE admins ask, and records who did).
#: ``delete:servers`` is the least scope that stops a server: ``servers``/``admin:servers`` would
#: add starting them and reading their state, and ``admin:users`` changing accounts.
SERVICE_SCOPES = ["list:users", "read:servers", "delete:servers"]


def load_roles() -> list[dict]:
    """JupyterHub's ``load_roles``: auditors and admins by group; researchers (in the browser) and
    their sessions (server tokens) may use the batch queue, for the projects membership allows, and
    read the catalogue's records (sessions: read only).
    Every user and every session server may reach the VRE service; its handlers check the scopes
    above (403 without them). The service's own token sees who runs sessions and stops them for
    admins (its Users page)."""
    return [
        {"name": AUDITOR_ROLE, "description": "Review, export and verify the audit trail",
         "scopes": [AUDIT_READ_SCOPE], "groups": [AUDITOR_GROUP]},
        {"name": ADMIN_ROLE, "description": "See users and sessions, stop sessions, the VRE's admin pages",
         "scopes": ADMIN_SCOPES, "groups": [ADMIN_GROUP]},
        {"name": CHECKER_ROLE, "description": "Review airlock requests of others (output checkers)",
         "scopes": [AIRLOCK_REVIEW_SCOPE], "groups": [CHECKER_GROUP]},
        {"name": "user", "scopes": ["self", JOBS_SCOPE, AIRLOCK_SCOPE, CATALOGUE_SCOPE, CATALOGUE_READ_SCOPE,
                                    SERVICE_ACCESS_SCOPE, ACCESS_LAYER_SCOPE]},
        {"name": "vre-service", "description": "The VRE service: who runs sessions; stopping one for an admin",
         "scopes": SERVICE_SCOPES, "services": [SERVICE_NAME]},
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", JOBS_SCOPE, AIRLOCK_SCOPE,
                                      CATALOGUE_READ_SCOPE, SERVICE_ACCESS_SCOPE]},
    ]


def groups_for(role: str, checker: bool = False) -> list[str]:
    """JupyterHub groups of a VRE account; each group carries its role. Output checkers (a flag set by
    admins, ``vre user set-checker``) are in the checkers' group whatever their role."""
    groups = {"auditor": [AUDITOR_GROUP], "admin": [ADMIN_GROUP]}.get(role, [])
    return groups + [CHECKER_GROUP] if checker else groups
