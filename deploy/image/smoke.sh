#!/bin/sh
# Run the image for real: a control plane container (non-root, read-only root file system, no
# capabilities) and a worker agent container (root, privileged, --isolation required) in its network
# namespace, then one job through them. Prints each step; exits non-zero if the job did not succeed.
#
#   deploy/image/smoke.sh [IMAGE]          (default localhost/trainyard:VERSION; `make image-smoke`)
#
# PODMAN_RUN_OPTS is added to every `podman run`, e.g. ulimits under a host's hard limits:
#   PODMAN_RUN_OPTS='--ulimit nofile=1024:1024 --ulimit nproc=4096:4096'
set -eu

IMAGE=${1:?usage: smoke.sh IMAGE}
OPTS=${PODMAN_RUN_OPTS:-}
PORT=${SMOKE_PORT:-18080}
server=trainyard-smoke-server
worker=trainyard-smoke-worker
cleanup() { podman rm -f "$worker" "$server" >/dev/null 2>&1 || true; podman volume rm -f trainyard-smoke-home >/dev/null 2>&1 || true; }
cleanup
trap cleanup EXIT

key=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
token=tyb_smoke_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

# As the Deployment runs it: uid 10001, read-only root, no capabilities, home in a volume.
# shellcheck disable=SC2086
podman run -d --name "$server" $OPTS -p "127.0.0.1:$PORT:8080" --read-only --tmpfs /tmp \
	--cap-drop ALL --security-opt no-new-privileges -v trainyard-smoke-home:/var/lib/trainyard \
	-e TRAINYARD_HOST=0.0.0.0 -e TRAINYARD_GRPC_HOST=0.0.0.0 -e TRAINYARD_PUBLIC_URL=http://127.0.0.1:8080 \
	-e TRAINYARD_SECRET_KEY="$key" -e TRAINYARD_WORKER_TOKEN="$token" "$IMAGE" server >/dev/null
i=0
until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 120 ] || { podman logs "$server" 2>&1 | tail -20; echo "control plane not ready" >&2; exit 1; }
	sleep 0.5
done
echo "readyz: $(curl -sS "http://127.0.0.1:$PORT/readyz")  healthz: $(curl -sS "http://127.0.0.1:$PORT/healthz")"
echo "user: $(podman exec "$server" id)"

# As the DaemonSet runs it: root, privileged, jobs sandboxed and run as nobody. A private cgroup
# namespace, as containerd gives containers on cgroup v2 nodes.
# shellcheck disable=SC2086
podman run -d --name "$worker" $OPTS --network "container:$server" --privileged --user 0 --cgroupns=private \
	-e TRAINYARD_SERVER=dns:///localhost:50051 -e TRAINYARD_WORKER_TOKEN="$token" \
	-e TRAINYARD_HOME=/var/lib/trainyard/home -e TRAINYARD_ISOLATION=required -e TRAINYARD_RUN_AS=nobody \
	"$IMAGE" worker --name smoke --pool cpu --cpus 1 --memory 1Gi --gpus 0 \
	--work-dir /var/lib/trainyard/work --data-cache /var/lib/trainyard/data-cache >/dev/null
i=0
until podman logs "$worker" 2>&1 | grep -q "registered as worker"; do
	i=$((i + 1))
	[ $i -lt 60 ] || { podman logs "$worker" 2>&1 | tail -20; echo "worker did not register" >&2; exit 1; }
	sleep 0.5
done
podman logs "$worker" 2>&1 | grep -E "job isolation|registered as worker" | sed 's/^[^ ]* [^ ]* /worker: /'

job=$(podman exec "$server" yard submit --cpu 0.5 --memory 256Mi -- sh -c 'echo "hello from $TRAINYARD_JOB_ID as $(id -un)"' | tail -1)
echo "job: $job"
i=0
while :; do
	status=$(podman exec "$server" yard get "$job" | sed -n 's/^ *Status: *//p' | head -1)
	case $status in SUCCEEDED | FAILED | CANCELLED | TIMED_OUT) break ;; esac
	i=$((i + 1))
	[ $i -lt 120 ] || break
	sleep 0.5
done
echo "status: $status"
podman exec "$server" yard logs "$job"
[ "$status" = SUCCEEDED ]
