"""values.schema.json of helm/vre, written from this file: `python3 helm/values_schema.py > helm/vre/values.schema.json`.

Every object has additionalProperties false, so a typo is refused with its key's name; types, enums and
patterns follow what the hub's settings accept (hub/vre/settings.py). tests/unit/test_helm_chart.py
checks that the committed schema is this file's output and that values.yaml sets every key it knows.
"""
import json
def obj(props, required=(), desc=None, **kw):
    d = {"type": "object", "additionalProperties": False, "properties": props}
    if required: d["required"] = list(required)
    if desc: d["description"] = desc
    d.update(kw); return d
S = lambda desc=None, **kw: {"type": "string", **({"description": desc} if desc else {}), **kw}
I = lambda desc=None, **kw: {"type": "integer", **({"description": desc} if desc else {}), **kw}
B = lambda desc=None: {"type": "boolean", **({"description": desc} if desc else {})}
strmap = lambda desc: {"type": "object", "description": desc, "additionalProperties": {"type": "string"}}
quantity = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"},
                      {"type": "number", "minimum": 0}]}
rlist = {"type": "object", "additionalProperties": False,
         "patternProperties": {r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z]+|[a-z0-9.-]+/[a-z0-9.-]+)$": quantity}}
resources = obj({"requests": rlist, "limits": rlist}, desc="Kubernetes resource requests and limits")
image_ref = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._/:@-]*[a-z0-9]$", "minLength": 1}
storage_class = {"type": "string", "pattern": r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$"}
toleration = obj({"key": S(), "operator": S(enum=["Exists", "Equal"]), "value": S(),
                  "effect": S(enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""]),
                  "tolerationSeconds": I(minimum=0)})
free = {"type": "object"}  # a Kubernetes type passed through as is (validated by the API server)
affinity = obj({"nodeAffinity": free, "podAffinity": free, "podAntiAffinity": free})
label_key = r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
node_selector = lambda d: {"type": "object", "description": d, "additionalProperties": False,
                           "patternProperties": {label_key: {"type": "string"}}}
pint = lambda d, **kw: I(d, minimum=1, **kw)
settings = obj({
    "lockout_threshold": pint("failed logins before an account is locked"),
    "lockout_seconds": pint("seconds an account stays locked"),
    "poll_interval": pint("seconds between the hub's checks of running sessions"),
    "spawn_limit": I("session starts in progress at once (0: four per CPU)", minimum=0),
    "session_limit": I("sessions at once (0: no limit)", minimum=0),
    "debug": B("extra log detail"),
    "jobs_worker_idle": I("seconds an idle CPU batch worker is kept", minimum=0),
    "jobs_max_runtime": I("longest run time a job may ask for (s)", minimum=60),
    "jobs_default_runtime": I("run time of a job without a limit (s)", minimum=60),
    "jobs_on_scheduler_loss": S("requeue or fail", enum=["requeue", "fail"]),
    "uid_base": I("uids of accounts start here", minimum=1000),
    "gid_base": I("gids of projects start here", minimum=1000),
    "sessions_gid": I("group of all session uids", minimum=1000),
    "access_uid": I("uid of the access layer", minimum=1000),
}, desc="VRE settings the chart does not derive from other values (written to vre.toml)")
jupyterhub = {"type": "object", "description": "JupyterHub traits as {Class: {trait: value}}",
              "additionalProperties": False,
              "patternProperties": {r"^[A-Z][A-Za-z0-9_]*$": {"type": "object",
                  "patternProperties": {r"^[A-Za-z_][A-Za-z0-9_]*$": {}}, "additionalProperties": False}}}
schema = {
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "Values of the VRE chart (helm/vre)",
  **obj({
    "nameOverride": S("chart name in object names", pattern=r"^([a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?)?$"),
    "fullnameOverride": S("object name prefix", pattern=r"^([a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?)?$"),
    "global": {"type": "object", "description": "set by Helm for subcharts; unused"},
    "hub": obj({
      "image": obj({"repository": image_ref, "tag": S(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
                    "pullPolicy": S(enum=["Always", "IfNotPresent", "Never"])}, required=["repository", "tag"]),
      "imagePullSecrets": {"type": "array", "items": S(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")},
      "resources": resources,
      "nodeSelector": node_selector("node labels of the hub pod"),
      "tolerations": {"type": "array", "items": toleration},
      "affinity": affinity,
      "podAnnotations": strmap("annotations on the hub pod"),
      "instance": S("prefix of project namespaces", pattern=r"^[a-z][a-z0-9-]{0,19}$"),
      "settings": settings,
      "jupyterhub": jupyterhub,
      "state": obj({"size": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"},
                    "storageClassName": storage_class,
                    "existingClaim": S(pattern=r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$"),
                    "nodePath": S("the state volume's path on the node (hostPath, single node)", pattern=r"^(/.*)?$")}),
      # 8000 is the public port, 8001 the proxy's API (loopback) in the hub's pod
      "apiPort": I("port of the hub's API", minimum=1024, maximum=65535, **{"not": {"enum": [8000, 8001]}}),
      "servicePort": I("port of the VRE service for sessions", minimum=1024, maximum=65535,
                       **{"not": {"enum": [8000, 8001]}}),
      "cataloguePort": I("port where pods fetch their catalogue files", minimum=1024, maximum=65535,
                         **{"not": {"enum": [8000, 8001]}}),
      "startupSeconds": I("seconds the first start may take", minimum=30, maximum=7200),
      "publicUrl": S("the address people use, scheme and host (no path)", pattern=r"^(https?://[^\s/?#]+/?)?$"),
    }),
    "auth": obj({
      "type": S("local or oidc", enum=["local", "oidc"]),
      "oidc": obj({
        "issuer": S("the provider's issuer URL", pattern=r"^(https://\S+)?$"),
        "clientId": S(), "loginService": S(),
        "clientSecret": obj({"existingSecret": S(pattern=r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$"),
                             "key": S(pattern=r"^[-._a-zA-Z0-9]+$")}),
        "scopes": S(pattern=r"(^|\s)openid(\s|$)"),
        "usernameClaim": S(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$"),
        "groupsClaim": S(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$"),
        "entitlementNamespace": S(), "adminGroup": S(), "auditorGroup": S(), "checkerGroup": S(),
        "projectGroupPrefix": S(), "requiredGroup": S(), "requireMfa": B(), "mfaAcr": S(), "mfaAmr": S()})}),
    "proxy": obj({"service": obj({
      "type": S(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
      "port": I(minimum=1, maximum=65535),
      "nodePort": {"type": ["integer", "null"], "minimum": 30000, "maximum": 32767},
      "annotations": strmap("annotations on the public Service")})}),
    "ingress": obj({
      "enabled": B(), "className": S(),
      "host": S("the VRE's host name", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"),
      "annotations": strmap("annotations on the Ingress"),
      "tls": obj({"enabled": B(), "secretName": S()})}),
    "database": obj({
      "type": S("external, internal or sqlite", enum=["external", "internal", "sqlite"]),
      "external": obj({"existingSecret": S(), "vreUrlKey": S(minLength=1), "hubUrlKey": S(minLength=1)}),
      "internal": obj({
        "image": obj({"repository": image_ref, "tag": S(minLength=1),
                      "pullPolicy": S(enum=["Always", "IfNotPresent", "Never"])}),
        "size": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"},
        "storageClassName": storage_class, "resources": resources})}),
    "sessions": obj({
      "image": image_ref,
      "gpuImage": {"anyOf": [image_ref, {"const": ""}]},
      "imageAllowList": {"type": "array", "items": image_ref, "uniqueItems": True},
      "storage": S("pvc or hostPath", enum=["pvc", "hostPath"]),
      "storageClassName": storage_class,
      "homeSize": S("size of a member's home claim", pattern=r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$"),
      "workspaceSize": S("size of a project's workspace claim", pattern=r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$"),
      "datasets": obj({"volume": S(enum=["pvc", "nfs", "hostPath"]), "nfsServer": S()}),
      "gpu": obj({"nodeSelector": node_selector("node labels of GPU sessions")}),
      "allowUnobservedReads": B("pods with data start without an observer of their reads (observer.enabled false)")}),
    "jobs": obj({
      "runner": S("dask (each project's Dask pool) or jobs (a Kubernetes Job per notebook, script and function job)",
                  enum=["dask", "jobs"]),
      "kueueQueue": S("Kueue LocalQueue the Jobs are created suspended in (needs runner jobs); empty: none",
                      pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"),
      "kueueClusterQueue": S("ClusterQueue of the LocalQueues the hub makes (needs kueueQueue); empty: the operator's",
                             pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")}, desc="how batch jobs run"),
    "observer": obj({
      "enabled": B("run the per-node observer of dataset reads"),
      "gateSeconds": I("seconds a pod with datasets waits for the observer", minimum=5, maximum=3600),
      "nodePath": S("where on each node the observer keeps its marks", pattern=r"^/[^\s]*[^/\s]$"),
      "tolerations": {"type": "array", "items": toleration},
      "nodeSelector": node_selector("node labels the observer's pods need"),
      "priorityClassName": S("PriorityClass of the observer's pods", pattern=r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?)?$"),
      "resources": resources}, desc="the per-node observer of dataset reads (a DaemonSet)"),
    "admissionPolicy": obj({"enabled": B()}),
    "demo": obj({"enabled": B(), "size": S(enum=["full", "small"])}),
    "serviceAccount": obj({"annotations": strmap("annotations on the hub's ServiceAccount")}),
  }),
}
# an NFS volume needs its server
schema["properties"]["sessions"]["allOf"] = [{
    "if": {"properties": {"datasets": {"properties": {"volume": {"const": "nfs"}}}}},
    "then": {"properties": {"datasets": {"properties": {"nfsServer": {"minLength": 1}}}}}}]
# a Kueue queue queues Kubernetes Jobs: the runner must make them
schema["properties"]["jobs"]["allOf"] = [{
    "if": {"properties": {"kueueQueue": {"minLength": 1}}, "required": ["kueueQueue"]},
    "then": {"properties": {"runner": {"const": "jobs"}}}}, {
    "if": {"properties": {"kueueClusterQueue": {"minLength": 1}}, "required": ["kueueClusterQueue"]},
    "then": {"properties": {"kueueQueue": {"minLength": 1}}}}]
# an OIDC login needs its provider, client and secret (the public address: the template's check)
schema["properties"]["auth"]["allOf"] = [{
    "if": {"properties": {"type": {"const": "oidc"}}},
    "then": {"properties": {"oidc": {"properties": {"issuer": {"minLength": 1}, "clientId": {"minLength": 1}}}}}}]
if __name__ == "__main__":
    print(json.dumps(schema, indent=2))
