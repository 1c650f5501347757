"""The Helm chart (helm/vre), offline: it lints, renders valid Kubernetes 1.37 objects for the
minimal, GPU and production values, its schema refuses typos and wrong types by name, its secrets
are random at every fresh render, and what it hands the hub is what the hub's settings accept.

Needs ``helm`` (``scripts/setup --test`` puts v3.17.2 in ``.venv/bin``) and kubernetes-validate;
they fail, not skip, without them: these tests run everywhere.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vre.backends.kubernetes import FETCHING_ROLES
from vre.settings import Settings, k8s_images, load

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vre"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
#: the test cluster's release (k8s/build/versions.env), the schemas manifests are checked against
K8S_VERSION = next(line.split("=", 1)[1].strip().lstrip("v") for line in
                   (ROOT / "k8s/build/versions.env").read_text().splitlines() if line.startswith("K8S_VERSION="))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert HELM.exists(), f"{HELM} is missing: run scripts/setup --test (it installs helm)"
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def render(*args: str) -> list[dict]:
    out = helm("template", "t", str(CHART), "--namespace", "vre-test", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(objects: list[dict], kind: str, suffix: str = "") -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def hub_container(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "-hub")["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(params=CI_VALUES, ids=lambda p: p.stem)
def values_file(request) -> Path:
    return request.param


def test_ci_values_files_exist():
    assert {p.stem for p in CI_VALUES} == {"minimal-values", "gpu-values", "production-values"}


def test_lint_strict(values_file):
    proc = helm("lint", "--strict", str(CHART), "-f", str(values_file), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_objects_are_valid_kubernetes(values_file, tmp_path):
    manifest = tmp_path / "out.yaml"
    manifest.write_text(helm("template", "t", str(CHART), "--namespace", "vre-test", "-f", str(values_file)).stdout)
    proc = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(manifest)],
                          capture_output=True, text=True, timeout=120)
    problems = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if " passed for " not in line)
    assert proc.returncode == 0, problems
    objects = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert proc.stdout.count(" passed for resource ") == len(objects), proc.stdout  # every object was checked


def test_what_each_values_file_creates():
    kinds = lambda objs: sorted(f"{o['kind']}" for o in objs)  # noqa: E731
    minimal = render("-f", str(CHART / "ci/minimal-values.yaml"))
    gpu = render("-f", str(CHART / "ci/gpu-values.yaml"))
    prod = render("-f", str(CHART / "ci/production-values.yaml"))
    for objs in (minimal, gpu, prod):
        for kind in ("Deployment", "Secret", "PersistentVolumeClaim", "ServiceAccount", "ClusterRole",
                     "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                     "NetworkPolicy", "Service", "ConfigMap"):
            assert kind in kinds(objs), kind
    assert "StatefulSet" in kinds(gpu) and "StatefulSet" not in kinds(minimal) + kinds(prod)
    assert "Ingress" in kinds(prod) and "Ingress" not in kinds(minimal)
    ingress = one(prod, "Ingress")
    assert ingress["spec"]["tls"][0] == {"hosts": ["vre.hospital.example"], "secretName": "vre-tls"}
    # the state volume and the secrets survive `helm uninstall`
    assert one(minimal, "PersistentVolumeClaim")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert one(minimal, "Secret")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_hub_accepts_what_the_chart_sets(values_file, tmp_path):
    """Every VRE_* variable the chart sets is a hub setting (the hub ignores unknown variables,
    so a misspelt one would be lost silently), and vre.settings.load accepts the whole
    configuration: vre.toml from the ConfigMap plus the variables."""
    objs = render("-f", str(values_file))
    env = _env(hub_container(objs))
    fields = {f"VRE_{name.upper()}" for name in Settings.__dataclass_fields__ if not name.startswith("_")}
    assert {k for k in env if k.startswith("VRE_")} <= fields, sorted(set(env) - fields)
    toml = tmp_path / "vre.toml"
    toml.write_text(one(objs, "ConfigMap", "-config")["data"]["vre.toml"])
    environ = {k: (v if isinstance(v, str) else "postgresql+psycopg://vre@db/vre") for k, v in env.items()}
    s = load(toml, environ=environ)
    values = yaml.safe_load(values_file.read_text())
    assert s.backend == "kubernetes" and s.k8s_hub_namespace == "vre-test"
    assert s.bind_url == "http://0.0.0.0:8000" and s.k8s_hub_port == 8081 and s.k8s_service_port == 8082
    # sessions and batch pods are given the cluster IP of the chart's hub Service
    assert s.k8s_hub_service == "t-vre-hub"
    hub_service = one(objs, "Service", "-hub")
    assert hub_service["metadata"]["name"] == s.k8s_hub_service
    assert {p["port"] for p in hub_service["spec"]["ports"]} == {s.k8s_hub_port, s.k8s_service_port,
                                                                 s.k8s_catalogue_port}
    # the hub pod admits the project's sessions on its API and service ports, and the pods that
    # fetch catalogue files (the roles the project's own policy names) on the catalogue port alone
    by_port = {}
    for rule in one(objs, "NetworkPolicy", "-hub")["spec"]["ingress"]:
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"] == {"matchLabels": {"vre.instance": s.instance}}
                by_port[tuple(p["port"] for p in rule["ports"])] = peer["podSelector"]
    assert by_port == {
        (s.k8s_hub_port, s.k8s_service_port): {"matchLabels": {"vre.role": "session"}},
        (s.k8s_catalogue_port,): {"matchExpressions": [{"key": "vre.role", "operator": "In",
                                                        "values": list(FETCHING_ROLES)}]}}
    pod = one(objs, "Deployment", "-hub")["spec"]["template"]["metadata"]["labels"]
    assert pod["vre.component"] == "hub"  # what the project namespaces' policies let sessions reach
    assert s.notebook_image in k8s_images(s)
    assert s.k8s_unobserved_reads is values.get("sessions", {}).get("allowUnobservedReads", False)
    jobs = values.get("jobs", {})
    assert (s.k8s_job_runner, s.k8s_kueue_queue, s.k8s_kueue_cluster_queue) == (
        jobs.get("runner", "dask"), jobs.get("kueueQueue", ""), jobs.get("kueueClusterQueue", ""))
    for key, value in values.get("hub", {}).get("settings", {}).items():
        assert getattr(s, key) == value, key
    if values.get("database", {}).get("type") in ("external", "internal", None):
        assert isinstance(env["VRE_DB_URL"], dict) and isinstance(env["VRE_HUB_DB_URL"], dict)  # from a Secret
    else:
        assert "VRE_DB_URL" not in env  # sqlite on the state volume


def test_allow_list_is_the_same_for_hub_and_admission_policy():
    objs = render("-f", str(CHART / "ci/production-values.yaml"))
    images = _env(hub_container(objs))["VRE_K8S_IMAGE_ALLOWLIST"].split(",")
    assert images == ["registry.hospital.example/vre/vre-notebook:0.1.0",
                      "registry.hospital.example/vre/vre-notebook-gpu:0.1.0",
                      "registry.hospital.example/vre/approved/radiomics:2.1"]
    policy = one(objs, "ValidatingAdmissionPolicy", "-images")
    allowed = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}["allowed"]
    assert json.loads(allowed) == images
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == {"matchLabels": {"vre.instance": "vre-prod"}}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert one(objs, "ValidatingAdmissionPolicyBinding", "-images")["spec"]["validationActions"] == ["Deny"]
    assert "ValidatingAdmissionPolicy" not in {o["kind"] for o in render(
        "-f", str(CHART / "ci/production-values.yaml"), "--set", "admissionPolicy.enabled=false")}


#: The capabilities PodSecurity "baseline" lets a container add.
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def test_every_container_is_locked_down(values_file):
    for obj in render("-f", str(values_file)):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, obj["metadata"]["name"]
        for c in pod["containers"]:
            sc = c["securityContext"]
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            added = set(sc["capabilities"].get("add", []))
            assert added <= BASELINE_CAPS, where   # PodSecurity "baseline" at most
            # and of those only what the hub needs (hub-deployment.yaml says why)
            assert added <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"}, where
            assert not sc.get("privileged"), where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        if obj["kind"] == "StatefulSet":  # the database: no root at all
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False


def test_rbac_is_what_the_hub_needs():
    objs = render("-f", str(CHART / "ci/minimal-values.yaml"))
    rules = {o["metadata"]["name"]: o["rules"] for o in objs if o["kind"] == "ClusterRole"}
    # in its own namespace: reading its own Service, nothing else
    role = one(objs, "Role", "-hub")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["services"], "resourceNames": ["t-vre-hub"],
                              "verbs": ["get"]}]
    granted = {(g, r, v) for rs in rules.values() for rule in rs for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert ("", "namespaces", "create") in granted and ("", "pods", "create") in granted
    assert ("", "namespaces", "delete") not in granted  # a project's namespace holds its claims
    assert ("", "secrets", "create") in granted  # each session's Secret
    # secrets are write-only: a cluster-wide read would give the hub every token of the cluster
    assert not {v for g, r, v in granted if r == "secrets"} & {"get", "list", "watch"}
    for forbidden in ("nodes", "serviceaccounts", "pods/exec", "rolebindings", "clusterroles", "*"):
        assert not any(r == forbidden for _, r, _ in granted), forbidden
    assert not any(v == "*" or g == "*" for g, _, v in granted)
    bindings = [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    assert {s["name"] for b in bindings for s in b["subjects"]} == {"t-vre-hub", "t-vre-observer"}
    # the observer of dataset reads reads pods, nothing else
    observer = [b["roleRef"]["name"] for b in bindings if b["subjects"][0]["name"] == "t-vre-observer"]
    assert [rules[name] for name in observer] == [[{"apiGroups": [""], "resources": ["pods"],
                                                   "verbs": ["get", "list", "watch"]}]]
    assert ("", "pods", "patch") in granted   # the hub: a batch worker's job, as an annotation
    # jobs as Kubernetes Jobs: made, followed and deleted, never changed (Kueue resumes them)
    assert {v for g, r, v in granted if (g, r) == ("batch", "jobs")} == {"get", "list", "watch", "create", "delete"}
    scope = one(objs, "ValidatingAdmissionPolicy", "-hub-scope")
    assert "system:serviceaccount:vre-test:t-vre-hub" in scope["spec"]["matchConditions"][0]["expression"]
    scoped = {r for rule in scope["spec"]["matchConstraints"]["resourceRules"] for r in rule["resources"]}
    assert {"pods", "secrets", "jobs", "networkpolicies", "resourcequotas"} <= scoped   # every kind the hub writes
    assert not any(r == "localqueues" for _, r, _ in granted) and "localqueues" not in scoped
    # with a ClusterQueue to feed, the hub makes LocalQueues (create only), within its namespaces too
    objs = render("-f", str(CHART / "ci/gpu-values.yaml"))
    rules = [rule for o in objs if o["kind"] == "ClusterRole" for rule in o["rules"]]
    assert {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["create"]} in rules
    scope = one(objs, "ValidatingAdmissionPolicy", "-hub-scope")
    assert "localqueues" in {r for rule in scope["spec"]["matchConstraints"]["resourceRules"] for r in rule["resources"]}


@pytest.mark.parametrize("args, names", [
    (["--set", "hub.instanse=x"], "instanse"),
    (["--set", "ingres.enabled=true"], "ingres"),
    (["--set", "sessions.datasets.volum=nfs"], "volum"),
    (["--set-json", 'hub.settings={"lockout_treshold": 3}'], "lockout_treshold"),
    (["--set", "hub.settings.db_url=sqlite:///x"], "db_url"),  # derived by the chart, not settable
    (["--set", "hub.apiPort=abc"], "hub.apiPort"),
    (["--set", "demo.enabled=yes"], "demo.enabled"),
    (["--set", "sessions.imageAllowList=registry.example/x:1"], "sessions.imageAllowList"),
    (["--set", "database.type=mysql"], "database.type"),
    (["--set", "sessions.storage=nfs"], "sessions.storage"),
    (["--set", "hub.instance=VRE_Prod"], "hub.instance"),
    (["--set", "sessions.image=bad image"], "sessions.image"),
    (["--set", "sessions.datasets.volume=nfs"], "nfsServer"),
    (["--set", "auth.type=saml"], "auth.type"),
    (["--set", "auth.type=oidc"], "auth.oidc.issuer"),
    (["--set", "auth.oidc.issuer=http://login.example.org/"], "auth.oidc.issuer"),
    (["--set", "auth.oidc.scopes=profile email"], "auth.oidc.scopes"),
    (["--set", "hub.publicUrl=https://vre.example.org/hub"], "hub.publicUrl"),
    (["--set", "observer.gateSeconds=1"], "observer.gateSeconds"),
    (["--set", "observer.nodePath=relative/path"], "observer.nodePath"),
    (["--set", "jobs.runner=slurm"], "jobs.runner"),
    (["--set", "jobs.kueueQueue=Batch_Queue", "--set", "jobs.runner=jobs"], "jobs.kueueQueue"),
    (["--set", "jobs.kueueQueue=vre-batch"], "jobs.runner"),   # Kueue queues Jobs: the Dask runner makes none
    (["--set", "jobs.runner=jobs", "--set", "jobs.kueueClusterQueue=gpus"], "jobs.kueueQueue"),
])
def test_schema_refuses_bad_values_by_name(args, names):
    proc = helm("template", "t", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"), *args, check=False)
    assert proc.returncode != 0 and "schema" in proc.stderr, proc.stderr
    assert names in proc.stderr, proc.stderr


def test_the_hubs_ports_must_differ():
    for port in ("hub.servicePort", "hub.cataloguePort"):
        proc = helm("template", "t", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"),
                    "--set", f"{port}=8081", check=False)
        assert proc.returncode != 0 and "hub.apiPort, hub.servicePort and hub.cataloguePort must differ" in proc.stderr, \
            proc.stderr
    proc = helm("template", "t", str(CHART), "-f", str(CHART / "ci/minimal-values.yaml"), "--set",
                "hub.cataloguePort=8001", check=False)
    assert proc.returncode != 0 and "hub.cataloguePort" in proc.stderr, proc.stderr


def test_external_database_needs_its_secret():
    proc = helm("template", "t", str(CHART), check=False)  # the defaults: an external database
    assert proc.returncode != 0 and "database.external.existingSecret" in proc.stderr, proc.stderr
    objs = render("--set", "database.external.existingSecret=vre-db")
    env = hub_container(objs)["env"]
    urls = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if e["name"] in ("VRE_DB_URL", "VRE_HUB_DB_URL")}
    assert urls == {"VRE_DB_URL": {"name": "vre-db", "key": "db-url"},
                    "VRE_HUB_DB_URL": {"name": "vre-db", "key": "hub-db-url"}}


def test_oidc_login_reaches_the_hub_as_settings_and_a_root_only_file(tmp_path):
    """auth.oidc becomes the hub's oidc_* settings; the client secret comes from the operator's
    Secret as a root-only file where the hub reads it, never as a variable; the address the
    provider sends people back to is the Ingress's."""
    objs = render("-f", str(CHART / "ci/production-values.yaml"))
    container = hub_container(objs)
    env = _env(container)
    toml = tmp_path / "vre.toml"
    toml.write_text(one(objs, "ConfigMap", "-config")["data"]["vre.toml"])
    s = load(toml, environ={k: (v if isinstance(v, str) else "postgresql+psycopg://vre@db/vre") for k, v in env.items()})
    assert s.auth == "oidc" and s.oidc_issuer == "https://login.aai.lifescience-ri.eu/oidc/"
    assert s.oidc_groups_claim == "eduperson_entitlement" and s.oidc_require_mfa is True
    assert s.oidc_admin_group == "hospital:vre-admins" and s.oidc_required_group == "hospital:vre-users"
    assert s.public_base == "https://vre.hospital.example"
    assert "VRE_OIDC_CLIENT_SECRET_FILE" not in env and not any("secret" in str(v).lower() for k, v in env.items()
                                                                 if k.startswith("VRE_OIDC"))
    mount = next(m for m in container["volumeMounts"] if m["name"] == "oidc-client")
    assert mount["mountPath"] == str(s.oidc_client_secret_path) and mount["readOnly"] is True
    volume = next(v for v in one(objs, "Deployment", "-hub")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "oidc-client")
    assert volume["secret"] == {"secretName": "vre-oidc", "defaultMode": 0o400,
                                "items": [{"key": "client-secret", "path": mount["subPath"]}]}
    # local accounts (the default): no OIDC settings, no secret volume
    minimal = hub_container(render("-f", str(CHART / "ci/minimal-values.yaml")))
    assert _env(minimal)["VRE_AUTH"] == "local" and not any(k.startswith("VRE_OIDC") for k in _env(minimal))
    assert "oidc-client" not in {m["name"] for m in minimal["volumeMounts"]}


@pytest.mark.parametrize("args, message", [
    (["--set", "ingress.enabled=false"], "set hub.publicUrl"),
    (["--set", "auth.oidc.clientSecret.existingSecret="], "auth.oidc.clientSecret.existingSecret"),
])
def test_oidc_without_its_address_or_secret_says_what_to_set(args, message):
    proc = helm("template", "t", str(CHART), "-f", str(CHART / "ci/production-values.yaml"), *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _secret_values(objs: list[dict]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in one(objs, "Secret", "-secrets")["data"].items()}


def test_secrets_are_random_at_every_fresh_render():
    args = ("-f", str(CHART / "ci/gpu-values.yaml"))  # internal database: its URLs carry the password
    first, second = _secret_values(render(*args)), _secret_values(render(*args))
    assert set(first) == {"jupyterhub_cookie_secret", "proxy_auth_token", "audit_relay_key", "access_api_token",
                          "access_cookie_secret", "postgres_password", "audit_ed25519", "db-url", "hub-db-url"}
    for key in first:
        assert first[key] != second[key], f"{key} is the same in two fresh renders"
    assert first["audit_ed25519"].startswith("-----BEGIN PRIVATE KEY-----")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    assert isinstance(serialization.load_pem_private_key(first["audit_ed25519"].encode(), None), Ed25519PrivateKey)
    bytes.fromhex(first["jupyterhub_cookie_secret"])  # JupyterHub reads its cookie secret file as hex
    assert first["postgres_password"] in first["db-url"] and first["db-url"].endswith("-postgresql:5432/vre")
    # and none of them is written anywhere in the repository
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    needles = [v.encode() for k, v in first.items() if k != "audit_ed25519"] + [first["audit_ed25519"].splitlines()[1].encode()]
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"a generated secret appears in {name.decode()}"


def test_secrets_reach_the_hub_only_as_files_and_secret_references():
    objs = render("-f", str(CHART / "ci/gpu-values.yaml"))
    secrets = _secret_values(objs)
    text = yaml.safe_dump([o for o in objs if o["kind"] != "Secret"])
    assert not any(v in text for v in secrets.values())
    mounts = {m["mountPath"]: m.get("subPath") for m in hub_container(objs)["volumeMounts"]}
    for key in ("jupyterhub_cookie_secret", "proxy_auth_token", "audit_relay_key", "access_api_token",
                "access_cookie_secret", "audit_ed25519"):
        assert mounts[f"/var/lib/vre/secrets/{key}"] == key


def test_schema_is_generated_and_values_yaml_documents_every_key():
    """values.schema.json is helm/values_schema.py's output; every key the schema knows has a
    default in values.yaml, and every value there has its comment right above it."""
    import runpy

    generated = runpy.run_path(str(ROOT / "helm/values_schema.py"))["schema"]
    assert json.loads((CHART / "values.schema.json").read_text()) == generated, \
        "values.schema.json is stale: python3 helm/values_schema.py > helm/vre/values.schema.json"
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(schema: dict, vals: dict, path: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            if key == "global" or path == "hub.settings":  # Helm's own; the hub's settings (README)
                continue
            assert key in vals, f"{path + '.' if path else ''}{key} is in the schema but not in values.yaml"
            if isinstance(vals[key], dict) and vals[key] and "properties" in sub:  # {}: a map to fill
                walk(sub, vals[key], f"{path + '.' if path else ''}{key}")

    walk(generated, values, "")
    lines = (CHART / "values.yaml").read_text().splitlines()
    indent = lambda line: len(line) - len(line.lstrip())  # noqa: E731

    def documented(i: int) -> bool:
        """A comment right above line i, or above the map it belongs to (resources: requests: cpu)."""
        above = next((l.strip() for l in reversed(lines[:i]) if l.strip()), "")  # noqa: E741
        if above.startswith("#"):
            return True
        parent = next((j for j in range(i - 1, -1, -1) if lines[j].strip() and not lines[j].lstrip().startswith("#")
                       and indent(lines[j]) < indent(lines[i])), None)
        return parent is not None and documented(parent)

    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):\s*(\S.*)?$", line)
        if m and m.group(3) is not None and not m.group(3).startswith("#"):  # a value, not a parent map
            assert documented(i), f"values.yaml line {i + 1} ({line.strip()}) has no comment above it"


def test_the_observer_is_the_one_privileged_pod_and_the_hub_is_told():
    """The per-node observer of dataset reads: privileged in the node's pid namespace (fanotify,
    /proc/<pid>/root of pods), never on the node's network, on every node (tolerations), with the
    token the kubelet binds to its pod for the hub (no shared secret), and the hub reviews it; the
    hub gates pods with datasets behind it. Off: neither."""
    objs = render("-f", str(CHART / "ci/minimal-values.yaml"))
    ds = one(objs, "DaemonSet", "-observer")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert c["securityContext"]["privileged"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["command"] == ["python3", "-m", "vre.hostview.node"]
    env = {e["name"]: e for e in c["env"]}
    assert "VRE_OBSERVER_TOKEN" not in env   # no shared token: one a node could use in another's name
    (projected,) = [v["projected"] for v in pod["volumes"] if v["name"] == "hub-token"]
    assert projected["sources"] == [{"serviceAccountToken": {"audience": "vre-observer", "expirationSeconds": 3600,
                                                             "path": "token"}}]
    mounted = {m["name"]: m for m in c["volumeMounts"]}["hub-token"]
    assert mounted["readOnly"] and env["VRE_OBSERVER_TOKEN_FILE"]["value"] == mounted["mountPath"] + "/token"
    assert env["VRE_OBSERVER_HUB_URL"]["value"] == "http://t-vre-hub.vre-test.svc:8082"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v] == [
        "/var/lib/vre-observer/vre-test-t", "/sys/fs/cgroup"]   # its marks; the node's cgroups (to freeze)
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["cgroup"] == env["VRE_OBSERVER_CGROUPS"]["value"]
    hub = one(objs, "Deployment", "-hub")["spec"]["template"]["spec"]["containers"][0]
    hub_env = {e["name"]: e.get("value") for e in hub["env"]}
    assert hub_env["VRE_K8S_READ_OBSERVER"] == "true" and hub_env["VRE_K8S_GATE_SECONDS"] == "60"
    assert hub_env["VRE_K8S_OBSERVER_SERVICE_ACCOUNT"] == ds["spec"]["template"]["spec"]["serviceAccountName"]
    reviews = [r for r in one(objs, "ClusterRole", "-namespaces")["rules"]
               if r["apiGroups"] == ["authentication.k8s.io"]]
    assert reviews == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    # the hub's VRE service port admits the observers
    policy = one(objs, "NetworkPolicy", "-hub")
    observers = [r for r in policy["spec"]["ingress"]
                 if any(f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "observer"
                        for f in r.get("from", []))]
    assert [[p["port"] for p in r["ports"]] for r in observers] == [[8082]]

    off = render("-f", str(CHART / "ci/minimal-values.yaml"), "--set", "observer.enabled=false")
    assert "DaemonSet" not in {o["kind"] for o in off}
    hub = one(off, "Deployment", "-hub")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in hub["env"]}["VRE_K8S_READ_OBSERVER"] == "false"
    assert "VRE_K8S_OBSERVER_SERVICE_ACCOUNT" not in {e["name"] for e in hub["env"]}
    assert "tokenreviews" not in str(one(off, "ClusterRole", "-namespaces")["rules"])
