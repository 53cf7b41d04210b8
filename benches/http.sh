#!/usr/bin/env bash
# HTTP benchmarks (BENCHMARKS.md, "HTTP introspection and forward auth"): hot
# tokens through POST /oauth2/introspect and /auth (wrk), beside gRPC
# Introspect (h2load) on the same server in the same run; then nginx serving a
# small file with and without auth_request to patd. Starts its own patd
# (release) on a fresh SQLite file. Needs wrk, h2load (nghttp2-client), nginx.
#
#   cargo build --release && benches/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-32}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
db="sqlite://$dir/patd.db"
token=$(target/release/patd --database-url "$db" admin create --subject bench --account bench \
  --name http --scopes license:read 2>/dev/null)
target/release/patd --database-url "$db" serve --listen 127.0.0.1:50091 \
  --http-listen 127.0.0.1:50092 --metrics-listen 127.0.0.1:50093 --log warn &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50092) 2>/dev/null && break; sleep 0.1; done

# The gRPC request: a length-prefixed IntrospectRequest { token = 1 }.
python3 - "$token" "$dir/introspect.bin" <<'PY'
import sys
token = sys.argv[1].encode()
message = b"\x0a" + bytes([len(token)]) + token
open(sys.argv[2], "wb").write(b"\x00" + len(message).to_bytes(4, "big") + message)
PY
cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA

mkdir -p "$dir/www"
echo hello > "$dir/www/hello.txt"
cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
error_log $dir/nginx-error.log warn;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
    upstream patd { server 127.0.0.1:50092; keepalive 32; }
    server {
        listen 127.0.0.1:50094;
        location = /open { alias $dir/www/hello.txt; }
        location = /protected { auth_request /_patd; alias $dir/www/hello.txt; }
        location = /_patd {
            internal;
            proxy_pass http://patd/auth?scope=license:read;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
}
NGINX
nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off; master_process off;' &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50094) 2>/dev/null && break; sleep 0.1; done

auth="authorization: Bearer $token"
# Each answers as it must before it is measured.
curl -sf -H "$auth" 127.0.0.1:50094/protected >/dev/null
[ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:50094/protected)" = 401 ]
curl -sf 127.0.0.1:50092/oauth2/introspect -d "token=$token" | grep -q '"active":true'
curl -sf -H "$auth" "127.0.0.1:50092/auth?scope=license:read" >/dev/null

wrk_row() { # name, then wrk's arguments
  local name=$1; shift
  local out bad; out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$round $name $(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out") $(awk '$1 == "99%" {print $2}' <<<"$out") ${bad:-0}"
}
echo "round what requests/s p50 p99 non-2xx (gRPC: h2load -c4 -m8, the same 32 in flight)"
for round in $(seq "$ROUNDS"); do
  out=$(h2load -c4 -m8 -D "${DURATION%s}" -d "$dir/introspect.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    http://127.0.0.1:50091/pat.v1.IntrospectionService/Introspect)
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  lat=$(awk '/^time for request:/ {print "mean " $6 ", max " $5}' <<<"$out")
  bad=$(awk '/^status codes:/ {print $0}' <<<"$out")
  echo "$round grpc-introspect $rps ($lat; $bad)"
  wrk_row http-introspect -s "$dir/post.lua" http://127.0.0.1:50092/oauth2/introspect
  wrk_row forward-auth -H "$auth" "http://127.0.0.1:50092/auth?scope=license:read"
  wrk_row nginx-open http://127.0.0.1:50094/open
  wrk_row nginx-auth_request -H "$auth" http://127.0.0.1:50094/protected
done
