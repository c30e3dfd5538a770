# Sourced by callgrind.sh and callgrind-mysql.sh. start_under_callgrind BIN WORK DIR: runs BIN
# under callgrind with the held setup's Concierge configuration (WORK/concierge) on a free port,
# from DIR (emptied first), and waits until it serves. Sets PORT, and VG (valgrind's pid, killed
# on exit).
start_under_callgrind() {
    local bin=$1 work=$2 dir=$3
    command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
    rm -rf "$dir"; mkdir -p "$dir"; cp "$work"/concierge/*.json "$dir/"
    # valgrind 3.19 cannot read the toolchain's DWARF 5: a copy without debug info.
    strip --strip-debug -o "$dir/concierge" "$bin"
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed -E "s/listen: \"127.0.0.1:[0-9]+\"/listen: \"127.0.0.1:$PORT\"/" "$work/concierge/concierge.yaml" > "$dir/concierge.yaml"
    (cd "$dir" && exec valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$dir/concierge" serve --config concierge.yaml > "$dir/valgrind.log" 2>&1) &
    VG=$!
    trap 'kill $VG 2>/dev/null || true' EXIT
    for _ in $(seq 120); do grep -q "writer available" "$dir/valgrind.log" && return 0; sleep 1; done
    echo "concierge did not start under callgrind: $dir/valgrind.log" >&2
    return 1
}
