#!/bin/sh
# Probe: the same process attacks in a Podman container (as the docker backend runs sessions), and
# whether a seccomp profile (Podman's default + "no new user namespaces") stops unshare(CLONE_NEWUSER).
# Run as root from the repository root: sh docs/probes/podman_probe.sh   (needs localhost/vre-base:bookworm)
set -eu
IMAGE=${IMAGE:-localhost/vre-base:bookworm}
D=$(mktemp -d /tmp/vre-podprobe-XXXX)
trap 'rm -rf "$D"' EXIT
echo "== process attacks in a container (--cap-drop ALL, no-new-privileges, uid 277777)"
podman run --rm --network none --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    --user 277777:277777 -v "$PWD/docs/probes/sandbox_probe.py:/probe.py:ro" --entrypoint /usr/bin/python3 \
    "$IMAGE" /probe.py inside
python3 - "$D" <<'EOF'
import json, sys
p = json.load(open("/usr/share/containers/seccomp.json"))
NEWUSER = 0x10000000
for s in p["syscalls"]:  # take unshare/clone/clone3 out of the unconditional allow list ...
    if s["action"] == "SCMP_ACT_ALLOW" and not (s.get("args") or s.get("includes") or s.get("excludes")):
        s["names"] = [n for n in s["names"] if n not in ("unshare", "clone", "clone3")]
p["syscalls"] += [  # ... and allow them only without CLONE_NEWUSER (clone3: ENOSYS, libc falls back to clone)
    {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
]
json.dump(p, open(sys.argv[1] + "/seccomp.json", "w"))
EOF
echo "== default profile:"
podman run --rm --network none --cap-drop ALL --security-opt no-new-privileges --user 277777:277777 \
    --entrypoint /bin/sh "$IMAGE" -c 'unshare -U true && echo "unshare -U: allowed" || echo "unshare -U: refused"'
echo "== default profile + no CLONE_NEWUSER:"
podman run --rm --network none --cap-drop ALL --security-opt no-new-privileges --security-opt "seccomp=$D/seccomp.json" \
    --user 277777:277777 --entrypoint /bin/sh "$IMAGE" -c \
    'unshare -U true 2>/dev/null && echo "unshare -U: allowed" || echo "unshare -U: refused";
     python3 -c "import subprocess, threading; subprocess.run([\"true\"], check=True); t = threading.Thread(target=print); t.start(); t.join(); print(\"fork, exec, threads: ok\")"'
