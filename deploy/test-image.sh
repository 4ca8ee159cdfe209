#!/usr/bin/env bash
# Build the unmodified Dockerfile with podman and serve a Jacobian from the built image,
# on a machine with no registry and no container engine (Debian bookworm, root).
#
#   sudo deploy/test-image.sh            # ~10 min and ~6 GB of disk the first time
#
# 1. debootstrap makes a stand-in for python:3.11-slim from Debian packages (bookworm's
#    Python is 3.11) and imports it under that name, so `FROM python:3.11-slim` resolves;
# 2. `podman build --isolation chroot` builds the Dockerfile (pip reaches PyPI through the
#    host network; torch comes from a local wheel folder when TORCH_WHEELS is given, e.g.
#    the CPU wheel pip is configured with here, else from download.pytorch.org);
# 3. the server runs from the built image's filesystem (chroot, as the image's user, with
#    its environment), the SDK asks it for a Jacobian on loopback and checks the answer,
#    and the image's own health check command must report SERVING.
# Prints the image size and PASS, or fails with the step that failed.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/var/tmp/jacserve-image}
IMAGE=${IMAGE:-localhost/jacserve:test}
PORT=${PORT:-50071}
METRICS_PORT=${METRICS_PORT:-9471}
PYTHON=${PYTHON:-python3}          # a Python with the jacserve SDK, for the request
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_WHEELS=${TORCH_WHEELS:-$(pip config get global.find-links 2>/dev/null || true)}

step() { printf '\n== %s\n' "$*"; }

step "tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null
fi
podman --version

step "base image stand-in: python:3.11-slim from Debian bookworm"
if ! podman image exists docker.io/library/python:3.11-slim; then
    rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log"
    ln -sf python3 "$WORK/rootfs/usr/bin/python"
    ln -sf pip3 "$WORK/rootfs/usr/bin/pip"
    rm -f "$WORK"/rootfs/usr/lib/python3.11/EXTERNALLY-MANAGED
    tar -C "$WORK/rootfs" -c . | podman import - docker.io/library/python:3.11-slim
fi

step "build the Dockerfile"
build_args=()
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
if [ -n "$TORCH_WHEELS" ] && [ -d "$TORCH_WHEELS" ]; then
    mounts+=(-v "$TORCH_WHEELS:/wheels:ro")
    build_args+=(--build-arg TORCH_WHEELS=/wheels)
fi
started=$(date +%s)
podman build --format docker --isolation chroot --network host "${mounts[@]}" \
    "${build_args[@]}" -t "$IMAGE" . 2>&1 | tee "$WORK/build.log" | grep -E '^(STEP|COMMIT)' || true
podman image exists "$IMAGE" || { echo "FAIL: the build did not produce $IMAGE"; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"

step "the image's health check (kept by the Docker format; OCI images drop it)"
podman image inspect "$IMAGE" | python3 -c '
import json, sys
image = json.load(sys.stdin)[0]
check = image.get("Healthcheck") or image.get("HealthCheck") or image.get("Config", {}).get("Healthcheck")
print("health check:", json.dumps(check))
test = (check or {}).get("Test") or []
sys.exit(0 if "jacserve" in test and "health" in test else "FAIL: no HEALTHCHECK running jacserve health")
'

step "serve from the image's filesystem"
ROOT=$(podman image mount "$IMAGE")
RUN=$WORK/run && rm -rf "$RUN" && mkdir -p "$RUN/root"
mount --bind "$ROOT" "$RUN/root" 2>/dev/null || cp -a "$ROOT/." "$RUN/root/"
mount -t tmpfs -o size=512m tmpfs "$RUN/root/var/lib/jacserve"
install -d -o 10001 -g 10001 "$RUN/root/var/lib/jacserve/models" "$RUN/root/var/lib/jacserve/scratch"
for fs in proc sys dev; do mount --rbind "/$fs" "$RUN/root/$fs"; done
cleanup() {
    [ -n "${SERVER:-}" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    for fs in dev sys proc; do umount -R "$RUN/root/$fs" 2>/dev/null || true; done
    umount "$RUN/root/var/lib/jacserve" 2>/dev/null || true
    umount "$RUN/root" 2>/dev/null || true
    podman image unmount "$IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# The image's environment (ENV lines), then this run's ports.
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
entry=$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "$IMAGE")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
echo "entrypoint: $entry; user: $user"
chroot --userspec="$user" "$RUN/root" /usr/bin/env -i "${image_env[@]}" \
    JACSERVE_PORT="$PORT" JACSERVE_METRICS_PORT="$METRICS_PORT" JACSERVE_WORKERS=1 \
    sh -c "cd /var/lib/jacserve && exec $entry" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
    if chroot --userspec="$user" "$RUN/root" /usr/bin/env -i "${image_env[@]}" \
        jacserve health --target "127.0.0.1:$PORT" --timeout 2 >/dev/null 2>&1; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { echo "FAIL: the server exited"; tail -20 "$WORK/server.log"; exit 1; }
    sleep 1
done
chroot --userspec="$user" "$RUN/root" /usr/bin/env -i "${image_env[@]}" \
    jacserve health --target "127.0.0.1:$PORT" --timeout 2

step "a Jacobian from the image's server, through the SDK"
"$PYTHON" - "$PORT" <<'PY'
import sys
import torch
from jacserve.client import Client

torch.manual_seed(0)
layer = torch.nn.Linear(3, 2)
with Client(f"127.0.0.1:{sys.argv[1]}", timeout=120) as client:
    result = client.jacobian(torch.jit.script(layer), torch.randn(3))
assert torch.allclose(result.jacobian, layer.weight.detach()), result.jacobian
print("jacobian", tuple(result.jacobian.shape), "matches the layer's weight;", result.metrics.mode)
PY
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -m1 '^jacserve_requests_total' \
    || "$PYTHON" -c "import urllib.request,sys; print([l for l in urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/metrics').read().decode().splitlines() if l.startswith('jacserve_requests_total')][0])"

step "graceful stop"
kill -TERM "$SERVER"
wait "$SERVER" && echo "server exited 0 on SIGTERM"
SERVER=
echo "PASS: $(podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE")"
