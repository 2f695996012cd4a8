/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains every struct, enum and constant that crosses the
 * kernel/user boundary: map keys and values, counters and limits. It is
 * included by the BPF programs in bpf/ and, through the CSluice module, by
 * the Swift control plane. Nothing here may be declared a second time.
 *
 * Addresses and ports are kept in network byte order, exactly as they sit in
 * the packet, so the data plane never converts them. An IPv4 address occupies
 * addr[0]; addr[1..3] are zero.
 */
#ifndef SLUICE_LB_SHARED_H
#define SLUICE_LB_SHARED_H

#include <linux/types.h>

/* Capacities. The data plane's arrays are sized by these at load time. */
#define SL_MAX_VIPS 4096
#define SL_MAX_BACKENDS 65536
#define SL_MAGLEV_DEFAULT_SIZE 65537
#define SL_CT_DEFAULT_SIZE 1048576
#define SL_CT_UNCONFIRMED_DEFAULT_SIZE 65536

/* How long (sl_clock seconds) a UDP flow seen once stays in sl_ct_unconfirmed
 * for its second packet to confirm it on the same backend. */
#define SL_CT_UNCONFIRMED_TTL 30

/* New NAT translations a CPU creates per second when node.nat_flow_budget is
 * not set (Katran's default limit of conntrack updates per CPU). */
#define SL_NAT_FLOW_BUDGET_DEFAULT 125000
#define SL_SERVICE_NAME_LEN 64

/* A Maglev slot that names no backend: every backend of the service is drained. */
#define SL_NO_BACKEND 0xffffffffu

/* Seed of the flow hash. The Swift model (SluiceCore.FlowHash) uses the same. */
#define SL_HASH_SEED 0x5111ce00u

/* The VIP prefilter (sl_vip_filter): a bitmap of 2^SL_VIP_FILTER_BITS bits in
 * 64-bit words. A VIP key's bit is the top SL_VIP_FILTER_BITS bits of
 * (addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ port ^ proto << 16) *
 * SL_VIP_FILTER_MULT, every field as it sits in struct sl_vip_key (network
 * order). The Swift model (SluiceCore.VIPFilter) computes the same bit. */
#define SL_VIP_FILTER_BITS 16
#define SL_VIP_FILTER_WORD_BITS 64
#define SL_VIP_FILTER_WORDS 1024 /* 2^SL_VIP_FILTER_BITS / SL_VIP_FILTER_WORD_BITS (a literal, so Swift imports it) */
#define SL_VIP_FILTER_MULT 0x9e3779b1u

/* Outer TTL / hop limit of tunnelled packets, and the TTL of the ICMP errors
 * the balancer sends. */
#define SL_OUTER_TTL 64

/* The UDP destination port of GUE tunnels when the service file names none
 * (node.gue_port), and of lbctl decap when --gue-port is not given. */
#define SL_GUE_DEFAULT_PORT 6080

/* How a service's packets reach its backends (service.forwarding). The
 * balancer reads it from the chosen backend's sl_backend.forwarding, so an
 * established flow follows its service's mode from its next packet on. */
enum sl_forwarding {
	SL_FWD_IPIP = 0,   /* IP-in-IP: 4in4, 6in6, 4in6 */
	SL_FWD_GUE = 1,    /* outer IP + UDP to gue_port, then the inner packet (GUE variant 1) */
	SL_FWD_L2DSR = 2,  /* only the Ethernet header changes: to the backend's MAC */
	SL_FWD_NAT = 3,    /* destination VIP:port -> backend:port; replies come back through us (nat.h) */
	SL_FWD_FULLNAT = 4, /* also source client -> a SNAT address:port of this node (nat.h) */
};

/* sl_vip.flags. */
enum sl_vip_flags {
	SL_VIP_F_PROXY_V2 = 1 << 0, /* fullnat TCP (client_address: proxy-v2): the first bytes the backend
	                             * gets on each new connection are a PROXY v2 header (proxy.h) */
};

/* Bytes of the PROXY protocol v2 header the data plane writes (HAProxy's
 * specification, section 2.2): 16 fixed, then both addresses and ports. A
 * flow's byte stream toward the backend is longer by this much, so its
 * sequence numbers are offset by it. */
#define SL_PROXY_V2_LEN_V4 28
#define SL_PROXY_V2_LEN_V6 52

/* sl_ct_entry.proxy and sl_nat_entry.proxy: the PROXY v2 header of a flow. */
enum sl_proxy_state {
	SL_PROXY_ON = 1 << 0,    /* the flow carries a header: its sequence numbers are offset */
	SL_PROXY_SENT = 1 << 1,  /* the header was written at least once */
	SL_PROXY_ACKED = 1 << 2, /* the backend acknowledged it: it is never written again */
};

/* Full NAT's source addresses (node.snat_v4, node.snat_v6): at most this many
 * per family. A new full-NAT flow tries at most SL_SNAT_TRIES (address, port)
 * candidates, each derived from the flow's hash and the try's number, and takes
 * the first that no other flow to the same backend port holds (an insert into
 * sl_nat that must not find the key: no lock, no loop over the range). */
#define SL_MAX_SNAT_ADDRS 16
#define SL_SNAT_TRIES 16
#define SL_SNAT_DEFAULT_PORT_MIN 1024
#define SL_SNAT_DEFAULT_PORT_MAX 65535

/* The prefilter bit of a NAT backend (its address, port and protocol, as the
 * source of its replies) is that of a VIP key with this bit set in proto. */
#define SL_VIP_FILTER_REPLY 0x80

/* The program names, as pinned under the pin path (bpffs). The maps are
 * pinned under their C names (maps.h, decap_maps.h). */
#define SL_PROG_BALANCER "sl_balancer"

/* The backend side (lbctl decap): its program and maps, pinned beside the
 * balancer's under the same pin path. */
#define SL_MAX_DECAP_ADDRS 1024
#define SL_PROG_DECAP "sl_decap"

enum sl_family {
	SL_FAMILY_V4 = 4,
	SL_FAMILY_V6 = 6,
};

/* Key of sl_vips: one service is one (address, port, protocol). */
struct sl_vip_key {
	__u32 addr[4];   /* network order; IPv4 in addr[0] */
	__u16 port;      /* network order */
	__u8 proto;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;     /* enum sl_family */
};

/* Value of a Maglev table (an inner map of sl_maglev): two slots per entry.
 * The kernel lays array values out every 8 bytes, so a __u32 value would take
 * 8 bytes a slot; a pair takes 4 (256 KiB per service at M = 65537, not 512).
 * Slot s is backend[s & 1] of entry s >> 1; a table of M slots has (M + 1) / 2
 * entries, and the unused half of the last one (M is odd) is SL_NO_BACKEND. */
struct sl_maglev_pair {
	__u32 backend[2];
};

/* Value of sl_vips: what the data plane needs to place a new flow. */
struct sl_vip {
	__u32 id;          /* service slot: index of sl_maglev, sl_vip_stats, sl_services */
	__u32 maglev_size; /* M of this service's table (prime) */
	__u8 forwarding;   /* enum sl_forwarding: a SYN of a NAT service asks conntrack first */
	__u8 flags;        /* enum sl_vip_flags */
	__u8 pad[2];       /* always zero */
};

/* Value of sl_backends, indexed by backend id. */
struct sl_backend {
	__u32 addr[4];     /* network order; IPv4 in addr[0] */
	__u8 family;       /* enum sl_family; 0 = slot never used */
	__u8 flags;        /* enum sl_backend_flags */
	__u16 weight;      /* configured weight (control plane bookkeeping) */
	__u32 service_id;  /* owning service slot */
	__u8 mac[6];       /* l2dsr: the backend's MAC on the attached interface; nat, fullnat: the
	                    * MAC of the next hop toward the backend; all zero = not resolved */
	__u8 forwarding;   /* enum sl_forwarding of the owning service */
	__u8 pad;          /* always zero */
	__be16 port;       /* nat, fullnat: the backend's port, network order (the service's port
	                    * when the file names none); 0 in the other modes */
	__u8 src_mac[6];   /* nat, fullnat: our MAC on the interface toward the backend */
	__u32 ifindex;     /* nat, fullnat: that interface; 0 = the one the packet came in on */
};

/* The data plane reads none of these: they record for every lbctl process
 * what the control plane decided, and why a backend is or is not in its
 * service's Maglev table. */
enum sl_backend_flags {
	SL_BACKEND_F_IN_USE = 1 << 0,   /* part of the applied configuration */
	SL_BACKEND_F_CHECKED = 1 << 1,  /* an agent health-checks it */
	SL_BACKEND_F_DOWN = 1 << 2,     /* its health check failed (`fall` times in a row) */
	SL_BACKEND_F_EXCLUDED = 1 << 3, /* left out of the Maglev table because it is down */
};

/* Key of sl_conntrack: the 5-tuple as seen on the wire. */
struct sl_flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;   /* network order */
	__u16 dport;   /* network order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];   /* always zero */
};

/* TCP flags a flow's packets carried, in one direction (sl_ct_entry.tcp_seen
 * for the client's, sl_nat_entry.tcp_seen for the backend's). The agent gives
 * a flow whose client never sent an ACK the short tcp_syn_timeout and one that
 * saw a FIN or RST in either direction tcp_closing_timeout. */
enum sl_tcp_seen {
	SL_TCP_SEEN_SYN = 1 << 0,
	SL_TCP_SEEN_ACK = 1 << 1,   /* an ACK without SYN: the handshake completed on this side */
	SL_TCP_SEEN_FIN = 1 << 2,
	SL_TCP_SEEN_RST = 1 << 3,
};

/* Value of sl_conntrack and sl_ct_unconfirmed. A hit is trusted only while sl_vip_epochs still
 * holds `epoch` (its low 16 bits) for `service_id`: the control plane bumps a
 * slot's epoch when it frees the slot or gives it another VIP key, which
 * retires every flow recorded for the old one at once. */
struct sl_ct_entry {
	__u32 backend_id;
	__u16 service_id;  /* service slot the flow was placed for (< SL_MAX_VIPS) */
	__u16 epoch;       /* low 16 bits of sl_vip_epochs[service_id] when recorded */
	__u32 last_seen;   /* sl_clock when last forwarded, recorded or refreshed by a peer */
	__u8 origin;       /* SL_ORIGIN_LOCAL, or the sl_peers index of the peer that sent it */
	__u8 tcp_seen;     /* enum sl_tcp_seen of the client's packets (0 for UDP) */
	__u8 nat;          /* SL_FWD_NAT or SL_FWD_FULLNAT once translated (its sl_nat entry
	                    * exists), else 0 */
	__u8 snat_index;   /* fullnat: the source address's index in its family's sl_snat_pools */
	__be16 snat_port;  /* fullnat: the source port allocated to the flow, network order */
	__u8 proxy;        /* enum sl_proxy_state; 0 = no PROXY v2 header */
	__u8 pad;          /* always zero */
	__u32 proxy_seq;   /* proxy: the client's first sequence number after its SYN (host order):
	                    * where the header goes, and past which its numbers are offset */
};

/* Value of sl_nat, the translations seen from the backend's side. Its key is
 * the backend's reply as it arrives (struct sl_flow_key: backend:port ->
 * client:port for nat, -> SNAT address:port for fullnat), so that the reply
 * finds its flow with one lookup, and an insert of a full-NAT candidate that
 * finds its key taken means the port is in use for that backend port. */
struct sl_nat_entry {
	struct sl_flow_key flow; /* the client's flow (client -> VIP): its sl_conntrack key */
	__u8 client_mac[6];      /* next hop toward the client: the source MAC of its packets */
	__u8 local_mac[6];       /* our MAC on that side: their destination MAC */
	__u32 ifindex;           /* the interface they came in on; 0 = not known (a synced
	                          * flow): replies go back out where they came in, to the gateway */
	__u32 backend_id;
	__u16 service_id;
	__u8 tcp_seen;           /* enum sl_tcp_seen of the backend's packets */
	__u8 mode;               /* SL_FWD_NAT or SL_FWD_FULLNAT */
	__u32 last_seen;         /* sl_clock when a reply was last translated, or when recorded */
	__u32 proxy_seq;         /* as sl_ct_entry.proxy_seq: the backend's acknowledgements past it
	                          * are offset by the header */
	__u8 proxy;              /* enum sl_proxy_state, as the backend's side has seen it */
	__u8 pad[3];             /* always zero */
};

/* Value of sl_snat_pools (an array of two: index 0 for IPv4 backends, 1 for
 * IPv6), written by apply from node.snat_v4, node.snat_v6, node.snat_ports. */
struct sl_snat_pool {
	__u32 addr[SL_MAX_SNAT_ADDRS][4]; /* network order; IPv4 in addr[i][0] */
	__u16 port_min;                   /* host order, inclusive */
	__u16 port_max;                   /* host order, inclusive */
	__u8 count;                       /* addresses in addr; 0 = full NAT unavailable */
	__u8 pad[3];                      /* always zero */
};

/* sl_clock (an array of one __u32): seconds of the agent's monotonic clock,
 * written by the agent every second (0 while no agent ever ran). Conntrack
 * entries remember it in last_seen, so the agent can age out idle flows
 * without the data plane reading a clock per packet. */

/* sl_ct_entry.origin of a flow this node placed itself. */
#define SL_ORIGIN_LOCAL 0

/* sl_peers: the agent's sync peers by index (1..SL_MAX_PEERS; 0 is local),
 * so that lbctl flows can name where a synced entry came from. Control-plane
 * metadata: the data plane never reads it. Value: struct sl_addr_key. */
#define SL_MAX_PEERS 255

/* sl_flow_events, a ring buffer of this many bytes, carries one struct
 * sl_flow_event per flow the data plane places while SL_CFG_SYNC is set: the
 * agent sends them to its peers. Established flows send nothing. 8 MiB hold
 * ~150,000 reports (56 bytes with the ring's header): ~170 ms of one core's
 * SYNs, so a 50 ms drain keeps up with a SYN flood of a few cores. */
#define SL_FLOW_EVENTS_SIZE (1 << 23)

struct sl_flow_event {
	struct sl_flow_key key;
	__u32 backend_id;
	__u16 service_id;
	__u16 epoch;
	__u8 nat;          /* as sl_ct_entry */
	__u8 snat_index;
	__be16 snat_port;
	__u8 proxy;        /* SL_PROXY_ON for a flow that carries a PROXY v2 header, else 0 */
	__u8 pad[3];
	__u32 proxy_seq;
};

/* Value of sl_config (an array of one). Written by lbctl attach and apply. */
struct sl_config {
	__u32 source_v4;     /* outer source of 4in4 tunnels, network order */
	__u32 source_v6[4];  /* outer source of 6in6 and 4in6 tunnels */
	__u8 gateway_mac[6]; /* next hop for every tunnelled frame */
	__u8 flags;          /* enum sl_config_flags */
	__u8 pad;
	__u32 maglev_size;   /* the node's M (control-plane bookkeeping; 0 = never applied) */
	__u16 tunnel_mtu;    /* largest packet the path to the backends carries, encapsulation
	                      * included (host order); 0 = no limit: no MSS clamp, no ICMP */
	__be16 gue_port;     /* UDP destination port of GUE tunnels, network order */
	__u32 nat_flow_budget; /* new nat/fullnat translations per second per CPU; 0 = no limit */
};

enum sl_config_flags {
	SL_CFG_HAS_SOURCE_V4 = 1 << 0,
	SL_CFG_HAS_SOURCE_V6 = 1 << 1,
	SL_CFG_HAS_GATEWAY = 1 << 2,
	SL_CFG_SYNC = 1 << 3,        /* report new flows in sl_flow_events (an agent syncs them) */
	SL_CFG_TUNNEL_MTU_SET = 1 << 4, /* tunnel_mtu came from the service file, not the interface */
	SL_CFG_NAT = 1 << 5,         /* a NAT backend may have flows: packets for no VIP are tested as
	                              * replies (else they pass without that test) */
};

/* Value of sl_vip_stats and sl_backend_stats (per CPU): the client's packets
 * forwarded, and the backend's replies translated back (nat, fullnat). */
struct sl_counter {
	__u64 packets;
	__u64 bytes;
	__u64 reply_packets;
	__u64 reply_bytes;
};

/* Why the data plane dropped a packet. Index of sl_stats.drops. */
enum sl_drop_reason {
	SL_DROP_MALFORMED = 0,  /* a header field is impossible (IHL < 5, bad version, lengths) */
	SL_DROP_TRUNCATED,      /* a header runs past the end of the frame */
	SL_DROP_NO_BACKEND,     /* the VIP has no table, or every backend is drained */
	SL_DROP_NO_SOURCE,      /* no node source address for the tunnel family */
	SL_DROP_NO_GATEWAY,     /* no next-hop MAC configured */
	SL_DROP_ENCAP,          /* the frame could not grow for the tunnel header */
	SL_DROP_TOO_BIG,        /* over tunnel_mtu once encapsulated, and IPv4 without DF: cannot fragment */
	SL_DROP_NO_NEIGHBOUR,   /* l2dsr, nat, fullnat: the next hop's MAC is not resolved */
	SL_DROP_NO_SNAT,        /* fullnat: the node has no SNAT address of the backend's family */
	SL_DROP_SNAT_EXHAUSTED, /* fullnat: every candidate (address, port) tried was in use */
	SL_DROP_PROXY,          /* proxy-v2: the frame could not grow (or shrink) for the header */
	SL_DROP_NAT_BUDGET,     /* nat, fullnat: this CPU created nat_flow_budget translations this second */
	SL_DROP__MAX,
};

/* Number of XDP verdicts counted: XDP_ABORTED .. XDP_REDIRECT. */
#define SL_VERDICTS 5

/* Value of sl_stats (a per-CPU array of one): the node-wide counters. */
struct sl_stats {
	__u64 verdicts[SL_VERDICTS]; /* indexed by XDP action */
	__u64 new_flows;             /* flows recorded in sl_conntrack: TCP by its first packet after the
	                              * SYN, UDP by its second, nat/fullnat by the first */
	__u64 ct_hits;               /* packets of a known flow */
	__u64 ct_misses;             /* non-SYN packets of a flow not in sl_conntrack (a TCP flow's first
	                              * ACK, a UDP flow's first two packets, a flow from elsewhere) */
	__u64 fragments;             /* IP fragments, passed to the kernel */
	__u64 ip_options;            /* IPv4 packets to a VIP that carry options */
	__u64 drops[SL_DROP__MAX];   /* indexed by enum sl_drop_reason */
	__u64 flow_events_lost;      /* new flows not reported: sl_flow_events was full */
	__u64 mss_clamped;           /* SYNs whose MSS option was lowered to fit tunnel_mtu */
	__u64 icmp_too_big;          /* ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to clients */
	__u64 icmp_steered;          /* inbound ICMP errors about a VIP's flow, forwarded to its backend */
	__u64 nat_created;           /* translations created (nat and fullnat flows opened) */
	__u64 nat_replies;           /* backends' packets translated back toward clients */
	__u64 nat_icmp;              /* ICMP errors about a translated flow, translated (either way) */
	__u64 snat_collisions;       /* full-NAT candidates found in use before one was free */
	__u64 proxy_headers;         /* PROXY v2 headers written (a connection's first) */
	__u64 proxy_resent;          /* ... written again: the stream's start sent again before the
	                              * backend acknowledged the header */
	__u64 proxy_tfo_trimmed;     /* SYNs of proxy-v2 services whose data was removed (TCP Fast
	                              * Open: the client sends it again after the handshake) */
	__u64 proxy_midstream;       /* flows of proxy-v2 services opened without their SYN: no
	                              * header can be written, they are translated as plain full NAT */
	__u64 ct_unconfirmed;        /* UDP flows' first packets, held in sl_ct_unconfirmed */
};

/* Value of sl_nat_budget (per CPU): the translations this CPU created in the
 * second that began at window_ns (bpf_ktime_get_coarse_ns). */
struct sl_nat_budget {
	__u64 window_ns;
	__u32 created;
	__u32 pad;
};

/* Value of sl_services, indexed by service slot. Control-plane metadata kept
 * in bpffs beside the data plane so any lbctl process can read the applied
 * state; the data plane never reads it. */
struct sl_service_info {
	char name[SL_SERVICE_NAME_LEN]; /* NUL-padded; empty = slot free */
	struct sl_vip_key vip;
	__u32 maglev_size;
	__u32 generation;   /* bumped on each table switch */
	__u8 forwarding;    /* enum sl_forwarding */
	__u8 vip_flags;     /* enum sl_vip_flags, as written into sl_vips (client_address) */
	__u8 pad[2];        /* always zero */
};

/* Key of sl_decap_locals (outer destinations that are this host) and of
 * sl_decap_vips (inner destinations that are VIPs served here). */
struct sl_addr_key {
	__u32 addr[4];   /* network order; IPv4 in addr[0] */
	__u8 family;     /* enum sl_family */
	__u8 pad[3];     /* always zero */
};

/* Value of sl_decap_config (an array of one), written by lbctl decap attach. */
struct sl_decap_config {
	__be16 gue_port;      /* UDP destination port of GUE tunnels to strip, network order; 0 = none */
	__u8 pad[2];          /* always zero */
};

/* Value of sl_decap_stats (a per-CPU array of one). */
struct sl_decap_stats {
	__u64 decapsulated;   /* tunnel packets stripped and passed to the stack */
	__u64 not_local;      /* tunnel packets for another host: left alone */
	__u64 not_vip;        /* tunnel packets whose inner destination is no local VIP: left alone */
	__u64 malformed;      /* tunnel packets with a bad or truncated inner header: dropped */
	__u64 passed;         /* everything else (not a tunnel): passed untouched */
};

#endif /* SLUICE_LB_SHARED_H */
