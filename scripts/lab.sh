#!/usr/bin/env bash
# The Sluice namespace lab: a client, a router, the balancer and three backends,
# each in its own network namespace, with real TCP and UDP servers behind the VIPs.
#
#   scripts/lab.sh up NAME            build the lab (cleans up after itself if that fails)
#   scripts/lab.sh down NAME          remove everything of lab NAME (idempotent)
#   scripts/lab.sh info NAME          key=value lines: addresses, interfaces, paths
#   scripts/lab.sh services NAME [ECHO] [lb|lb2|lb3]  print a service file (for that balancer); ECHO = the echo service's
#                                     backends as be1:1,be2:1 (the default). In a LAB_SEGMENT=nat lab: the
#                                     nat and fullnat services below (no arguments)
#   scripts/lab.sh apply NAME [ECHO]  write that service file and `lbctl apply` it on the lb
#                                     (and on lb2 and lb3, with their own node addresses, when the lab has them)
#   scripts/lab.sh lbctl NAME ARGS... run lbctl in the lb namespace with the lab's pin path
#   scripts/lab.sh lbctl2 NAME ARGS.. the same for the second balancer (LAB_BALANCERS=2 or 3)
#   scripts/lab.sh lbctl3 NAME ARGS.. the same for the third balancer (LAB_BALANCERS=3)
#   scripts/lab.sh route NAME both|lb|lb2|lb3  route the VIPs over every balancer (ECMP; `both`
#                                     also in a three-balancer lab) or only one (the others withdrawn,
#                                     as failed nodes would be); not in a LAB_ROUTING=bgp lab
#   scripts/lab.sh bird NAME NODE ARGS...  birdc ARGS... on NODE's BIRD (router lb lb2 lb3; bgp lab only)
#   scripts/lab.sh bird-stop NAME NODE     SIGKILL NODE's BIRD (as a crash) and wait until it is gone
#   scripts/lab.sh bird-start NAME NODE    start it again, same config; wait until its socket answers
#   scripts/lab.sh bfd NAME on|off    rewrite every bird.conf with or without BFD, `configure`
#                                     each, wait until the router's sessions are Established again
#   scripts/lab.sh cut NAME LB on|off a silent failure of the router's link to LB (bgp lab): nftables
#                                     in the router drops everything on r-lb/r-lb2/r-lb3, carrier stays up
#   scripts/lab.sh client NAME ARGS.. run scripts/lab-client.py in the client namespace
#   scripts/lab.sh exec NAME NODE CMD...  run CMD in NAME-NODE (client router lb be1 be2 be3; be4-be6 in a nat lab)
#   scripts/lab.sh server-stop NAME BE    stop backend BE's servers (as a crash would)
#   scripts/lab.sh server-start NAME BE   start them again and wait until they listen
#   scripts/lab.sh decap NAME on|off      attach (as `up` does) or detach every backend's decapsulator
#                                     (not in a nat lab: its backends have none)
#   scripts/lab.sh capture NAME NODE IF FILE [TCPDUMP ARGS...]  tcpdump -U on NODE's IF into FILE
#                                     (exec'd with SIGTERM unblocked: SIGTERM ends it cleanly)
#
# Topology (interface names are per namespace, addresses exist only inside the lab, so
# several labs with different NAMEs run side by side):
#
#   NAME-client eth0 10.10.1.2 fd10:1::2
#        |
#   NAME-router r-client 10.10.1.1 fd10:1::1        routes the VIPs to the lb
#               r-lb     10.10.2.1 fd10:2::1  ----  NAME-lb lb0 10.10.2.2 fd10:2::2 (balancer, XDP)
#               br0      10.10.3.1 fd10:3::1  (bridge; ports r-be1..r-be3)
#        |
#   NAME-be1..3 eth0 10.10.3.1N fd10:3::1N (decap XDP), VIPs on lo, servers on the VIPs
#               (and, for health checks, HTTP :8080 and UDP :53 on 10.10.3.1N)
#
# With LAB_BALANCERS=2 at `up`, a second balancer joins (for connection-state sync tests):
#
#   NAME-router r-lb2    10.10.4.1 fd10:4::1  ----  NAME-lb2 lb0 10.10.4.2 fd10:4::2 (XDP, pins $BPFFS/lb2)
#
# and the router routes every VIP over both balancers with an ECMP multipath route,
# hashing on layer 4 (fib_multipath_hash_policy=1), so different client ports spread
# over both nodes. `route NAME lb|lb2` withdraws one of them, `route NAME both` restores
# ECMP. The count is kept in the lab's directory: later commands need no LAB_BALANCERS.
# LAB_BALANCERS=3 (own segment only) adds a third, in the same way:
#
#   NAME-router r-lb3    10.10.6.1 fd10:6::1  ----  NAME-lb3 lb0 10.10.6.2 fd10:6::2 (XDP, pins $BPFFS/lb3)
#
# With LAB_ROUTING=bgp at `up` (LAB_BALANCERS=2 or 3, own segment) nobody writes VIP routes
# by hand: every node runs BIRD 2 (in its namespace; config, control socket, pid and log as
# DIR/NODE.bird.{conf,ctl,pid,log}). The router (AS 65000) has an eBGP session per balancer
# and family (to its lb0 v4 and v6 addresses), imports everything and installs the best
# routes, merged into ECMP multipath routes, in its kernel. Each balancer (AS 65100) has a
# v4 and a v6 session to the router, installs nothing, and announces what its
# DIR/LB.bird-vips.conf holds: static VIP routes, which the Sluice agent writes (the lab
# writes it empty) and loads with `configure`. LAB_BFD=1 starts with BFD on every session
# (`bfd NAME on|off` later). The routing and BFD state are kept in the lab's directory.
#
# With LAB_SEGMENT=shared at `up` (for l2dsr: direct routing on one Ethernet segment), the
# balancer's link is a port of the backends' bridge instead of a link of its own:
#
#   NAME-router br0 10.10.3.1 fd10:3::1 (ports r-lb, r-be1..r-be3)
#   NAME-lb     lb0 10.10.3.2 fd10:3::2 (balancer, XDP; default route via 10.10.3.1)
#
# and the router routes the VIPs to 10.10.3.2 / fd10:3::2 on br0. The backends are as in
# the default lab (their decapsulators serve ipip and gue services; an l2dsr service needs
# none: `decap NAME off`). LAB_TUNNEL_MTU at `up` (default 1600) sets the MTU of the
# balancer's and the backends' links: 1500, the client's, leaves no room for a tunnel
# header, so the balancer's MSS clamping and ICMP answers are what carry big packets.
# Both are kept in the lab's directory like the balancer count. LAB_SEGMENT=shared and
# LAB_BALANCERS=2 do not go together.
#
# A client packet to a VIP goes client -> router -> lb; the lb tunnels it (IPIP, 6in6 or
# 4in6) back to the router, which forwards it to the backend; the backend strips the
# tunnel (lbctl decap) and answers the client straight through the router (direct
# server return): replies never cross the lb.
#
# With LAB_SEGMENT=nat at `up` (for the nat and fullnat modes: the balancer translates
# addresses both ways), the balancer has a second interface, toward backends of its own,
# and six backends that are plain servers: no VIP, no decapsulator, no ARP tuning, just
# nginx (Debian's package, a config in the lab's directory) on ports 80 and 8080 and
# lab-server.py's UDP echo on 53 and TCP echo on 7, all on the backend's own address:
#
#   NAME-client eth0 10.10.1.2 fd10:1::2
#        |
#   NAME-router r-client 10.10.1.1 fd10:1::1   routes the VIPs and the SNAT addresses to the lb
#               r-lb     10.10.2.1 fd10:2::1  ---- NAME-lb lb0 10.10.2.2 fd10:2::2 (XDP; client side;
#               br0      10.10.3.1 fd10:3::1           default route via 10.10.2.1)
#                  (bridge; ports r-be4..r-be6)            lb1 10.10.5.1 fd10:5::1 (XDP; backend side)
#               br1 (a plain switch: no address, IPv6 off; ports r-lb1, r-be1..r-be3)
#        |
#   NAME-be1..3 eth0 10.10.5.1N fd10:5::1N, default route via the lb (10.10.5.1): nat's backends
#   NAME-be4..6 eth0 10.10.3.1N fd10:3::1N, default route via the router: fullnat's backends,
#               on another subnet, which the lb reaches by ordinary routing (via the router)
#
# nat (VIP 198.51.100.10, 2001:db8:100::10): client -> router -> lb0, rewritten to a
# backend and redirected out of lb1; the backend answers the client's own address through
# its gateway, lb1, where the reply is rewritten back and redirected out of lb0 to the MAC
# the client's packets came from. fullnat (VIP 198.51.100.30, 2001:db8:100::30): the
# source becomes a SNAT address (node.snat_v4 10.10.8.1 and 10.10.8.2, snat_v6 fd10:8::1,
# ports 20000-29999); to be4-be6 the lb sends back out of lb0 (one-arm) to the
# router, and their replies to the SNAT addresses come back the same way, because the
# router routes 10.10.8.0/24 and fd10:8::/64 to the lb (the lb holds no SNAT address
# itself). The fullnat service on port 8080 (web-fullnat-lb1) goes to be1-be3 instead:
# full NAT across both interfaces. The lb does not forward in its kernel (ip_forward 0):
# only its XDP program carries traffic between its two sides. Every interface the lb
# transmits on has an XDP program at its peer (r-lb, r-lb1), and every sender (the
# client, all backends, and the router toward the lb) runs `ethtool -K IFACE tx off`. `lbctl attach` runs once per
# interface with the same pin path: lb0 first (its default route gives the gateway MAC),
# then lb1 with --gateway-mac of that same router (lb1 has no default route, and the
# gateway is one per balancer). `up` applies what `services NAME` prints. The links'
# MTU defaults to 1500 here (no tunnel header); LAB_SEGMENT=nat has one balancer.
#
# Environment: LBCTL (default .build/debug/lbctl of this repository), PYTHON (default
# Debian's /usr/bin/python3), NGINX (default the nginx on PATH, else /usr/sbin/nginx; a nat lab's),
# LAB_ROOT (default /tmp: the lab dir is $LAB_ROOT/sluice-lab-NAME),
# LAB_BALANCERS (1, 2 or 3, default 1), LAB_SEGMENT (own, shared or nat, default own), LAB_TUNNEL_MTU
# (1280-9000, default 1600, 1500 for nat), LAB_ROUTING (static or bgp, default static), LAB_BFD
# (1 = BFD on at start, bgp only), LAB_CT_SIZE (the balancer's --conntrack-size, default
# lbctl's; these six are read by `up` only), BIRD and BIRDC (default Debian's bird2:
# /usr/sbin/bird, /usr/sbin/birdc).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LBCTL=${LBCTL:-$REPO/.build/debug/lbctl}
[[ $LBCTL == /* ]] || LBCTL=$REPO/$LBCTL
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3); fi
fi
LAB_ROOT=${LAB_ROOT:-/tmp}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}   # a nat lab's backends
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}   # a nat lab's backends (accept-proxy)
BIRD=${BIRD:-/usr/sbin/bird} BIRDC=${BIRDC:-/usr/sbin/birdc}   # a LAB_ROUTING=bgp lab's

# --- the plan: addresses and names ------------------------------------------------
CLIENT_V4=10.10.1.2   CLIENT_V6=fd10:1::2
ROUTER_CLIENT_V4=10.10.1.1 ROUTER_CLIENT_V6=fd10:1::1
ROUTER_LB_V4=10.10.2.1 ROUTER_LB_V6=fd10:2::1
LB_V4=10.10.2.2       LB_V6=fd10:2::2
ROUTER_LB2_V4=10.10.4.1 ROUTER_LB2_V6=fd10:4::1   # LAB_BALANCERS=2 or 3 only
LB2_V4=10.10.4.2      LB2_V6=fd10:4::2
ROUTER_LB3_V4=10.10.6.1 ROUTER_LB3_V6=fd10:6::1   # LAB_BALANCERS=3 only
LB3_V4=10.10.6.2      LB3_V6=fd10:6::2
ROUTER_BE_V4=10.10.3.1 ROUTER_BE_V6=fd10:3::1
BACKENDS=(be1 be2 be3)
# In a nat lab be1-be3 sit behind the lb on 10.10.5.0/24; every other backend on the router's 10.10.3.0/24.
be_net() { if [[ ${SEGMENT:-own} == nat && " ${NAT_BACKENDS[*]} " == *" $1 "* ]]; then echo 5; else echo 3; fi; }
be_v4() { echo "10.10.$(be_net "$1").1${1#be}"; }
be_v6() { echo "fd10:$(be_net "$1")::1${1#be}"; }
VIP4=198.51.100.10      # web (TCP 80, 4in4, weights 1:2:3), dns (UDP 53), echo (TCP 7)
VIP6=2001:db8:100::10   # web6 (TCP 80, 6in6)
VIP4IN6=198.51.100.20   # web4in6 (TCP 80, IPv4 VIP with IPv6 backends: 4in6)
WEB_WEIGHTS=(1 2 3)
# LAB_SEGMENT=nat only: the backend-side link, the full-NAT VIPs and SNAT pool, which
# backends sit where (set_name fills BACKENDS, NAT_BACKENDS and FULLNAT_BACKENDS).
LB_BE_V4=10.10.5.1    LB_BE_V6=fd10:5::1
FULLNAT_VIP4=198.51.100.30 FULLNAT_VIP6=2001:db8:100::30
SNAT_V4=(10.10.8.1 10.10.8.2) SNAT_V6=(fd10:8::1)
SNAT_NET4=10.10.8.0/24 SNAT_NET6=fd10:8::/64
SNAT_PORTS=20000-29999   # above every backend port, so tshark dissects by the backend's port
FULLNAT_BACKEND_PORT=8080   # web-fullnat: service port 80, nginx on 8080
# client_address: proxy-v2 services (fullnat, be4-be6) and where their backends listen for
# the PROXY v2 header: nginx (proxy_protocol), HAProxy (accept-proxy), lab-server.py.
PROXY_NGINX_PORT=8081 PROXY_HAPROXY_PORT=8082 PROXY_BANNER_PORT=2525 PROXY_ECHO_PORT=2526
PROXY_BIG_BYTES=$((4 * 1024 * 1024))   # nginx's /big on the PROXY port: a download, byte-exact
NEVER_VIP=192.0.2.254   # for the router's decap program, which must never decapsulate
GUE_PORT=6080           # the backends' decapsulators strip GUE to this UDP port (node.gue_port)

die() { echo "lab.sh: $*" >&2; exit 2; }

# For a process `up` leaves running: close the descriptors a caller handed us (a test
# runner's pipes, or any other descriptor a spawner leaves open), so the servers never keep
# the caller waiting for an EOF.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

set_name() {
    NAME=${1:-}
    [[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$ ]] || die "NAME must be 1-40 of [A-Za-z0-9_-], got '${NAME}'"
    DIR=$LAB_ROOT/sluice-lab-$NAME
    BPFFS=$DIR/bpffs
    LB_PIN=$BPFFS/lb
    LB2_PIN=$BPFFS/lb2
    LB3_PIN=$BPFFS/lb3
    # The balancer count: what `up` recorded in the lab's directory, else (for `up`)
    # LAB_BALANCERS.
    if [[ -f $DIR/balancers ]]; then BALANCERS=$(cat "$DIR/balancers"); else BALANCERS=${LAB_BALANCERS:-1}; fi
    [[ $BALANCERS == 1 || $BALANCERS == 2 || $BALANCERS == 3 ]] || die "LAB_BALANCERS must be 1, 2 or 3, got '$BALANCERS'"
    LBS=(lb lb2 lb3)
    LBS=("${LBS[@]:0:BALANCERS}")
    # The segment and the tunnel MTU, recorded by `up` the same way.
    if [[ -f $DIR/segment ]]; then SEGMENT=$(cat "$DIR/segment"); else SEGMENT=${LAB_SEGMENT:-own}; fi
    [[ $SEGMENT == own || $SEGMENT == shared || $SEGMENT == nat ]] || die "LAB_SEGMENT must be own, shared or nat, got '$SEGMENT'"
    [[ $SEGMENT == own || $BALANCERS == 1 ]] || die "LAB_SEGMENT=$SEGMENT has one balancer (LAB_BALANCERS=1)"
    # How the router learns the VIP routes (static: set_routes; bgp: BIRD), and whether the
    # BGP sessions run BFD: recorded the same way.
    if [[ -f $DIR/routing ]]; then ROUTING=$(cat "$DIR/routing"); else ROUTING=${LAB_ROUTING:-static}; fi
    [[ $ROUTING == static || $ROUTING == bgp ]] || die "LAB_ROUTING must be static or bgp, got '$ROUTING'"
    if [[ $ROUTING == bgp ]] && { ((BALANCERS < 2)) || [[ $SEGMENT != own ]]; }; then
        die "LAB_ROUTING=bgp needs LAB_BALANCERS=2 or 3 and the own segment"
    fi
    if [[ -f $DIR/bfd ]]; then
        BFD=$(cat "$DIR/bfd")
    else
        [[ ${LAB_BFD:-0} == 0 || ${LAB_BFD:-0} == 1 ]] || die "LAB_BFD must be 0 or 1, got '${LAB_BFD}'"
        if [[ ${LAB_BFD:-0} == 1 ]]; then BFD=on; else BFD=off; fi
    fi
    [[ $BFD == off || $ROUTING == bgp ]] || die "LAB_BFD=1 needs LAB_ROUTING=bgp"
    # lb and backend links: by default room for the 20/40(+8 GUE)-byte tunnel header; NAT
    # adds no header, so a nat lab's links are the client's 1500.
    local default_mtu=1600
    [[ $SEGMENT != nat ]] || default_mtu=1500
    if [[ -f $DIR/tunnel_mtu ]]; then TUNNEL_MTU=$(cat "$DIR/tunnel_mtu"); else TUNNEL_MTU=${LAB_TUNNEL_MTU:-$default_mtu}; fi
    [[ $TUNNEL_MTU =~ ^[0-9]+$ ]] && ((TUNNEL_MTU >= 1280 && TUNNEL_MTU <= 9000)) ||
        die "LAB_TUNNEL_MTU must be 1280-9000, got '$TUNNEL_MTU'"
    if [[ $SEGMENT == shared ]]; then
        # The balancer sits on the backends' segment, the router's br0 its gateway.
        LB_V4=10.10.3.2 LB_V6=fd10:3::2 ROUTER_LB_V4=$ROUTER_BE_V4 ROUTER_LB_V6=$ROUTER_BE_V6
    fi
    if [[ $SEGMENT == nat ]]; then
        NAT_BACKENDS=(be1 be2 be3) FULLNAT_BACKENDS=(be4 be5 be6)
        BACKENDS=("${NAT_BACKENDS[@]}" "${FULLNAT_BACKENDS[@]}")
    fi
    NODES=(client router "${LBS[@]}" "${BACKENDS[@]}")
}
# A balancer's addresses, pin path and the router's side of its link (lb, lb2, lb3).
lb_v4() { case $1 in lb) echo "$LB_V4" ;; lb2) echo "$LB2_V4" ;; lb3) echo "$LB3_V4" ;; esac; }
lb_v6() { case $1 in lb) echo "$LB_V6" ;; lb2) echo "$LB2_V6" ;; lb3) echo "$LB3_V6" ;; esac; }
lb_pin() { case $1 in lb) echo "$LB_PIN" ;; lb2) echo "$LB2_PIN" ;; lb3) echo "$LB3_PIN" ;; esac; }
router_lb_v4() { case $1 in lb) echo "$ROUTER_LB_V4" ;; lb2) echo "$ROUTER_LB2_V4" ;; lb3) echo "$ROUTER_LB3_V4" ;; esac; }
router_lb_v6() { case $1 in lb) echo "$ROUTER_LB_V6" ;; lb2) echo "$ROUTER_LB2_V6" ;; lb3) echo "$ROUTER_LB3_V6" ;; esac; }
router_lb_if() { echo "r-$1"; }
check_lb() { # LB: one of this lab's balancers
    [[ " ${LBS[*]} " == *" $1 "* ]] || die "lab $NAME has no balancer '$1' (${LBS[*]}; LAB_BALANCERS at up)"
}
ns() { echo "$NAME-$1"; }
nx() { local node=$1; shift; ip netns exec "$(ns "$node")" "$@"; }
sysctl_in() { local node=$1; shift; for kv in "$@"; do nx "$node" sysctl -qw "$kv" >/dev/null; done; }
# lbctl needs the host's mounts (our bpffs), which `ip netns exec` hides: nsenter keeps them.
lbctl_in() { local node=$1; shift; nsenter --net="/run/netns/$(ns "$node")" "$LBCTL" "$@"; }

# --- down -------------------------------------------------------------------------
cmd_down() {
    local node n pid pids nodes=("${NODES[@]}")
    # lb2, lb3 and a nat lab's be4-be6 too, whatever was recorded: a bring-up that failed
    # early leaves no record. (BIRD runs inside the namespaces: their pids end it too.)
    for node in lb2 lb3 be4 be5 be6; do [[ " ${nodes[*]} " == *" $node "* ]] || nodes+=("$node"); done
    for node in "${nodes[@]}"; do
        n=$(ns "$node")
        [[ -e /run/netns/$n ]] || continue
        # Servers and clients this lab started run inside its namespaces; end them by pid.
        pids=$(ip netns pids "$n" 2>/dev/null || true)
        for pid in $pids; do kill "$pid" 2>/dev/null || true; done
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$n" 2>/dev/null || true)
            [[ -z $pids ]] && break
            sleep 0.1
        done
        for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
        # Deleting the namespace removes its veths, the bridge and their XDP programs.
        ip netns del "$n" 2>/dev/null || true
    done
    # Until no bpffs is there. Asked of the path itself (statfs), not of the mount table,
    # which parallel mounts and unmounts can make a reader miss a line of.
    local tries=0
    while [[ $(stat -f -c %T "$BPFFS" 2>/dev/null) == bpf_fs ]] && ((tries++ < 10)); do umount -l "$BPFFS" || break; done
    rm -rf "$DIR"
}

# --- the backends' servers ---------------------------------------------------------
# The real servers, on the VIPs, each logging the client address it sees; plus, on the
# backend's own address, what health checks probe: HTTP on 8080 and a UDP echo on 53.
start_server() { # BACKEND
    local b=$1 v4; v4=$(be_v4 "$1")
    if [[ $SEGMENT == nat ]]; then start_plain_servers "$b"; return; fi
    : >>"$DIR/$b.log"
    : >"$DIR/$b.server.out"
    (close_inherited_fds; exec ip netns exec "$(ns "$b")" "$PYTHON" -u "$REPO/scripts/lab-server.py" "$b" "$DIR/$b.log" \
        "tcp-http:$VIP4:80" "tcp-http:$VIP4IN6:80" "tcp-http:[$VIP6]:80" \
        "udp:$VIP4:53" "udp:$VIP4IN6:53" "tcp-echo:$VIP4:7" "tcp-count:$VIP4:9" "tcp-count:$VIP4IN6:9" \
        "tcp-http:$v4:8080" "udp:$v4:53") >"$DIR/$b.server.out" 2>&1 </dev/null &
    echo $! >"$DIR/$b.server.pid"
}

# A nat lab's backends: plain servers on the backend's own address, nothing else. nginx
# (Debian's, run in the foreground with a config of the lab's) answers HTTP on 80 and 8080
# with the backend's name and logs "http LOCAL:PORT CLIENT" into the backend's log, as
# lab-server.py logs its UDP echo (53) and TCP echo (7) and count (9) servers.
start_plain_servers() { # BACKEND
    local b=$1 v4 v6 conf prefix; v4=$(be_v4 "$1") v6=$(be_v6 "$1")
    prefix=$DIR/$b.nginx conf=$DIR/$b.nginx/nginx.conf
    mkdir -p "$prefix"
    : >>"$DIR/$b.log"
    : >"$DIR/$b.server.out"
    cat >"$conf" <<EOF
# nginx for backend $b of lab $NAME (scripts/lab.sh): everything under $prefix.
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 1024; }
http {
    log_format lab 'http \$server_addr:\$server_port \$remote_addr';
    log_format proxy 'proxy-nginx \$server_addr:\$server_port \$remote_addr \$proxy_protocol_addr:\$proxy_protocol_port';
    access_log $DIR/$b.log lab;
    client_body_temp_path $prefix/body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    default_type text/plain;
    server {
        listen $v4:80;
        listen $v4:$FULLNAT_BACKEND_PORT;
        listen [$v6]:80;
        listen [$v6]:$FULLNAT_BACKEND_PORT;
        location / { return 200 "$b\n"; }
    }
    server {
        listen $v4:$PROXY_NGINX_PORT proxy_protocol;
        listen [$v6]:$PROXY_NGINX_PORT proxy_protocol;
        access_log $DIR/$b.log proxy;
        location = /big { alias $prefix/big.bin; default_type application/octet-stream; }
        location / { return 200 "$b \$proxy_protocol_addr \$proxy_protocol_port\n"; }
    }
}
EOF
    head -c "$PROXY_BIG_BYTES" /dev/urandom >"$prefix/big.bin"
    chmod 644 "$prefix/big.bin"
    # HAProxy (Debian's) reads the header (accept-proxy) and answers with the client it names;
    # it logs to stdout, into a file of its own: it sets its stdout non-blocking with F_SETFL,
    # which clears O_APPEND, and would write over what others append to the backend's log.
    cat >"$DIR/$b.haproxy.cfg" <<EOF
# HAProxy for backend $b of lab $NAME (scripts/lab.sh).
global
    log stdout format raw local0
    maxconn 2048
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend proxied
    bind $v4:$PROXY_HAPROXY_PORT accept-proxy
    bind [$v6]:$PROXY_HAPROXY_PORT accept-proxy
    log-format "proxy-haproxy %fi:%fp %bi %ci:%cp"
    http-request return status 200 content-type text/plain lf-string "$b %[src] %[src_port]\n"
EOF
    (close_inherited_fds; exec ip netns exec "$(ns "$b")" "$HAPROXY" -db -f "$DIR/$b.haproxy.cfg") \
        >>"$DIR/$b.haproxy.log" 2>"$DIR/$b.haproxy.out" </dev/null &
    echo $! >"$DIR/$b.haproxy.pid"
    # -e: the error log before the config is read (not Debian's /var/log/nginx).
    (close_inherited_fds; exec ip netns exec "$(ns "$b")" "$NGINX" -c "$conf" -p "$prefix/" -e "$prefix/error.log") \
        >"$DIR/$b.nginx.out" 2>&1 </dev/null &
    echo $! >"$DIR/$b.nginx.pid"
    (close_inherited_fds; exec ip netns exec "$(ns "$b")" "$PYTHON" -u "$REPO/scripts/lab-server.py" "$b" "$DIR/$b.log" \
        "udp:$v4:53" "udp:[$v6]:53" "tcp-echo:$v4:7" "tcp-echo:[$v6]:7" "tcp-count:$v4:9" \
        "proxy-banner:$v4:$PROXY_BANNER_PORT" "proxy-banner:[$v6]:$PROXY_BANNER_PORT" \
        "proxy-echo:$v4:$PROXY_ECHO_PORT" "proxy-echo:[$v6]:$PROXY_ECHO_PORT") \
        >"$DIR/$b.server.out" 2>&1 </dev/null &
    echo $! >"$DIR/$b.server.pid"
}

wait_server() { # BACKEND
    local b=$1 i
    for i in $(seq 50); do
        if grep -q serving "$DIR/$b.server.out" 2>/dev/null; then
            [[ $SEGMENT == nat ]] || return 0
            wait_nginx "$b"
            return
        fi
        kill -0 "$(cat "$DIR/$b.server.pid")" 2>/dev/null || { cat "$DIR/$b.server.out" >&2; false; }
        sleep 0.1
    done
    echo "lab.sh: $b's server did not start" >&2
    false
}

wait_nginx() { # BACKEND: until nginx listens on both ports of both addresses
    local b=$1 i
    for i in $(seq 50); do
        (($(nx "$b" ss -Hltn "( sport = :80 or sport = :$FULLNAT_BACKEND_PORT or sport = :$PROXY_NGINX_PORT or sport = :$PROXY_HAPROXY_PORT )" | wc -l) >= 8)) && return 0
        running "$(cat "$DIR/$b.nginx.pid")" || { cat "$DIR/$b.nginx.out" "$DIR/$b.nginx/error.log" >&2 2>/dev/null; false; }
        running "$(cat "$DIR/$b.haproxy.pid")" || { cat "$DIR/$b.haproxy.out" >&2 2>/dev/null; false; }
        sleep 0.1
    done
    echo "lab.sh: $b's nginx or HAProxy did not start" >&2
    cat "$DIR/$b.nginx.out" "$DIR/$b.nginx/error.log" "$DIR/$b.haproxy.out" >&2 2>/dev/null || true
    false
}

stop_server() { # BACKEND: as a crashed server: nothing listens on its ports any more
    local b=$1
    [[ -f $DIR/$b.server.pid ]] || die "no server pid for $b"
    stop_pid "$(cat "$DIR/$b.server.pid")"
    # nginx (a nat lab's): SIGTERM is its fast shutdown, the master ends its worker.
    if [[ -f $DIR/$b.nginx.pid ]]; then stop_pid "$(cat "$DIR/$b.nginx.pid")"; fi
    if [[ -f $DIR/$b.haproxy.pid ]]; then stop_pid "$(cat "$DIR/$b.haproxy.pid")"; fi
}

stop_pid() { # PID: SIGTERM, up to 5 s, then SIGKILL
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

running() { # PID: alive and not a zombie (a dead server whose new parent has not reaped it yet)
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

check_backend() { # BACKEND
    [[ " ${BACKENDS[*]} " == *" $1 "* ]] || die "unknown backend '$1' (${BACKENDS[*]})"
}

# Backend side of the tunnel: XDP strips IPIP/6in6/4in6 and GUE for the VIPs on lo.
attach_decap() { # BACKEND
    lbctl_in "$1" decap attach eth0 --gue-port $GUE_PORT --pin-path "$BPFFS/$1" >"$DIR/$1.decap.out"
}

cmd_decap() { # on|off
    local b
    [[ $SEGMENT != nat ]] || die "lab $NAME's backends have no decapsulator (LAB_SEGMENT=nat)"
    for b in "${BACKENDS[@]}"; do
        case $1 in
            on) attach_decap "$b" ;;
            off) lbctl_in "$b" decap detach eth0 --pin-path "$BPFFS/$b" >"$DIR/$b.decap.out" ;;
            *) die "decap: want on or off, got '$1'" ;;
        esac
    done
}

# tcpdump in NODE, exec'd (so a signal reaches it) with SIGTERM and SIGINT unblocked: a
# caller's blocked mask is inherited, and tcpdump would otherwise never end on SIGTERM.
# Immediate mode and -U: every frame is in FILE as soon as it is seen (buffered, the last
# second's frames were lost when SIGTERM came); an 8 MiB buffer rides out bursts on a busy machine.
cmd_capture() { # NODE IF FILE [TCPDUMP ARGS: -Q in, -c N, the filter...]
    local node=${1:?node} iface=${2:?interface} file=${3:?file}
    shift 3
    exec ip netns exec "$(ns "$node")" "$PYTHON" -c \
        'import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT}); os.execvp(sys.argv[1], sys.argv[1:])' \
        tcpdump -i "$iface" --immediate-mode -B 8192 -U -n -w "$file" "$@"
}

# --- up ---------------------------------------------------------------------------
cmd_up() {
    local node b i
    for node in "${NODES[@]}"; do
        [[ ! -e /run/netns/$(ns "$node") ]] || die "namespace $(ns "$node") exists: is lab $NAME up? (lab.sh down $NAME)"
    done
    [[ ! -e $DIR ]] || die "$DIR exists: is lab $NAME up? (lab.sh down $NAME)"
    [[ -x $LBCTL ]] || die "no lbctl at $LBCTL (swift build, or set LBCTL)"
    [[ -x $PYTHON ]] || die "no python3 (apt-get install python3)"
    [[ $SEGMENT != nat || -x $NGINX ]] || die "no nginx at $NGINX (apt-get install nginx, or set NGINX)"
    [[ $ROUTING != bgp || (-x $BIRD && -x $BIRDC) ]] || die "no BIRD at $BIRD / $BIRDC (apt-get install bird2, or set BIRD and BIRDC)"

    # From here on, a failure or an interrupt takes down whatever was built.
    trap 'rc=$?; trap - EXIT ERR INT TERM; echo "lab.sh: bring-up of $NAME failed (line $LINENO), cleaning up" >&2; cmd_down; exit $((rc ? rc : 1))' ERR INT TERM
    # (A failure inside a function, wait_server's, exits through set -e without the ERR
    # trap, which functions do not inherit: say it here too.)
    trap 'rc=$?; trap - EXIT ERR INT TERM; if ((rc)); then echo "lab.sh: bring-up of $NAME failed (exit $rc), cleaning up" >&2; cmd_down; fi' EXIT

    mkdir -p "$BPFFS"
    ((BALANCERS == 1)) || echo "$BALANCERS" >"$DIR/balancers"
    [[ $SEGMENT == own ]] || echo "$SEGMENT" >"$DIR/segment"
    [[ $ROUTING == static ]] || echo "$ROUTING" >"$DIR/routing"
    [[ $ROUTING == static ]] || echo "$BFD" >"$DIR/bfd"
    ((TUNNEL_MTU == 1600)) || echo "$TUNNEL_MTU" >"$DIR/tunnel_mtu"
    mount -t bpf bpf "$BPFFS" -o mode=0700

    for node in "${NODES[@]}"; do
        ip netns add "$(ns "$node")"
        nx "$node" ip link set lo up
        # No DAD: addresses are usable at once.
        sysctl_in "$node" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
            net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
    sysctl_in router net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

    if [[ $SEGMENT == nat ]]; then build_nat; else build_dsr; fi

    trap - EXIT ERR INT TERM
    echo "lab $NAME is up: $DIR"
}

# The default (and shared-segment, two- and three-balancer) lab: backends decapsulating, replies direct.
build_dsr() {
    local b i l
    # Links: every veth is created inside the router namespace with its peer created
    # directly in the other namespace; nothing touches the host's namespace.
    local R; R=$(ns router)
    ip -n "$R" link add r-client type veth peer name eth0 netns "$(ns client)"
    ip -n "$R" link add r-lb mtu $TUNNEL_MTU type veth peer name lb0 mtu $TUNNEL_MTU netns "$(ns lb)"
    for l in "${LBS[@]:1}"; do
        ip -n "$R" link add "r-$l" mtu $TUNNEL_MTU type veth peer name lb0 mtu $TUNNEL_MTU netns "$(ns "$l")"
    done
    ip -n "$R" link add br0 mtu $TUNNEL_MTU type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    for b in "${BACKENDS[@]}"; do
        ip -n "$R" link add "r-$b" mtu $TUNNEL_MTU type veth peer name eth0 mtu $TUNNEL_MTU netns "$(ns "$b")"
        ip -n "$R" link set "r-$b" master br0 up
    done
    [[ $SEGMENT == own ]] || ip -n "$R" link set r-lb master br0 up

    # Router.
    ip -n "$R" addr add $ROUTER_CLIENT_V4/24 dev r-client
    ip -n "$R" addr add $ROUTER_CLIENT_V6/64 dev r-client nodad
    if [[ $SEGMENT == own ]]; then
        ip -n "$R" addr add $ROUTER_LB_V4/24 dev r-lb
        ip -n "$R" addr add $ROUTER_LB_V6/64 dev r-lb nodad
    else
        # The balancer's tunnels come in on br0 and go back out of it to the backends:
        # no ICMP redirects telling the lb to skip us (its XDP sends to the gateway MAC).
        sysctl_in router net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.br0.send_redirects=0
    fi
    ip -n "$R" addr add $ROUTER_BE_V4/24 dev br0
    ip -n "$R" addr add $ROUTER_BE_V6/64 dev br0 nodad
    local router_ifs=(r-client r-lb br0)
    for l in "${LBS[@]:1}"; do
        ip -n "$R" addr add "$(router_lb_v4 "$l")/24" dev "r-$l"
        ip -n "$R" addr add "$(router_lb_v6 "$l")/64" dev "r-$l" nodad
        router_ifs+=("r-$l")
    done
    if ((BALANCERS > 1)); then
        # ECMP over the balancers hashes on addresses and ports (layer 4), so the
        # connections of one client spread over all of them.
        sysctl_in router net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
    fi
    for i in "${router_ifs[@]}"; do ip -n "$R" link set "$i" up; done
    # Replies come back from the backends with a VIP as source on br0, while the VIP routes
    # point at r-lb: strict reverse-path filtering would drop them.
    for i in "${router_ifs[@]}"; do sysctl_in router "net.ipv4.conf.$i.rp_filter=0"; done
    if [[ $ROUTING == bgp ]]; then
        : # No VIP routes here: BIRD installs what the balancers announce (start_bgp, below).
    elif ((BALANCERS > 1)); then
        set_routes both
    else
        ip -n "$R" route add $VIP4/32 via $LB_V4
        ip -n "$R" route add $VIP4IN6/32 via $LB_V4
        ip -n "$R" -6 route add $VIP6/128 via $LB_V6
    fi

    # Client.
    ip -n "$(ns client)" addr add $CLIENT_V4/24 dev eth0
    ip -n "$(ns client)" addr add $CLIENT_V6/64 dev eth0 nodad
    ip -n "$(ns client)" link set eth0 up
    # A veth hands its packets on with the TCP/UDP checksum still to be filled in
    # (checksum offload); an XDP program that tunnels such a frame sends it on unfilled,
    # and the backend drops it (TcpInCsumErrors). A real client's NIC puts finished
    # checksums on the wire: make the lab's client do the same.
    nx client ethtool -K eth0 tx off >/dev/null
    ip -n "$(ns client)" route add default via $ROUTER_CLIENT_V4
    ip -n "$(ns client)" -6 route add default via $ROUTER_CLIENT_V6

    # Balancer: node addresses on lb0 (the tunnels' outer source), default route via the
    # router, whose MAC `lbctl attach` resolves from the neighbour table by itself.
    ip -n "$(ns lb)" addr add $LB_V4/24 dev lb0
    ip -n "$(ns lb)" addr add $LB_V6/64 dev lb0 nodad
    ip -n "$(ns lb)" link set lb0 up
    ip -n "$(ns lb)" route add default via $ROUTER_LB_V4
    ip -n "$(ns lb)" -6 route add default via $ROUTER_LB_V6
    for l in "${LBS[@]:1}"; do
        ip -n "$(ns "$l")" addr add "$(lb_v4 "$l")/24" dev lb0
        ip -n "$(ns "$l")" addr add "$(lb_v6 "$l")/64" dev lb0 nodad
        ip -n "$(ns "$l")" link set lb0 up
        ip -n "$(ns "$l")" route add default via "$(router_lb_v4 "$l")"
        ip -n "$(ns "$l")" -6 route add default via "$(router_lb_v6 "$l")"
    done

    # Backends: every VIP on lo, no ARP/ND answers for them, default route via the router.
    for b in "${BACKENDS[@]}"; do
        local B; B=$(ns "$b")
        ip -n "$B" addr add "$(be_v4 "$b")/24" dev eth0
        ip -n "$B" addr add "$(be_v6 "$b")/64" dev eth0 nodad
        ip -n "$B" addr add $VIP4/32 dev lo
        ip -n "$B" addr add $VIP4IN6/32 dev lo
        ip -n "$B" addr add $VIP6/128 dev lo nodad
        ip -n "$B" link set eth0 up
        ip -n "$B" route add default via $ROUTER_BE_V4
        ip -n "$B" -6 route add default via $ROUTER_BE_V6
        sysctl_in "$b" net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
            net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2 \
            net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.lo.rp_filter=0
        start_server "$b"
        attach_decap "$b"
    done

    # XDP_TX on a veth only delivers when the peer veth runs an XDP program (docs/DEVELOPING.md):
    # the lb's tunnelled frames go out of lb0 into the router's r-lb. Give r-lb the decap
    # program with a VIP that never occurs, so it passes every packet to the router's
    # stack unchanged (the tunnelled packets are addressed to the backends, not to the
    # router); it is the one XDP object lbctl already ships.
    lbctl_in router decap attach r-lb --vip $NEVER_VIP --pin-path "$BPFFS/router" >"$DIR/router.decap.out"
    for l in "${LBS[@]:1}"; do
        lbctl_in router decap attach "r-$l" --vip $NEVER_VIP --pin-path "$BPFFS/router-$l" >"$DIR/router-$l.decap.out"
    done
    # What the router sends a balancer itself (BGP, pings) leaves with finished checksums
    # too, as `lbctl doctor lb0` wants of lb0's peer.
    for l in "${LBS[@]}"; do nx router ethtool -K "r-$l" tx off >/dev/null; done

    # The balancer, and its services.
    lbctl_in lb attach lb0 ${LAB_CT_SIZE:+--conntrack-size "$LAB_CT_SIZE"} --pin-path "$LB_PIN" >"$DIR/lb.attach.out"
    render_services "" $LB_V4 $LB_V6 >"$DIR/services.yaml"
    lbctl_in lb apply -f "$DIR/services.yaml" --pin-path "$LB_PIN" >"$DIR/lb.apply.out"
    for l in "${LBS[@]:1}"; do
        # The same services, with the balancer's own addresses as the tunnels' outer source.
        lbctl_in "$l" attach lb0 --pin-path "$(lb_pin "$l")" >"$DIR/$l.attach.out"
        render_services "" "$(lb_v4 "$l")" "$(lb_v6 "$l")" >"$DIR/services-$l.yaml"
        lbctl_in "$l" apply -f "$DIR/services-$l.yaml" --pin-path "$(lb_pin "$l")" >"$DIR/$l.apply.out"
    done

    for b in "${BACKENDS[@]}"; do wait_server "$b"; done

    # Warm up the neighbour tables along the way (router <-> backends, client, lb).
    nx router ping -c1 -W1 -q "$CLIENT_V4" >/dev/null 2>&1 || true
    for b in "${BACKENDS[@]}"; do
        nx router ping -c1 -W1 -q "$(be_v4 "$b")" >/dev/null 2>&1 || true
        nx router ping -6 -c1 -W1 -q "$(be_v6 "$b")" >/dev/null 2>&1 || true
    done
    nx router ping -6 -c1 -W1 -q "$LB_V6" >/dev/null 2>&1 || true
    for l in "${LBS[@]:1}"; do nx router ping -6 -c1 -W1 -q "$(lb_v6 "$l")" >/dev/null 2>&1 || true; done
    nx router ping -6 -c1 -W1 -q "$CLIENT_V6" >/dev/null 2>&1 || true
    # On the shared segment the balancer sends l2dsr frames to the backends' MACs itself.
    if [[ $SEGMENT == shared ]]; then
        for b in "${BACKENDS[@]}"; do
            nx lb ping -c1 -W1 -q "$(be_v4 "$b")" >/dev/null 2>&1 || true
            nx lb ping -6 -c1 -W1 -q "$(be_v6 "$b")" >/dev/null 2>&1 || true
        done
    fi

    if [[ $ROUTING == bgp ]]; then start_bgp; fi
}

# LAB_SEGMENT=nat: the balancer between the clients' side (lb0) and backends of its own
# (lb1), plus backends behind the router; plain servers, no VIPs, no decapsulators.
build_nat() {
    local b i B gw4 gw6 R; R=$(ns router)
    ip -n "$R" link add r-client type veth peer name eth0 netns "$(ns client)"
    ip -n "$R" link add r-lb mtu $TUNNEL_MTU type veth peer name lb0 mtu $TUNNEL_MTU netns "$(ns lb)"
    ip -n "$R" link add r-lb1 mtu $TUNNEL_MTU type veth peer name lb1 mtu $TUNNEL_MTU netns "$(ns lb)"
    # br0: fullnat's backends and the router's address on their subnet. br1: nat's
    # backends and the lb's lb1, a switch only (no address, no IPv6 of the router's on it).
    ip -n "$R" link add br0 mtu $TUNNEL_MTU type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$R" link add br1 mtu $TUNNEL_MTU type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    sysctl_in router net.ipv6.conf.br1.disable_ipv6=1 net.ipv6.conf.r-lb1.disable_ipv6=1
    for b in "${BACKENDS[@]}"; do
        ip -n "$R" link add "r-$b" mtu $TUNNEL_MTU type veth peer name eth0 mtu $TUNNEL_MTU netns "$(ns "$b")"
        if [[ $(be_net "$b") == 5 ]]; then
            sysctl_in router "net.ipv6.conf.r-$b.disable_ipv6=1"
            ip -n "$R" link set "r-$b" master br1 up
        else
            ip -n "$R" link set "r-$b" master br0 up
        fi
    done
    ip -n "$R" link set r-lb1 master br1 up

    # Router: the VIPs and the SNAT addresses go to the lb's client side.
    ip -n "$R" addr add $ROUTER_CLIENT_V4/24 dev r-client
    ip -n "$R" addr add $ROUTER_CLIENT_V6/64 dev r-client nodad
    ip -n "$R" addr add $ROUTER_LB_V4/24 dev r-lb
    ip -n "$R" addr add $ROUTER_LB_V6/64 dev r-lb nodad
    ip -n "$R" addr add $ROUTER_BE_V4/24 dev br0
    ip -n "$R" addr add $ROUTER_BE_V6/64 dev br0 nodad
    for i in r-client r-lb br0 br1; do
        ip -n "$R" link set "$i" up
        sysctl_in router "net.ipv4.conf.$i.rp_filter=0"
    done
    for i in $VIP4/32 $FULLNAT_VIP4/32 $SNAT_NET4; do ip -n "$R" route add "$i" via $LB_V4; done
    for i in $VIP6/128 $FULLNAT_VIP6/128 $SNAT_NET6; do ip -n "$R" -6 route add "$i" via $LB_V6; done

    # Client, as in every lab (finished checksums on the wire: see build_dsr).
    ip -n "$(ns client)" addr add $CLIENT_V4/24 dev eth0
    ip -n "$(ns client)" addr add $CLIENT_V6/64 dev eth0 nodad
    ip -n "$(ns client)" link set eth0 up
    nx client ethtool -K eth0 tx off >/dev/null
    ip -n "$(ns client)" route add default via $ROUTER_CLIENT_V4
    ip -n "$(ns client)" -6 route add default via $ROUTER_CLIENT_V6

    # Balancer: lb0 toward the router (its default route), lb1 on the nat backends' subnet,
    # whose gateway it is. Its kernel forwards nothing: only XDP carries packets between them.
    local L; L=$(ns lb)
    ip -n "$L" addr add $LB_V4/24 dev lb0
    ip -n "$L" addr add $LB_V6/64 dev lb0 nodad
    ip -n "$L" addr add $LB_BE_V4/24 dev lb1
    ip -n "$L" addr add $LB_BE_V6/64 dev lb1 nodad
    ip -n "$L" link set lb0 up
    ip -n "$L" link set lb1 up
    ip -n "$L" route add default via $ROUTER_LB_V4
    ip -n "$L" -6 route add default via $ROUTER_LB_V6
    sysctl_in lb net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0

    # Backends: an address, a default route (via the lb for nat's, via the router for
    # fullnat's), finished checksums (their replies are rewritten in XDP too), the servers.
    for b in "${BACKENDS[@]}"; do
        B=$(ns "$b")
        if [[ $(be_net "$b") == 5 ]]; then gw4=$LB_BE_V4 gw6=$LB_BE_V6; else gw4=$ROUTER_BE_V4 gw6=$ROUTER_BE_V6; fi
        ip -n "$B" addr add "$(be_v4 "$b")/24" dev eth0
        ip -n "$B" addr add "$(be_v6 "$b")/64" dev eth0 nodad
        ip -n "$B" link set eth0 up
        nx "$b" ethtool -K eth0 tx off >/dev/null
        ip -n "$B" route add default via "$gw4"
        ip -n "$B" -6 route add default via "$gw6"
        start_server "$b"
    done

    # XDP_TX and redirects into a veth deliver only when the peer runs an XDP program: the
    # router's r-lb (lb0's peer) and r-lb1 (lb1's) get the decapsulator with a VIP that
    # never occurs, which passes everything on (see build_dsr); r-lb1, a switch port with no
    # address, gets that address as its only tunnel endpoint too.
    lbctl_in router decap attach r-lb --vip $NEVER_VIP --pin-path "$BPFFS/router" >"$DIR/router.decap.out"
    lbctl_in router decap attach r-lb1 --vip $NEVER_VIP --local $NEVER_VIP --pin-path "$BPFFS/router-lb1" >"$DIR/router-lb1.decap.out"
    for i in r-lb r-lb1; do nx router ethtool -K "$i" tx off >/dev/null; done  # as in build_dsr

    for b in "${BACKENDS[@]}"; do wait_server "$b"; done

    # Neighbours first: apply takes the next hops' MACs from the lb's neighbour table
    # (nat's backends on lb1, the router on lb0 for fullnat's), and replies need the lb's.
    nx router ping -c1 -W1 -q "$CLIENT_V4" >/dev/null 2>&1 || true
    nx router ping -6 -c1 -W1 -q "$CLIENT_V6" >/dev/null 2>&1 || true
    nx lb ping -c1 -W1 -q $ROUTER_LB_V4 >/dev/null 2>&1 || true
    nx lb ping -6 -c1 -W1 -q $ROUTER_LB_V6 >/dev/null 2>&1 || true
    for b in "${BACKENDS[@]}"; do
        if [[ $(be_net "$b") == 5 ]]; then i=lb; else i=router; fi
        nx "$i" ping -c1 -W1 -q "$(be_v4 "$b")" >/dev/null 2>&1 || true
        nx "$i" ping -6 -c1 -W1 -q "$(be_v6 "$b")" >/dev/null 2>&1 || true
    done

    # The balancer on both interfaces, one pinned object: lb0 first (the gateway MAC from
    # its default route), then lb1 with the same gateway (lb1 has no default route, and
    # each attach sets the balancer's one gateway).
    lbctl_in lb attach lb0 --pin-path "$LB_PIN" >"$DIR/lb.attach.out"
    local gateway; gateway=$(ip -n "$R" -j link show dev r-lb | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[0]["address"])')
    lbctl_in lb attach lb1 --gateway-mac "$gateway" --pin-path "$LB_PIN" >>"$DIR/lb.attach.out"
    render_nat_services >"$DIR/services.yaml"
    lbctl_in lb apply -f "$DIR/services.yaml" --pin-path "$LB_PIN" >"$DIR/lb.apply.out"
}

# The BGP lab's BIRDs (LAB_ROUTING=bgp): configs, start/stop, bfd, cut.
source "$REPO/scripts/lab-bird.sh"

# --- the service file -------------------------------------------------------------
backend_lines() { # FAMILY(v4|v6) weights...
    local fam=$1; shift
    local i=0 b
    for b in "${BACKENDS[@]}"; do
        echo "      - { address: \"$(be_$fam "$b")\", weight: ${1:-1} }"
        shift || true
        i=$((i + 1))
    done
}

render_services() { # [ECHO spec: be1:1,be2:1] [NODE_V4 NODE_V6: the balancer's own addresses, lb's by default]
    local echo_spec=${1:-be1:1,be2:1} node_v4=${2:-$LB_V4} node_v6=${3:-$LB_V6} entry b w
    cat <<EOF
# Generated by scripts/lab.sh for lab $NAME.
node:
  source_v4: $node_v4
  source_v6: "$node_v6"
services:
  - name: web
    vip: $VIP4
    port: 80
    protocol: tcp
    backends:
$(backend_lines v4 "${WEB_WEIGHTS[@]}")
  - name: dns
    vip: $VIP4
    port: 53
    protocol: udp
    backends:
$(backend_lines v4)
  - name: web6
    vip: "$VIP6"
    port: 80
    protocol: tcp
    backends:
$(backend_lines v6)
  - name: web4in6
    vip: $VIP4IN6
    port: 80
    protocol: tcp
    backends:
$(backend_lines v6)
  - name: echo
    vip: $VIP4
    port: 7
    protocol: tcp
    backends:
EOF
    IFS=, read -ra entries <<<"$echo_spec"
    for entry in "${entries[@]}"; do
        b=${entry%%:*} w=${entry#*:}
        [[ $b =~ ^be[1-3]$ && $w =~ ^[0-9]+$ ]] || die "bad echo backend '$entry' (want be1:1,be2:0...)"
        echo "      - { address: \"$(be_v4 "$b")\", weight: $w }"
    done
}

# A nat lab's service file: nat to be1-be3 behind the lb, fullnat to be4-be6 behind the
# router (web-fullnat to nginx's 8080: a backend port that is not the service's), and
# fullnat to be1-be3 over both of the lb's interfaces (web-fullnat-lb1).
nat_backend_lines() { # FAMILY(v4|v6) PORT|- BACKEND:WEIGHT...
    local fam=$1 port=$2 entry b; shift 2
    for entry in "$@"; do
        b=${entry%%:*}
        if [[ $port == - ]]; then
            echo "      - { address: \"$(be_$fam "$b")\", weight: ${entry#*:} }"
        else
            echo "      - { address: \"$(be_$fam "$b")\", port: $port, weight: ${entry#*:} }"
        fi
    done
}

nat_service() { # NAME VIP PORT PROTOCOL FORWARDING FAMILY BACKEND_PORT|- BACKEND:WEIGHT... (CLIENT_ADDRESS=: its key)
    printf '  - name: %s\n    vip: "%s"\n    port: %s\n    protocol: %s\n    forwarding: %s\n' "$1" "$2" "$3" "$4" "$5"
    if [[ ${CLIENT_ADDRESS:-} ]]; then printf '    client_address: %s\n' "$CLIENT_ADDRESS"; fi
    printf '    backends:\n'
    shift 5
    nat_backend_lines "$@"
}

quoted_list() { # ITEMS...: ["a", "b"]
    local out="" item
    for item in "$@"; do out+="${out:+, }\"$item\""; done
    echo "[$out]"
}

render_nat_services() {
    local near=() far=() b i=0
    for b in "${NAT_BACKENDS[@]}"; do near+=("$b:${WEB_WEIGHTS[i++]}"); done
    i=0
    for b in "${FULLNAT_BACKENDS[@]}"; do far+=("$b:${WEB_WEIGHTS[i++]}"); done
    cat <<EOF
# Generated by scripts/lab.sh for lab $NAME (LAB_SEGMENT=nat).
node:
  source_v4: $LB_V4
  source_v6: "$LB_V6"
  snat_v4: $(quoted_list "${SNAT_V4[@]}")
  snat_v6: $(quoted_list "${SNAT_V6[@]}")
  snat_ports: $SNAT_PORTS
services:
EOF
    nat_service web-nat $VIP4 80 tcp nat v4 - "${near[@]}"
    nat_service dns-nat $VIP4 53 udp nat v4 - "${NAT_BACKENDS[@]/%/:1}"
    nat_service echo-nat $VIP4 7 tcp nat v4 - "${NAT_BACKENDS[@]/%/:1}"
    nat_service web6-nat $VIP6 80 tcp nat v6 - "${NAT_BACKENDS[@]/%/:1}"
    nat_service web-fullnat $FULLNAT_VIP4 80 tcp fullnat v4 $FULLNAT_BACKEND_PORT "${far[@]}"
    nat_service dns-fullnat $FULLNAT_VIP4 53 udp fullnat v4 - "${FULLNAT_BACKENDS[@]/%/:1}"
    nat_service echo-fullnat $FULLNAT_VIP4 7 tcp fullnat v4 - "${FULLNAT_BACKENDS[@]/%/:1}"
    nat_service web6-fullnat $FULLNAT_VIP6 80 tcp fullnat v6 $FULLNAT_BACKEND_PORT "${FULLNAT_BACKENDS[@]/%/:1}"
    nat_service web-fullnat-lb1 $FULLNAT_VIP4 $FULLNAT_BACKEND_PORT tcp fullnat v4 80 "${NAT_BACKENDS[@]/%/:1}"
    local fam vip suffix
    for fam in v4 v6; do
        if [[ $fam == v4 ]]; then vip=$FULLNAT_VIP4 suffix=""; else vip=$FULLNAT_VIP6 suffix=6; fi
        CLIENT_ADDRESS=proxy-v2 nat_service "nginx$suffix-proxy" "$vip" 81 tcp fullnat $fam $PROXY_NGINX_PORT "${FULLNAT_BACKENDS[@]/%/:1}"
        CLIENT_ADDRESS=proxy-v2 nat_service "haproxy$suffix-proxy" "$vip" 82 tcp fullnat $fam $PROXY_HAPROXY_PORT "${FULLNAT_BACKENDS[@]/%/:1}"
        CLIENT_ADDRESS=proxy-v2 nat_service "banner$suffix-proxy" "$vip" 25 tcp fullnat $fam $PROXY_BANNER_PORT "${FULLNAT_BACKENDS[@]/%/:1}"
        CLIENT_ADDRESS=proxy-v2 nat_service "echo$suffix-proxy" "$vip" 26 tcp fullnat $fam $PROXY_ECHO_PORT "${FULLNAT_BACKENDS[@]/%/:1}"
    done
}

cmd_info() {
    local b
    cat <<EOF
name=$NAME
dir=$DIR
bpffs=$BPFFS
pin_path=$LB_PIN
lbctl=$LBCTL
python=$PYTHON
namespaces=$(for n in "${NODES[@]}"; do printf '%s ' "$(ns "$n")"; done)
client_ns=$(ns client)
router_ns=$(ns router)
lb_ns=$(ns lb)
lb_if=lb0
router_lb_if=r-lb
router_client_if=r-client
client_v4=$CLIENT_V4
client_v6=$CLIENT_V6
lb_v4=$LB_V4
lb_v6=$LB_V6
segment=$SEGMENT
routing=$ROUTING
tunnel_mtu=$TUNNEL_MTU
gue_port=$GUE_PORT
vip4=$VIP4
vip6=$VIP6
vip4in6=$VIP4IN6
web_weights=$(IFS=,; echo "${WEB_WEIGHTS[*]}")
backends=$(IFS=,; echo "${BACKENDS[*]}")
EOF
    # Only a nat lab prints these.
    if [[ $SEGMENT == nat ]]; then
        cat <<EOF
lb_backend_if=lb1
router_lb_backend_if=r-lb1
lb_backend_v4=$LB_BE_V4
lb_backend_v6=$LB_BE_V6
nat_backends=$(IFS=,; echo "${NAT_BACKENDS[*]}")
fullnat_backends=$(IFS=,; echo "${FULLNAT_BACKENDS[*]}")
fullnat_vip4=$FULLNAT_VIP4
fullnat_vip6=$FULLNAT_VIP6
fullnat_backend_port=$FULLNAT_BACKEND_PORT
snat_v4=$(IFS=,; echo "${SNAT_V4[*]}")
snat_v6=$(IFS=,; echo "${SNAT_V6[*]}")
snat_ports=$SNAT_PORTS
EOF
    fi
    for b in "${BACKENDS[@]}"; do
        echo "${b}_v4=$(be_v4 "$b")"
        echo "${b}_v6=$(be_v6 "$b")"
        echo "${b}_log=$DIR/$b.log"
    done
    # Only a lab with more than one balancer prints these (a lab without them has one).
    ((BALANCERS == 1)) || echo "balancers=$BALANCERS"
    local l
    for l in "${LBS[@]:1}"; do
        cat <<EOF
${l}_ns=$(ns "$l")
${l}_pin_path=$(lb_pin "$l")
${l}_if=lb0
router_${l}_if=r-$l
${l}_v4=$(lb_v4 "$l")
${l}_v6=$(lb_v6 "$l")
EOF
    done
    # Only a LAB_ROUTING=bgp lab prints these.
    if [[ $ROUTING == bgp ]]; then
        echo "bfd=$BFD"
        for l in router "${LBS[@]}"; do
            echo "${l}_bird_socket=$(bird_file "$l" ctl)"
            echo "${l}_bird_conf=$(bird_file "$l" conf)"
            echo "${l}_bird_log=$(bird_file "$l" log)"
        done
        for l in "${LBS[@]}"; do echo "${l}_bird_include=$(bird_include "$l")"; done
    fi
}

cmd_apply() {
    local file
    file=$(mktemp "$DIR/services-XXXXXX.yaml")
    if [[ $SEGMENT == nat ]]; then
        render_nat_services >"$file"
        lbctl_in lb apply -f "$file" --pin-path "$LB_PIN"
        return
    fi
    render_services "${1:-}" $LB_V4 $LB_V6 >"$file"
    lbctl_in lb apply -f "$file" --pin-path "$LB_PIN"
    local l
    for l in "${LBS[@]:1}"; do
        file=$(mktemp "$DIR/services-$l-XXXXXX.yaml")
        render_services "${1:-}" "$(lb_v4 "$l")" "$(lb_v6 "$l")" >"$file"
        lbctl_in "$l" apply -f "$file" --pin-path "$(lb_pin "$l")" | sed "s/^/$l: /"
    done
}

# The router's VIP routes: over every balancer (ECMP multipath) or one of them, as the
# routing protocol would leave them when the others are withdrawn (or have failed).
set_routes() { # both|lb|lb2|lb3 (both: every balancer of the lab, two or three)
    local R v4=() v6=() route l
    R=$(ns router)
    case $1 in
        both) for l in "${LBS[@]}"; do v4+=(nexthop via "$(lb_v4 "$l")") v6+=(nexthop via "$(lb_v6 "$l")"); done ;;
        lb | lb2 | lb3) check_lb "$1"; v4=(via "$(lb_v4 "$1")") v6=(via "$(lb_v6 "$1")") ;;
        *) die "route: want both, lb, lb2 or lb3, got '$1'" ;;
    esac
    for route in $VIP4/32 $VIP4IN6/32; do ip -n "$R" route replace "$route" "${v4[@]}"; done
    ip -n "$R" -6 route replace $VIP6/128 "${v6[@]}"
}

need_two() { ((BALANCERS >= 2)) || die "lab $NAME has one balancer (bring it up with LAB_BALANCERS=2)"; }
need_bgp() { [[ $ROUTING == bgp ]] || die "lab $NAME routes statically (bring it up with LAB_ROUTING=bgp)"; }

main() {
    local cmd=${1:-}
    [[ $# -ge 2 ]] || die "usage: lab.sh up|down|info|services|apply|lbctl|lbctl2|lbctl3|route|bird|bird-stop|bird-start|bfd|cut|client|exec|server-stop|server-start|decap|capture NAME [ARGS...]"
    shift
    set_name "$1"; shift
    case $cmd in
        up) cmd_up ;;
        down) cmd_down ;;
        info) cmd_info ;;
        services) # [ECHO] [lb|lb2|lb3]: the file for that balancer (its own node addresses)
            if [[ $SEGMENT == nat ]]; then render_nat_services
            else
                case ${2:-lb} in lb | lb2 | lb3) ;; *) die "services: want lb, lb2 or lb3, got '$2'" ;; esac
                render_services "${1:-}" "$(lb_v4 "${2:-lb}")" "$(lb_v6 "${2:-lb}")"
            fi ;;
        apply) cmd_apply "${1:-}" ;;
        lbctl) lbctl_in lb "$@" --pin-path "$LB_PIN" ;;
        lbctl2) need_two; lbctl_in lb2 "$@" --pin-path "$LB2_PIN" ;;
        lbctl3) check_lb lb3; lbctl_in lb3 "$@" --pin-path "$LB3_PIN" ;;
        route)
            [[ $ROUTING != bgp ]] || die "lab $NAME routes the VIPs by BGP (LAB_ROUTING=bgp): the balancers announce them; no hand-written routes"
            need_two; set_routes "${1:?both, lb, lb2 or lb3}" ;;
        bird) need_bgp; check_bird_node "${1:?node}"; local node=$1; shift; "$BIRDC" -s "$(bird_file "$node" ctl)" "$@" ;;
        bird-stop) need_bgp; check_bird_node "${1:?node}"; stop_bird "$1" ;;
        bird-start) need_bgp; check_bird_node "${1:?node}"; start_bird "$1"; wait_bird_socket "$1" ;;
        bfd) need_bgp; cmd_bfd "${1:?on or off}" ;;
        cut) need_bgp; cmd_cut "${1:?balancer}" "${2:?on or off}" ;;
        # exec: a signal for the client (a long-lived session ends with SIGTERM) reaches it.
        client) exec ip netns exec "$(ns client)" "$PYTHON" "$REPO/scripts/lab-client.py" "$@" ;;
        exec) local node=${1:?node}; shift; nx "$node" "$@" ;;
        server-stop) check_backend "${1:?backend}"; stop_server "$1" ;;
        server-start) check_backend "${1:?backend}"; start_server "$1"; wait_server "$1" ;;
        decap) cmd_decap "${1:?on or off}" ;;
        capture) cmd_capture "$@" ;;
        *) die "unknown command '$cmd'" ;;
    esac
}

main "$@"
