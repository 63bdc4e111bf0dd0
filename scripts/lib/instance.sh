# Sourced by scripts that need a served Mercato (scripts/fuzz-api,
# scripts/check-contract). `serve_instance` builds and starts one on a free
# port with its own private PostgreSQL in a scratch directory, waits until it is
# ready, and sets:
#   base   http://127.0.0.1:<port>
#   key    the demo merchant's API key
#   admin  the platform admin token
#   scratch  the scratch directory (removed, with the instance stopped, on exit)
# Expects CARGO_TARGET_DIR to be set and the repository root as the directory.

serve_instance() {
    cargo build --locked -p mercato --bin mercato
    scratch="$(mktemp -d)"
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    admin="admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    base="http://127.0.0.1:$port"
    MERCATO_ADMIN_TOKEN="$admin" "$CARGO_TARGET_DIR/debug/mercato" serve \
        --data-dir "$scratch" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 \
        >"$scratch/serve.log" 2>&1 &
    server=$!
    trap stop_instance EXIT

    for _ in $(seq 1 120); do
        [ -s "$scratch/demo-api-key" ] && curl -fs "$base/readyz" >/dev/null && break
        kill -0 "$server" 2>/dev/null || {
            cat "$scratch/serve.log" >&2
            echo "$(basename "$0"): mercato did not start" >&2
            exit 1
        }
        sleep 0.5
    done
    key="$(cat "$scratch/demo-api-key")"
}

stop_instance() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$scratch"
}
