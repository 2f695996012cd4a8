# The BIRDs of scripts/lab.sh's BGP lab (LAB_ROUTING=bgp): their configurations, starting
# and stopping them, BFD on or off, and a silent cut of a balancer's link. Sourced by
# lab.sh, whose plan (addresses, names, DIR) and helpers (nx, ns, die, check_lb) it uses.
# --- BGP (LAB_ROUTING=bgp) ---------------------------------------------------------
# Every node runs BIRD 2 in its namespace. The router (AS 65000) learns the VIPs from eBGP
# sessions, one per balancer and family, and installs them (merged into ECMP multipath
# routes) in its kernel; each balancer (AS 65100) announces what its include file holds,
# which the Sluice agent owns, and installs nothing.
ROUTER_AS=65000 LB_AS=65100
ROUTER_ID=$ROUTER_CLIENT_V4
declare -A BIRD_JOBS   # NODE -> the pid of the job start_bird left running (BIRD itself: exec all the way)
bird_file() { echo "$DIR/$1.bird.$2"; }   # NODE conf|ctl|pid|log|out
bird_include() { echo "$DIR/$1.bird-vips.conf"; }
check_bird_node() { [[ $1 == router ]] || check_lb "$1"; }

# Lab timings for every session: a silent peer is noticed within 3 s (hold time) and a
# session comes back about a second after its peer does (connect retry; a first connect
# 1 s after a (re)start instead of 5; an error wait of 1-5 s instead of 60-300: a
# hold-timer expiry or a BFD failure is an error). Production defaults are a hold time of
# 240 s and a keepalive of 80 s.
bird_timers() {
    echo "  hold time 3; keepalive time 1; connect retry time 1;"
    echo "  connect delay time 1; error wait time 1, 5;"
    [[ $BFD == off ]] || echo "  bfd on;"
}

# With BFD on, every session has a BFD session beside it: 100 ms, 3 missed, so a silent
# link is noticed in about 0.3 s instead of the hold time.
# (Printed with a blank line before it, into the line that precedes it: nothing when off.)
bird_bfd() {
    [[ $BFD == on ]] || return 0
    printf '\n\n'
    cat <<'EOF'
protocol bfd {
  interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
EOF
}

render_bird_router() {
    local l
    cat <<EOF
# BIRD of lab $NAME's router (scripts/lab.sh): eBGP with every balancer, ECMP into the kernel.
log "$(bird_file router log)" all;
router id $ROUTER_ID;

protocol device {}

# What the balancers announce goes into the kernel; several balancers announcing one VIP
# make one multipath route (merge paths), hashed on layer 4 (fib_multipath_hash_policy=1).
protocol kernel kernel4 {
  ipv4 { export all; import none; };
  merge paths on;
}
protocol kernel kernel6 {
  ipv6 { export all; import none; };
  merge paths on;
}$(bird_bfd)

template bgp balancer {
$(bird_timers)
}
EOF
    for l in "${LBS[@]}"; do
        cat <<EOF

protocol bgp ${l}_v4 from balancer {
  local $(router_lb_v4 "$l") as $ROUTER_AS;
  neighbor $(lb_v4 "$l") as $LB_AS;
  ipv4 { import all; export none; };
}
protocol bgp ${l}_v6 from balancer {
  local $(router_lb_v6 "$l") as $ROUTER_AS;
  neighbor $(lb_v6 "$l") as $LB_AS;
  ipv6 { import all; export none; };
}
EOF
    done
}

render_bird_lb() { # LB
    local l=$1
    cat <<EOF
# BIRD of lab $NAME's balancer $l (scripts/lab.sh): announces the VIPs of its include file
# (the Sluice agent's) to the router; no kernel protocol: it installs nothing.
log "$(bird_file "$l" log)" all;
router id $(lb_v4 "$l");

protocol device {}

include "$(bird_include "$l")";$(bird_bfd)

template bgp uplink {
$(bird_timers)
}

protocol bgp router_v4 from uplink {
  local $(lb_v4 "$l") as $LB_AS;
  neighbor $(router_lb_v4 "$l") as $ROUTER_AS;
  ipv4 { import none; export filter sluice_export; };
}
protocol bgp router_v6 from uplink {
  local $(lb_v6 "$l") as $LB_AS;
  neighbor $(router_lb_v6 "$l") as $ROUTER_AS;
  ipv6 { import none; export filter sluice_export; };
}
EOF
}

# The include file as the agent writes it, with no routes: the balancer announces nothing
# until the agent (or a test, by hand) puts its VIPs in and sends `configure`.
write_bird_include() { # LB
    cat >"$(bird_include "$1")" <<'EOF'
# Written by the Sluice agent: the VIP routes this node announces. Do not edit; the agent rewrites it.
protocol static sluice_vips4 {
  ipv4;
}
protocol static sluice_vips6 {
  ipv6;
}
filter sluice_export {
  if proto != "sluice_vips4" && proto != "sluice_vips6" then reject;
  accept;
}
EOF
}

write_bird_confs() { # (the include files are the agent's: not rewritten here)
    local l
    render_bird_router >"$(bird_file router conf)"
    for l in "${LBS[@]}"; do render_bird_lb "$l" >"$(bird_file "$l" conf)"; done
}

bird_running() { # NODE
    local pidfile; pidfile=$(bird_file "$1" pid)
    [[ -s $pidfile ]] && running "$(cat "$pidfile")"
}

start_bird() { # NODE: in the foreground of its own background job, descriptors closed
    local node=$1
    ! bird_running "$node" || die "$node's BIRD is running (pid $(cat "$(bird_file "$node" pid)"))"
    : >>"$(bird_file "$node" log)"
    rm -f "$(bird_file "$node" pid)"
    (close_inherited_fds; exec ip netns exec "$(ns "$node")" "$BIRD" -f -c "$(bird_file "$node" conf)" \
        -s "$(bird_file "$node" ctl)" -P "$(bird_file "$node" pid)") >"$(bird_file "$node" out)" 2>&1 </dev/null &
    BIRD_JOBS[$node]=$!
}

stop_bird() { # NODE: SIGKILL, as a crash: no session is closed politely, peers see silence
    local node=$1 pid
    bird_running "$node" || die "$node's BIRD is not running"
    pid=$(cat "$(bird_file "$node" pid)")
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
    die "$node's BIRD (pid $pid) did not go away"
}

wait_bird_socket() { # NODE: until its control socket answers (up to 10 s)
    local node=$1
    for _ in $(seq 100); do
        "$BIRDC" -s "$(bird_file "$node" ctl)" show status >/dev/null 2>&1 && return 0
        # -f: BIRD stays in the foreground, so a config error ends the job at once.
        running "${BIRD_JOBS[$node]}" || break
        sleep 0.1
    done
    echo "lab.sh: $node's BIRD does not answer on $(bird_file "$node" ctl)" >&2
    cat "$(bird_file "$node" out)" >&2 2>/dev/null || true
    false
}

router_bgp_established() { # every session of the router (two per balancer) Established
    "$BIRDC" -s "$(bird_file router ctl)" show protocols 2>/dev/null |
        awk -v want=$((2 * BALANCERS)) '$2 == "BGP" { n++; if ($6 == "Established") e++ } END { exit !(n == want && e == n) }'
}

router_bfd_up() { # every BFD session of the router (one per BGP session) Up
    "$BIRDC" -s "$(bird_file router ctl)" show bfd sessions 2>/dev/null |
        awk -v want=$((2 * BALANCERS)) '$3 == "Up" { n++ } END { exit !(n == want) }'
}

wait_router_bgp() { # SECONDS: poll until every router session is Established (and BFD Up, with BFD)
    local deadline=$((SECONDS + $1))
    while ((SECONDS < deadline)); do
        if router_bgp_established && { [[ $BFD == off ]] || router_bfd_up; }; then return 0; fi
        sleep 0.1
    done
    local with=""; [[ $BFD == off ]] || with=" (with their BFD sessions Up)"
    echo "lab.sh: the router's BGP sessions are not all Established$with after $1 s:" >&2
    "$BIRDC" -s "$(bird_file router ctl)" show protocols >&2 || true
    [[ $BFD == off ]] || "$BIRDC" -s "$(bird_file router ctl)" show bfd sessions >&2 || true
    false
}

start_bgp() {
    local node
    write_bird_confs
    for node in "${LBS[@]}"; do write_bird_include "$node"; done
    for node in router "${LBS[@]}"; do start_bird "$node"; done
    for node in router "${LBS[@]}"; do wait_bird_socket "$node"; done
    wait_router_bgp 20
}

cmd_bfd() { # on|off
    local node out
    case $1 in on | off) ;; *) die "bfd: want on or off, got '$1'" ;; esac
    BFD=$1
    echo "$BFD" >"$DIR/bfd"
    write_bird_confs
    for node in router "${LBS[@]}"; do
        out=$("$BIRDC" -s "$(bird_file "$node" ctl)" configure) || die "bfd: $node: $out"
        # birdc exits 0 on a config error too: its answer says.
        [[ $out == *Reconfigur* ]] || die "bfd: $node: $out"
    done
    wait_router_bgp 20
}

# A silent failure of the router's link to LB: nftables in the router drops whatever is
# received on, sent out of or forwarded through r-LB, while both ends keep their carrier,
# so only BGP's hold timer (or BFD) notices. The ingress hook is there for what arrives
# before routing: the balancer's XDP_TX frames reach the router's stack as received
# packets of r-LB (the decap program there passes them), and ARP, which inet's input
# never sees.
cmd_cut() { # LB on|off
    local l=$1 table
    check_lb "$l"
    table=sluice_cut_$l
    nx router nft delete table inet "$table" 2>/dev/null || true
    case $2 in
        on)
            nx router nft -f - <<EOF
table inet $table {
  chain ingress { type filter hook ingress device "r-$l" priority -500; policy accept; counter drop; }
  chain input { type filter hook input priority -300; policy accept; iifname "r-$l" counter drop; }
  chain forward { type filter hook forward priority -300; policy accept; iifname "r-$l" counter drop; oifname "r-$l" counter drop; }
  chain output { type filter hook output priority -300; policy accept; oifname "r-$l" counter drop; }
}
EOF
            ;;
        off) ;;
        *) die "cut: want on or off, got '$2'" ;;
    esac
}
