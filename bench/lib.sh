# lib.sh -- sourced by the bench scripts: loopback ports and a ringmx config for benchmarks.

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_listen PORT: true once something listens on 127.0.0.1:PORT (10 s at most)
wait_listen() { local i; for ((i = 0; i < 200; i++)); do [[ -n $(ss -Hltn "( sport = :$1 )") ]] && return 0; sleep 0.05; done; return 1; }

# ringmx_config DIR PORT ROUTE [YAML...]: writes DIR/ringmx.yaml for a ringmx with its spool
# and control socket in DIR, listening on 127.0.0.1:PORT (role mx, relaying example.test
# from loopback), every recipient routed to ROUTE; further lines are added as they are.
ringmx_config() {
    local dir=$1 port=$2 route=$3; shift 3
    mkdir -p "$dir/spool"
    {
        cat <<YAML
hostname: bench.test
spool_dir: $dir/spool
control_socket: $dir/ctl.sock
listen: [ { address: "127.0.0.1:$port", role: mx, tls: none, auth: "off" } ]
relay_domains: [ example.test ]
mynetworks: [ 127.0.0.0/8 ]
routes: { "*": "$route" }
YAML
        printf '%s\n' "$@"
    } >"$dir/ringmx.yaml"
}
