#!/usr/bin/env bash
# The Sluice namespace lab: a client, a router, the balancer and three backends,
# each in its own network namespace, with real TCP and UDP servers behind the VIPs.
#
#   scripts/lab.sh up NAME            build the lab (cleans up after itself if that fails)
#   scripts/lab.sh down NAME          remove everything of lab NAME (idempotent)
#   scripts/lab.sh info NAME          key=value lines: addresses, interfaces, paths
#   scripts/lab.sh services NAME [ECHO] [lb|lb2]  print a service file (for that balancer); ECHO = the echo service's
#                                     backends as be1:1,be2:1 (the default)
#   scripts/lab.sh apply NAME [ECHO]  write that service file and `lbctl apply` it on the lb
#                                     (and on lb2, with lb2's node addresses, when the lab has it)
#   scripts/lab.sh lbctl NAME ARGS... run lbctl in the lb namespace with the lab's pin path
#   scripts/lab.sh lbctl2 NAME ARGS.. the same for the second balancer (LAB_BALANCERS=2)
#   scripts/lab.sh route NAME both|lb|lb2  route the VIPs over both balancers (ECMP) or
#                                     only one (the other withdrawn, as a failed node would be)
#   scripts/lab.sh client NAME ARGS.. run scripts/lab-client.py in the client namespace
#   scripts/lab.sh exec NAME NODE CMD...  run CMD in NAME-NODE (client router lb be1 be2 be3)
#   scripts/lab.sh server-stop NAME BE    stop backend BE's servers (as a crash would)
#   scripts/lab.sh server-start NAME BE   start them again and wait until they listen
#   scripts/lab.sh decap NAME on|off      attach (as `up` does) or detach every backend's decapsulator
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
# Environment: LBCTL (default .build/debug/lbctl of this repository), PYTHON (default
# Debian's /usr/bin/python3), LAB_ROOT (default /tmp: the lab dir is $LAB_ROOT/sluice-lab-NAME),
# LAB_BALANCERS (1 or 2, default 1), LAB_SEGMENT (own or shared, default own), LAB_TUNNEL_MTU
# (1280-9000, default 1600; these three are read by `up` only).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LBCTL=${LBCTL:-$REPO/.build/debug/lbctl}
[[ $LBCTL == /* ]] || LBCTL=$REPO/$LBCTL
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3); fi
fi
LAB_ROOT=${LAB_ROOT:-/tmp}

# --- the plan: addresses and names ------------------------------------------------
CLIENT_V4=10.10.1.2   CLIENT_V6=fd10:1::2
ROUTER_CLIENT_V4=10.10.1.1 ROUTER_CLIENT_V6=fd10:1::1
ROUTER_LB_V4=10.10.2.1 ROUTER_LB_V6=fd10:2::1
LB_V4=10.10.2.2       LB_V6=fd10:2::2
ROUTER_LB2_V4=10.10.4.1 ROUTER_LB2_V6=fd10:4::1   # LAB_BALANCERS=2 only
LB2_V4=10.10.4.2      LB2_V6=fd10:4::2
ROUTER_BE_V4=10.10.3.1 ROUTER_BE_V6=fd10:3::1
BACKENDS=(be1 be2 be3)
be_v4() { echo "10.10.3.1${1#be}"; }
be_v6() { echo "fd10:3::1${1#be}"; }
VIP4=198.51.100.10      # web (TCP 80, 4in4, weights 1:2:3), dns (UDP 53), echo (TCP 7)
VIP6=2001:db8:100::10   # web6 (TCP 80, 6in6)
VIP4IN6=198.51.100.20   # web4in6 (TCP 80, IPv4 VIP with IPv6 backends: 4in6)
WEB_WEIGHTS=(1 2 3)
NEVER_VIP=192.0.2.254   # for the router's decap program, which must never decapsulate
GUE_PORT=6080           # the backends' decapsulators strip GUE to this UDP port (node.gue_port)

die() { echo "lab.sh: $*" >&2; exit 2; }

# For a process `up` leaves running: close the descriptors a caller handed us (a test
# runner's pipes, or the socket through which Foundation's Process learns that its child
# has ended), so the servers never keep the caller waiting for an EOF.
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
    # The balancer count: what `up` recorded in the lab's directory, else (for `up`)
    # LAB_BALANCERS.
    if [[ -f $DIR/balancers ]]; then BALANCERS=$(cat "$DIR/balancers"); else BALANCERS=${LAB_BALANCERS:-1}; fi
    [[ $BALANCERS == 1 || $BALANCERS == 2 ]] || die "LAB_BALANCERS must be 1 or 2, got '$BALANCERS'"
    # The segment and the tunnel MTU, recorded by `up` the same way.
    if [[ -f $DIR/segment ]]; then SEGMENT=$(cat "$DIR/segment"); else SEGMENT=${LAB_SEGMENT:-own}; fi
    [[ $SEGMENT == own || $SEGMENT == shared ]] || die "LAB_SEGMENT must be own or shared, got '$SEGMENT'"
    [[ $SEGMENT == own || $BALANCERS == 1 ]] || die "LAB_SEGMENT=shared has one balancer (LAB_BALANCERS=1)"
    # lb and backend links: by default room for the 20/40(+8 GUE)-byte tunnel header.
    if [[ -f $DIR/tunnel_mtu ]]; then TUNNEL_MTU=$(cat "$DIR/tunnel_mtu"); else TUNNEL_MTU=${LAB_TUNNEL_MTU:-1600}; fi
    [[ $TUNNEL_MTU =~ ^[0-9]+$ ]] && ((TUNNEL_MTU >= 1280 && TUNNEL_MTU <= 9000)) ||
        die "LAB_TUNNEL_MTU must be 1280-9000, got '$TUNNEL_MTU'"
    if [[ $SEGMENT == shared ]]; then
        # The balancer sits on the backends' segment, the router's br0 its gateway.
        LB_V4=10.10.3.2 LB_V6=fd10:3::2 ROUTER_LB_V4=$ROUTER_BE_V4 ROUTER_LB_V6=$ROUTER_BE_V6
    fi
    if ((BALANCERS == 2)); then
        NODES=(client router lb lb2 "${BACKENDS[@]}")
    else
        NODES=(client router lb "${BACKENDS[@]}")
    fi
}
ns() { echo "$NAME-$1"; }
nx() { local node=$1; shift; ip netns exec "$(ns "$node")" "$@"; }
sysctl_in() { local node=$1; shift; for kv in "$@"; do nx "$node" sysctl -qw "$kv" >/dev/null; done; }
# lbctl needs the host's mounts (our bpffs), which `ip netns exec` hides: nsenter keeps them.
lbctl_in() { local node=$1; shift; nsenter --net="/run/netns/$(ns "$node")" "$LBCTL" "$@"; }

# --- down -------------------------------------------------------------------------
cmd_down() {
    local node n pid pids nodes=("${NODES[@]}")
    # lb2 too, whatever the recorded count: a bring-up that failed early leaves no count.
    [[ " ${nodes[*]} " == *" lb2 "* ]] || nodes+=(lb2)
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
    : >>"$DIR/$b.log"
    : >"$DIR/$b.server.out"
    (close_inherited_fds; exec ip netns exec "$(ns "$b")" "$PYTHON" -u "$REPO/scripts/lab-server.py" "$b" "$DIR/$b.log" \
        "tcp-http:$VIP4:80" "tcp-http:$VIP4IN6:80" "tcp-http:[$VIP6]:80" \
        "udp:$VIP4:53" "udp:$VIP4IN6:53" "tcp-echo:$VIP4:7" "tcp-count:$VIP4:9" "tcp-count:$VIP4IN6:9" \
        "tcp-http:$v4:8080" "udp:$v4:53") >"$DIR/$b.server.out" 2>&1 </dev/null &
    echo $! >"$DIR/$b.server.pid"
}

wait_server() { # BACKEND
    local b=$1 i
    for i in $(seq 50); do
        grep -q serving "$DIR/$b.server.out" 2>/dev/null && return 0
        kill -0 "$(cat "$DIR/$b.server.pid")" 2>/dev/null || { cat "$DIR/$b.server.out" >&2; false; }
        sleep 0.1
    done
    echo "lab.sh: $b's server did not start" >&2
    false
}

stop_server() { # BACKEND: as a crashed server: nothing listens on its ports any more
    local b=$1 pid
    [[ -f $DIR/$b.server.pid ]] || die "no server pid for $b"
    pid=$(cat "$DIR/$b.server.pid")
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

    # From here on, a failure or an interrupt takes down whatever was built.
    trap 'rc=$?; trap - EXIT ERR INT TERM; echo "lab.sh: bring-up of $NAME failed (line $LINENO), cleaning up" >&2; cmd_down; exit $((rc ? rc : 1))' ERR INT TERM
    # (A failure inside a function, wait_server's, exits through set -e without the ERR
    # trap, which functions do not inherit: say it here too.)
    trap 'rc=$?; trap - EXIT ERR INT TERM; if ((rc)); then echo "lab.sh: bring-up of $NAME failed (exit $rc), cleaning up" >&2; cmd_down; fi' EXIT

    mkdir -p "$BPFFS"
    ((BALANCERS == 1)) || echo "$BALANCERS" >"$DIR/balancers"
    [[ $SEGMENT == own ]] || echo "$SEGMENT" >"$DIR/segment"
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

    # Links: every veth is created inside the router namespace with its peer created
    # directly in the other namespace; nothing touches the host's namespace.
    local R; R=$(ns router)
    ip -n "$R" link add r-client type veth peer name eth0 netns "$(ns client)"
    ip -n "$R" link add r-lb mtu $TUNNEL_MTU type veth peer name lb0 mtu $TUNNEL_MTU netns "$(ns lb)"
    if ((BALANCERS == 2)); then
        ip -n "$R" link add r-lb2 mtu $TUNNEL_MTU type veth peer name lb0 mtu $TUNNEL_MTU netns "$(ns lb2)"
    fi
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
    if ((BALANCERS == 2)); then
        ip -n "$R" addr add $ROUTER_LB2_V4/24 dev r-lb2
        ip -n "$R" addr add $ROUTER_LB2_V6/64 dev r-lb2 nodad
        router_ifs+=(r-lb2)
        # ECMP over the balancers hashes on addresses and ports (layer 4), so the
        # connections of one client spread over both.
        sysctl_in router net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
    fi
    for i in "${router_ifs[@]}"; do ip -n "$R" link set "$i" up; done
    # Replies come back from the backends with a VIP as source on br0, while the VIP routes
    # point at r-lb: strict reverse-path filtering would drop them.
    for i in "${router_ifs[@]}"; do sysctl_in router "net.ipv4.conf.$i.rp_filter=0"; done
    if ((BALANCERS == 2)); then
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
    if ((BALANCERS == 2)); then
        ip -n "$(ns lb2)" addr add $LB2_V4/24 dev lb0
        ip -n "$(ns lb2)" addr add $LB2_V6/64 dev lb0 nodad
        ip -n "$(ns lb2)" link set lb0 up
        ip -n "$(ns lb2)" route add default via $ROUTER_LB2_V4
        ip -n "$(ns lb2)" -6 route add default via $ROUTER_LB2_V6
    fi

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
    if ((BALANCERS == 2)); then
        lbctl_in router decap attach r-lb2 --vip $NEVER_VIP --pin-path "$BPFFS/router-lb2" >"$DIR/router-lb2.decap.out"
    fi

    # The balancer, and its services.
    lbctl_in lb attach lb0 --pin-path "$LB_PIN" >"$DIR/lb.attach.out"
    render_services "" $LB_V4 $LB_V6 >"$DIR/services.yaml"
    lbctl_in lb apply -f "$DIR/services.yaml" --pin-path "$LB_PIN" >"$DIR/lb.apply.out"
    if ((BALANCERS == 2)); then
        # The same services, with lb2's own addresses as the tunnels' outer source.
        lbctl_in lb2 attach lb0 --pin-path "$LB2_PIN" >"$DIR/lb2.attach.out"
        render_services "" $LB2_V4 $LB2_V6 >"$DIR/services-lb2.yaml"
        lbctl_in lb2 apply -f "$DIR/services-lb2.yaml" --pin-path "$LB2_PIN" >"$DIR/lb2.apply.out"
    fi

    for b in "${BACKENDS[@]}"; do wait_server "$b"; done

    # Warm up the neighbour tables along the way (router <-> backends, client, lb).
    nx router ping -c1 -W1 -q "$CLIENT_V4" >/dev/null 2>&1 || true
    for b in "${BACKENDS[@]}"; do
        nx router ping -c1 -W1 -q "$(be_v4 "$b")" >/dev/null 2>&1 || true
        nx router ping -6 -c1 -W1 -q "$(be_v6 "$b")" >/dev/null 2>&1 || true
    done
    nx router ping -6 -c1 -W1 -q "$LB_V6" >/dev/null 2>&1 || true
    if ((BALANCERS == 2)); then nx router ping -6 -c1 -W1 -q "$LB2_V6" >/dev/null 2>&1 || true; fi
    nx router ping -6 -c1 -W1 -q "$CLIENT_V6" >/dev/null 2>&1 || true
    # On the shared segment the balancer sends l2dsr frames to the backends' MACs itself.
    if [[ $SEGMENT == shared ]]; then
        for b in "${BACKENDS[@]}"; do
            nx lb ping -c1 -W1 -q "$(be_v4 "$b")" >/dev/null 2>&1 || true
            nx lb ping -6 -c1 -W1 -q "$(be_v6 "$b")" >/dev/null 2>&1 || true
        done
    fi

    trap - EXIT ERR INT TERM
    echo "lab $NAME is up: $DIR"
}

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
tunnel_mtu=$TUNNEL_MTU
gue_port=$GUE_PORT
vip4=$VIP4
vip6=$VIP6
vip4in6=$VIP4IN6
web_weights=$(IFS=,; echo "${WEB_WEIGHTS[*]}")
backends=$(IFS=,; echo "${BACKENDS[*]}")
EOF
    for b in "${BACKENDS[@]}"; do
        echo "${b}_v4=$(be_v4 "$b")"
        echo "${b}_v6=$(be_v6 "$b")"
        echo "${b}_log=$DIR/$b.log"
    done
    # Only a two-balancer lab prints these (a lab without them has one balancer).
    if ((BALANCERS == 2)); then
        cat <<EOF
balancers=$BALANCERS
lb2_ns=$(ns lb2)
lb2_pin_path=$LB2_PIN
lb2_if=lb0
router_lb2_if=r-lb2
lb2_v4=$LB2_V4
lb2_v6=$LB2_V6
EOF
    fi
}

cmd_apply() {
    local file
    file=$(mktemp "$DIR/services-XXXXXX.yaml")
    render_services "${1:-}" $LB_V4 $LB_V6 >"$file"
    lbctl_in lb apply -f "$file" --pin-path "$LB_PIN"
    if ((BALANCERS == 2)); then
        file=$(mktemp "$DIR/services-lb2-XXXXXX.yaml")
        render_services "${1:-}" $LB2_V4 $LB2_V6 >"$file"
        lbctl_in lb2 apply -f "$file" --pin-path "$LB2_PIN" | sed 's/^/lb2: /'
    fi
}

# The router's VIP routes: over both balancers (ECMP multipath) or one of them, as the
# routing protocol would leave them when the other node is withdrawn (or has failed).
set_routes() { # both|lb|lb2
    local R v4 v6 route
    R=$(ns router)
    case $1 in
        both) v4=(nexthop via $LB_V4 nexthop via $LB2_V4) v6=(nexthop via $LB_V6 nexthop via $LB2_V6) ;;
        lb) v4=(via $LB_V4) v6=(via $LB_V6) ;;
        lb2) v4=(via $LB2_V4) v6=(via $LB2_V6) ;;
        *) die "route: want both, lb or lb2, got '$1'" ;;
    esac
    for route in $VIP4/32 $VIP4IN6/32; do ip -n "$R" route replace "$route" "${v4[@]}"; done
    ip -n "$R" -6 route replace $VIP6/128 "${v6[@]}"
}

need_two() { ((BALANCERS == 2)) || die "lab $NAME has one balancer (bring it up with LAB_BALANCERS=2)"; }

main() {
    local cmd=${1:-}
    [[ $# -ge 2 ]] || die "usage: lab.sh up|down|info|services|apply|lbctl|lbctl2|route|client|exec|server-stop|server-start|decap|capture NAME [ARGS...]"
    shift
    set_name "$1"; shift
    case $cmd in
        up) cmd_up ;;
        down) cmd_down ;;
        info) cmd_info ;;
        services) # [ECHO] [lb|lb2]: the file for that balancer (its own node addresses)
            if [[ ${2:-lb} == lb2 ]]; then render_services "${1:-}" $LB2_V4 $LB2_V6; else render_services "${1:-}" $LB_V4 $LB_V6; fi ;;
        apply) cmd_apply "${1:-}" ;;
        lbctl) lbctl_in lb "$@" --pin-path "$LB_PIN" ;;
        lbctl2) need_two; lbctl_in lb2 "$@" --pin-path "$LB2_PIN" ;;
        route) need_two; set_routes "${1:?both, lb or lb2}" ;;
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
