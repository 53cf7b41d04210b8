#!/usr/bin/env bash
# End to end: the axum hello-world of examples/hello_bench.rs under wrk, with no
# authentication, behind AuthLayer (cached tokens), and calling Introspect per
# request; ROUNDS rounds of the three, DURATION each, one token. Starts its own
# patd (release) on a fresh SQLite file. Needs wrk (apt-get install wrk).
#
#   cargo build --release --workspace --all-features --examples
#   crates/patd-client/benches/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-32}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
db="sqlite://$dir/patd.db"
token=$(target/release/patd --database-url "$db" admin create --subject bench --account bench \
  --name e2e --scopes license:read 2>/dev/null)
target/release/patd --database-url "$db" serve --listen 127.0.0.1:50071 \
  --metrics-listen 127.0.0.1:50072 --log warn &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50071) 2>/dev/null && break; sleep 0.1; done
PATD_ADDR=127.0.0.1:50071 LISTEN=127.0.0.1:50073 target/release/examples/hello_bench >/dev/null &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50073) 2>/dev/null && break; sleep 0.1; done
for route in open layer introspect; do   # each answers 200 before it is measured
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "127.0.0.1:50073/$route")
  [ "$code" = 200 ] || { echo "/$route answered $code" >&2; exit 1; }
done
echo "round route requests/s p50 p99 non-2xx"
for round in $(seq "$ROUNDS"); do
  for route in open layer introspect; do
    out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "authorization: Bearer $token" \
      "http://127.0.0.1:50073/$route")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "$round /$route $rps $p50 $p99 ${bad:-0}"
  done
done
