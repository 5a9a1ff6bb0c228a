#!/usr/bin/env bash
# Builds the runtime image (Containerfile) with podman and smoke-tests it, where
# no image registry and no container engine are reachable (CI, these machines):
#
#  1. assembles the two base images locally and `podman import`s them:
#     - the runtime base: the host's node binary, the libraries `ldd` lists for
#       it, /etc/passwd and /etc/group;
#     - the build base: the files of the host's installed Debian packages that
#       npm ci and node-gyp need (nodejs with npm and its headers, g++, make,
#       python3, a shell and coreutils), and the host's CA bundle (npm);
#  2. builds the image: podman build --storage-driver vfs --isolation chroot
#     --pull=never (npm ci inside reaches the npm registry);
#  3. runs the image's entry point (`buildah from`, then `buildah run
#     --isolation chroot`, in the host's network: `podman run` cannot set
#     rlimits here), with /data bound to a temporary directory, and the
#     shopping-cart endpoint from the same image;
#  4. runs the image's HEALTHCHECK command, calls the cart with curl (Connect
#     JSON), stops the runtime with SIGTERM (it must exit 0), starts it again on
#     the same /data, and checks that the cart's state survived.
#
# Needs root, podman and buildah (apt-get install podman buildah), curl. Prints
# each step; exits non-zero on the first failure. Everything it makes lives in
# one temporary directory (images in a private vfs store), removed at the end
# unless SHOAL_SMOKE_KEEP=1.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/shoal-container-smoke.XXXXXX)"
store=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
image=localhost/shoal-runtime:smoke
started=$SECONDS
pids=()
containers=()

step() { printf '\n[%4ds] == %s\n' "$((SECONDS - started))" "$*"; }
fail() {
  printf '\ncontainer-smoke: FAILED: %s\n' "$*" >&2
  exit 1
}

# Stops what this script started (by the pids it recorded and their
# descendants), removes its containers and, unless asked to keep it, its store.
cleanup() {
  local code=$?
  for pid in "${pids[@]}"; do stop_tree "$pid" KILL; done
  for c in "${containers[@]}"; do buildah "${store[@]}" rm "$c" >/dev/null 2>&1 || true; done
  if [ "${SHOAL_SMOKE_KEEP:-0}" = 1 ]; then
    echo "container-smoke: kept $work"
  else
    rm -rf "$work"
  fi
  exit "$code"
}
trap cleanup EXIT

# The pid and every descendant of it, children first.
tree() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$child"; done
  echo "$1"
}

stop_tree() {
  local pid
  for pid in $(tree "$1"); do kill "-$2" "$pid" 2>/dev/null || true; done
}

# The node process that `buildah run` (pid $1) started: the signal goes to it
# directly, as a container engine would deliver it to the entry point.
node_of() {
  local pid
  for pid in $(tree "$1"); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = node ]; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Waits until $1 appears in file $2, or fails naming $3 (the process, pid $4) and showing its output.
wait_for() {
  local pattern=$1 file=$2 what=$3 pid=$4
  for _ in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$file" "$file.err" >&2 2>/dev/null || true
      fail "$what exited before printing '$pattern'"
    fi
    sleep 0.2
  done
  cat "$file" "$file.err" >&2 2>/dev/null || true
  fail "$what did not print '$pattern' within 120 s"
}

# Writes the tarball $1 of the files named on stdin (absolute paths), with
# the merged-/usr directories (/bin, /lib, ...) as symlinks like Debian's, and
# an /etc/passwd and /etc/group of root, shoal (10001) and nobody.
rootfs_tar() {
  local tarball=$1 extras="$work/extras-$(basename "$1" .tar)"
  local own=(bin sbin lib lib64 tmp root etc/passwd etc/group)
  mkdir -p "$extras/etc" "$extras/tmp" "$extras/root"
  chmod 1777 "$extras/tmp"
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$extras/$d"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nshoal:x:10001:10001:shoal:/app:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$extras/etc/passwd"
  printf 'root:x:0:\nshoal:x:10001:\nnogroup:x:65534:\n' >"$extras/etc/group"
  # A layer may not name a path twice: the list leaves out what the extras hold.
  sed -E 's#^/(bin|sbin|lib|lib64)(/|$)#/usr/\1\2#' | sort -u | while IFS= read -r f; do
    if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\n' "${f#/}"; fi
  done | grep -vxF -e . -e '' "${own[@]/#/-e}" >"$tarball.list" || true
  tar -C / -cf "$tarball" --no-recursion -T "$tarball.list"
  tar -C "$extras" -rf "$tarball" --no-recursion "${own[@]}"
}

# A library path, and the file it links to when it is a symlink.
with_target() { printf '%s\n%s\n' "$1" "$(readlink -f "$1")"; }

step "tools"
for tool in podman buildah curl node npm ldd dpkg-query apt-cache; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install -y podman buildah curl)"
done
podman --version
buildah --version
node --version

step "runtime base: $(command -v node) and the libraries ldd lists, /etc/passwd, /etc/group"
node_bin="$(readlink -f "$(command -v node)")"
{
  with_target "$node_bin"
  ldd "$node_bin" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do with_target "$lib"; done
} | rootfs_tar "$work/node-base.tar"
case "$node_bin" in /usr/bin/node | /usr/local/bin/node) ;; *) fail "node is $node_bin here: the image's PATH has /usr/local/bin and /usr/bin" ;; esac
podman "${store[@]}" import --quiet "$work/node-base.tar" localhost/shoal-node-base >/dev/null
echo "localhost/shoal-node-base: $(wc -l <"$work/node-base.tar.list") files, $(du -h "$work/node-base.tar" | cut -f1)"

step "build base: the host's Debian packages for npm ci and node-gyp"
packages="$(dpkg-query -S "$node_bin" | cut -d: -f1) g++ make python3 dash bash coreutils sed grep findutils tar gzip"
npm_root="$(cd "$(dirname "$(readlink -f "$(command -v npm)")")/.." && pwd)"
closure="$(apt-cache depends --recurse --installed --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $packages 2>/dev/null | grep -v '^[ <]' | sort -u)"
{
  for p in $closure; do dpkg-query -L "$p" 2>/dev/null | grep -Ev '^/usr/share/(doc|man|info|locale|lintian)/' || true; done
  echo /bin/sh
  find /etc/alternatives -maxdepth 1
  # npm as installed here, which may be newer than the one its package shipped.
  find "$npm_root"
  command -v npm npx
  echo /etc/ssl/certs/ca-certificates.crt
} | rootfs_tar "$work/build-base.tar"
podman "${store[@]}" import --quiet "$work/build-base.tar" localhost/shoal-build-base >/dev/null
echo "localhost/shoal-build-base: $(echo $closure | wc -w) packages, $(wc -l <"$work/build-base.tar.list") files, $(du -h "$work/build-base.tar" | cut -f1)"
rm -f "$work"/*.tar

step "podman build (vfs, chroot isolation, --pull=never, one layer per stage): npm ci, npm run build, production tree"
podman "${store[@]}" build --isolation chroot --pull=never --layers=false --format docker \
  --build-arg BUILD_BASE=localhost/shoal-build-base --build-arg BASE=localhost/shoal-node-base \
  -f "$root/Containerfile" -t "$image" "$root" >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  fail "podman build failed (log above)"
}
tail -n 3 "$work/build.log"
podman "${store[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"

step "the image's configuration"
buildah "${store[@]}" inspect --type image "$image" >"$work/image.json"
# A field of the image's Docker config as lines: an array's items, or a value.
field() {
  node -e 'const v = process.argv[1].split(".").reduce((o, k) => o?.[k], JSON.parse(require("fs").readFileSync(process.argv[2], "utf8")).Docker.config);
    for (const line of Array.isArray(v) ? v : v === undefined || v === null ? [] : [typeof v === "object" ? JSON.stringify(v) : v]) console.log(line)' "$1" "$work/image.json"
}
user="$(field User)"
volumes="$(field Volumes)"
mapfile -t run_args < <(field Entrypoint; field Cmd)
mapfile -t health_args < <(field Healthcheck.Test)
echo "user $user, volumes $volumes"
echo "entry point: ${run_args[*]}"
echo "healthcheck: ${health_args[*]}"
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "the image runs as root (user '$user')"
case "$volumes" in *'"/data"'*) ;; *) fail "the image has no /data volume" ;; esac
[ "${health_args[0]:-}" = CMD ] || fail "the healthcheck is not in exec form: ${health_args[*]}"

runtime_port="$(free_port)"
functions_port="$(free_port)"
data="$work/data"
mkdir -p "$data"
chown "${user%%:*}" "$data"
# The image's shoal.yaml with this run's ports: a user's own config is mounted the same way.
sed -e "s#port: 8080#port: $runtime_port#" -e "s#http://shopping-cart-functions:9080#http://127.0.0.1:$functions_port#" \
  "$root/deploy/shoal.yaml" >"$work/shoal.yaml"
grep -q "port: $runtime_port" "$work/shoal.yaml" && grep -q "127.0.0.1:$functions_port" "$work/shoal.yaml" ||
  fail "deploy/shoal.yaml no longer has 'port: 8080' and the functions' url: update this script"

# A new container from the image, named shoal-smoke-$1-<pid>, in $ctr.
new_container() {
  ctr="$(buildah "${store[@]}" from --pull-never --name "shoal-smoke-$1-$$" "$image")"
  containers+=("$ctr")
}

step "shopping-cart endpoint from the image, port $functions_port"
new_container functions
functions_ctr=$ctr
buildah "${store[@]}" run --isolation chroot --env "PORT=$functions_port" "$functions_ctr" -- \
  node /app/examples/shopping-cart/dist/serve-functions.js >"$work/functions.out" 2>"$work/functions.out.err" &
functions_pid=$!
pids+=("$functions_pid")
wait_for "serving shoal.v1.FunctionService" "$work/functions.out" "the shopping-cart endpoint" "$functions_pid"
cat "$work/functions.out"

runtime_pid=

step "the image holds production dependencies only"
buildah "${store[@]}" run --isolation chroot "$functions_ctr" -- node -e '
  const { existsSync } = require("node:fs");
  const dev = ["typescript", "vitest", "@biomejs/biome", "@bufbuild/buf", "@shoal/cli", "tsx", "ts-morph"].filter((p) => existsSync(`/app/node_modules/${p}`));
  const need = ["@shoal/runtime", "@shoal/sdk", "fs-ext/build/Release"].filter((p) => !existsSync(`/app/node_modules/${p}`));
  console.log(`development packages: ${dev.join(", ") || "none"}; missing: ${need.join(", ") || "none"}`);
  process.exit(dev.length + need.length === 0 ? 0 : 1);' || fail "the image's /app/node_modules is not the production tree"
# Each start is a new container from the image: only /data carries state over.
start_runtime() {
  new_container "runtime-$1"
  runtime_ctr=$ctr
  buildah "${store[@]}" run --isolation chroot -v "$data:/data" -v "$work/shoal.yaml:/etc/shoal/shoal.yaml:ro" \
    "$runtime_ctr" -- "${run_args[@]}" >"$work/runtime-$1.out" 2>"$work/runtime-$1.out.err" &
  runtime_pid=$!
  pids+=("$runtime_pid")
  wait_for "listening at" "$work/runtime-$1.out" "the runtime" "$runtime_pid"
  cat "$work/runtime-$1.out"
}

step "runtime from the image: ${run_args[*]} (port $runtime_port, /data on $data)"
start_runtime 1

step "the image's healthcheck: ${health_args[*]:1}"
buildah "${store[@]}" run --isolation chroot --env "SHOAL_HEALTHZ_URL=http://127.0.0.1:$runtime_port/healthz" \
  "$runtime_ctr" -- "${health_args[@]:1}" || fail "the healthcheck failed"
echo "healthy"

url="http://127.0.0.1:$runtime_port"
call() {
  local out
  echo "curl -X POST $url/$1 -d '$2'" >&2
  out="$(curl -sS --fail-with-body -X POST -H 'content-type: application/json' -d "$2" "$url/$1")" ||
    fail "curl $1 answered: $out"
  echo "$out"
}
expect() {
  echo "  -> $1"
  [ "$1" = "$2" ] || fail "expected $2"
}

step "call functions from outside (Connect JSON); the cart calls the inventory through the runtime"
expect "$(call shop.v1.Inventory/Restock '{"sku":"socks","quantity":10}')" '{"sku":"socks","available":10}'
expect "$(call shop.v1.Cart/AddItem '{"userId":"smoke","sku":"socks","quantity":2}')" '{"items":{"socks":2}}'

step "SIGTERM to the runtime's node (pid $(node_of "$runtime_pid"))"
kill -TERM "$(node_of "$runtime_pid")"
code=0
wait "$runtime_pid" || code=$?
[ "$code" = 0 ] || {
  cat "$work/runtime-1.out.err" >&2
  fail "the runtime exited $code on SIGTERM, not 0"
}
echo "exited 0"
owner="$(stat -c %u "$data")"
echo "/data: $(find "$data" -type f | wc -l) files, owned by uid $(find "$data" -mindepth 1 -printf '%u\n' | sort -u | tr '\n' ' ')"
[ -z "$(find "$data" -mindepth 1 ! -user "$owner")" ] || fail "files in /data not owned by the image's user"

step "runtime again on the same /data"
start_runtime 2

step "the state survived"
expect "$(call shop.v1.Cart/View '{"userId":"smoke"}')" '{"items":{"socks":2}}'
expect "$(call shop.v1.Inventory/Level '{"sku":"socks"}')" '{"sku":"socks","available":8}'
expect "$(call shop.v1.Cart/AddItem '{"userId":"smoke","sku":"socks","quantity":1}')" '{"items":{"socks":3}}'

step "stop"
kill -TERM "$(node_of "$runtime_pid")"
wait "$runtime_pid" || fail "the runtime exited $? on SIGTERM, not 0"
kill -TERM "$(node_of "$functions_pid")"
wait "$functions_pid" || fail "the shopping-cart endpoint exited $? on SIGTERM, not 0"

printf '\ncontainer-smoke: passed in %ds\n' "$((SECONDS - started))"
