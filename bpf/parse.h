/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the packet parsers of the balancer: Ethernet with at most
 * one VLAN tag (802.1Q, or 802.1ad as a single outer tag), IPv4 with any header
 * length, IPv6 without extension headers, and the ports of TCP and UDP. A
 * cursor walks the frame and every header is bounds-checked before it is
 * read. The parsers fill a struct sl_packet and return a verdict.h code:
 * malformed and truncated headers are drops, traffic the balancer does not
 * handle (not IP, fragments, other protocols) is XDP_PASS. ICMP and ICMPv6
 * stop after the IP header (pkt->ip_proto says so): icmp_error.h decides
 * whether they are errors about a VIP's flow. It also builds the VIP and flow
 * keys from a parsed TCP or UDP packet.
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"

#define SL_IPV4_VERSION 4
#define SL_IPV6_VERSION 6
#define SL_IHL_UNIT 4                 /* iphdr.ihl and tcphdr.doff count 32-bit words */
#define SL_IPV4_MIN_IHL (sizeof(struct iphdr) / SL_IHL_UNIT)
#define SL_TCP_MIN_DOFF (sizeof(struct tcphdr) / SL_IHL_UNIT)
#define SL_IP_DF 0x4000               /* iphdr.frag_off, host order: don't fragment */
#define SL_IP_MF 0x2000               /* iphdr.frag_off, host order: more fragments */
#define SL_IP_OFFSET 0x1fff           /* iphdr.frag_off, host order: fragment offset */
#define SL_IPV6_TCLASS_HI_SHIFT 4     /* traffic class = priority:4 . flow_lbl[0] >> 4 */

/* The Ethernet header. Linux's struct ethhdr is packed, which makes clang's BPF
 * backend split every access to it into single bytes; this one is not. */
struct sl_eth {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 proto;
};
_Static_assert(sizeof(struct sl_eth) == ETH_HLEN, "struct sl_eth is an Ethernet header");

/* An 802.1Q/802.1ad tag (the kernel's struct vlan_hdr is not in the UAPI). */
struct sl_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* The first four bytes of TCP and UDP alike. */
struct sl_ports {
	__be16 source;
	__be16 dest;
};

/* The start of every ICMP and ICMPv6 message (linux/icmp.h pulls in libc). */
struct sl_icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 rest;  /* unused, or the MTU: 16 bits for ICMP (low half), 32 for ICMPv6 */
};

#define SL_ICMP_DEST_UNREACH 3
#define SL_ICMP_FRAG_NEEDED 4     /* code of SL_ICMP_DEST_UNREACH */
#define SL_ICMP_TIME_EXCEEDED 11
#define SL_ICMPV6_DEST_UNREACH 1
#define SL_ICMPV6_PKT_TOOBIG 2
#define SL_ICMPV6_TIME_EXCEED 3

/* Where the parser is in the frame. */
struct sl_cursor {
	void *pos;
	void *end;
};

/* What the parsers learned. The pointers are valid only until the head moves
 * (bpf_xdp_adjust_head); everything encapsulation needs later is a scalar. */
struct sl_packet {
	struct sl_eth *eth;
	struct sl_vlan_hdr *vlan;  /* NULL when the frame has no tag */
	void *l3;                  /* struct iphdr or struct ipv6hdr */
	void *l4;                  /* what follows the IP header: TCP, UDP, ICMP or ICMPv6 */
	__u32 frame_len;           /* data_end - data on entry */
	__u32 ip_len;              /* the IP packet's own length: tot_len or 40 + payload_len */
	__be16 sport;              /* of the flow, network order */
	__be16 dport;
	__u8 family;               /* enum sl_family */
	__u8 proto;                /* of the flow: IPPROTO_TCP or IPPROTO_UDP */
	__u8 ip_proto;             /* what the IP header carries: proto, or ICMP / ICMPv6 */
	__u8 l3_len;               /* bytes of the IP header, options included */
	__u8 tos;                  /* IPv4 TOS or IPv6 traffic class */
	__u8 ip_options;           /* IPv4 header longer than 20 bytes */
	__u8 df;                   /* IPv4 with DF set, or IPv6: must not be fragmented */
	__u8 tcp_syn;              /* TCP SYN without ACK: a connection opens */
	__u8 tcp_seen;             /* enum sl_tcp_seen of this packet's flags (0 for UDP) */
};

#define SL_TCP_FLAG_FIN 0x01       /* the 14th byte of the TCP header */
#define SL_TCP_FLAG_SYN 0x02
#define SL_TCP_FLAG_RST 0x04
#define SL_TCP_FLAG_ACK 0x10
#define SL_TCP_FLAGS_OFFSET 13

/* The TCP flags as enum sl_tcp_seen: a SYN (with or without ACK), else an ACK;
 * and FIN, RST. */
static __always_inline __u8 sl_tcp_seen_of(__u8 flags)
{
	__u8 seen = flags & SL_TCP_FLAG_SYN ? SL_TCP_SEEN_SYN :
		    flags & SL_TCP_FLAG_ACK ? SL_TCP_SEEN_ACK : 0;

	if (flags & SL_TCP_FLAG_FIN)
		seen |= SL_TCP_SEEN_FIN;
	if (flags & SL_TCP_FLAG_RST)
		seen |= SL_TCP_SEEN_RST;
	return seen;
}

/* Ethernet and at most one VLAN tag. Sets *eth_proto to the L3 ethertype. */
static __always_inline int sl_parse_l2(struct sl_cursor *c, struct sl_packet *pkt,
				       __be16 *eth_proto)
{
	struct sl_eth *eth = c->pos;
	struct sl_vlan_hdr *vlan;
	__be16 proto;

	if ((void *)(eth + 1) > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	pkt->eth = eth;
	pkt->vlan = NULL;
	c->pos = eth + 1;
	proto = eth->proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		vlan = c->pos;
		if ((void *)(vlan + 1) > c->end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		pkt->vlan = vlan;
		c->pos = vlan + 1;
		proto = vlan->encap_proto;
	}
	*eth_proto = proto;
	return SL_CONTINUE;
}

static __always_inline int sl_parse_ipv4(struct sl_cursor *c, struct sl_packet *pkt,
					 struct sl_stats *st)
{
	struct iphdr *iph = c->pos;
	__u32 hdr_len, tot_len;

	/* Version and IHL share the first byte: judge them before the length. */
	if (c->pos + sizeof(__u8) > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (iph->version != SL_IPV4_VERSION || iph->ihl < SL_IPV4_MIN_IHL)
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if ((void *)(iph + 1) > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	hdr_len = iph->ihl * SL_IHL_UNIT;
	if (c->pos + hdr_len > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < hdr_len)
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if (c->pos + tot_len > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (iph->frag_off & bpf_htons(SL_IP_MF | SL_IP_OFFSET)) {
		st->fragments++;
		return XDP_PASS;
	}
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP &&
	    iph->protocol != IPPROTO_ICMP)
		return XDP_PASS;

	pkt->l3 = iph;
	pkt->family = SL_FAMILY_V4;
	pkt->proto = iph->protocol;
	pkt->ip_proto = iph->protocol;
	pkt->l3_len = hdr_len;
	pkt->tos = iph->tos;
	pkt->ip_len = tot_len;
	pkt->ip_options = hdr_len > sizeof(*iph);
	pkt->df = !!(iph->frag_off & bpf_htons(SL_IP_DF));
	c->pos += hdr_len;
	return SL_CONTINUE;
}

static __always_inline int sl_parse_ipv6(struct sl_cursor *c, struct sl_packet *pkt,
					 struct sl_stats *st)
{
	struct ipv6hdr *ip6h = c->pos;
	__u32 ip_len;

	/* The version sits in the first byte: judge it before the length. */
	if (c->pos + sizeof(__u8) > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (ip6h->version != SL_IPV6_VERSION)
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if ((void *)(ip6h + 1) > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	ip_len = sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len);
	if (c->pos + ip_len > c->end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (ip6h->nexthdr == IPPROTO_FRAGMENT) {
		st->fragments++;
		return XDP_PASS;
	}
	if (ip6h->nexthdr != IPPROTO_TCP && ip6h->nexthdr != IPPROTO_UDP &&
	    ip6h->nexthdr != IPPROTO_ICMPV6)
		return XDP_PASS;

	pkt->l3 = ip6h;
	pkt->family = SL_FAMILY_V6;
	pkt->proto = ip6h->nexthdr;
	pkt->ip_proto = ip6h->nexthdr;
	pkt->l3_len = sizeof(*ip6h);
	pkt->df = 1;
	pkt->tos = ip6h->priority << SL_IPV6_TCLASS_HI_SHIFT |
		   ip6h->flow_lbl[0] >> SL_IPV6_TCLASS_HI_SHIFT;
	pkt->ip_len = ip_len;
	pkt->ip_options = 0;
	c->pos = ip6h + 1;
	return SL_CONTINUE;
}

/* TCP or UDP (pkt->proto says which): the ports, and whether a TCP
 * connection opens. The header must lie inside the frame and inside the IP
 * packet's own length: bytes past that length (Ethernet padding, anything)
 * are no header, and a packet too short for its own is malformed. */
static __always_inline int sl_parse_l4(struct sl_cursor *c, struct sl_packet *pkt)
{
	struct sl_ports *ports = c->pos;
	__u32 room = pkt->ip_len - pkt->l3_len; /* >= 0: the IP parsers check it */

	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c->pos;

		if ((void *)(tcp + 1) > c->end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		if (tcp->doff < SL_TCP_MIN_DOFF || room < sizeof(*tcp))
			return SL_RC_DROP(SL_DROP_MALFORMED);
		pkt->tcp_syn = tcp->syn && !tcp->ack;
		pkt->tcp_seen = sl_tcp_seen_of(((__u8 *)tcp)[SL_TCP_FLAGS_OFFSET]);
	} else {
		struct udphdr *udp = c->pos;

		if ((void *)(udp + 1) > c->end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		if (room < sizeof(*udp))
			return SL_RC_DROP(SL_DROP_MALFORMED);
		pkt->tcp_syn = 0;
		pkt->tcp_seen = 0;
	}
	pkt->sport = ports->source;
	pkt->dport = ports->dest;
	return SL_CONTINUE;
}

/* Parses the whole frame. SL_CONTINUE means pkt describes a TCP or UDP packet
 * over IPv4 or IPv6 whose headers all lie inside the frame, or an ICMP or
 * ICMPv6 packet (pkt->ip_proto) whose IP header does and whose message is
 * still to be read from pkt->l4. */
static __always_inline int sl_parse_packet(struct xdp_md *ctx, struct sl_packet *pkt,
					   struct sl_stats *st)
{
	struct sl_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__be16 eth_proto;
	int rc;

	pkt->frame_len = c.end - c.pos;
	rc = sl_parse_l2(&c, pkt, &eth_proto);
	if (rc != SL_CONTINUE)
		return rc;
	if (eth_proto == bpf_htons(ETH_P_IP))
		rc = sl_parse_ipv4(&c, pkt, st);
	else if (eth_proto == bpf_htons(ETH_P_IPV6))
		rc = sl_parse_ipv6(&c, pkt, st);
	else
		return XDP_PASS;
	if (rc != SL_CONTINUE)
		return rc;
	pkt->l4 = c.pos;
	if (pkt->ip_proto == IPPROTO_ICMP || pkt->ip_proto == IPPROTO_ICMPV6) {
		pkt->proto = 0; /* the flow's: icmp_error.h reads it from the quote */
		return SL_CONTINUE;
	}
	return sl_parse_l4(&c, pkt);
}

/* The sl_vips key of a parsed packet: its destination. */
static __always_inline void sl_vip_key_build(const struct sl_packet *pkt,
					     struct sl_vip_key *key)
{
	if (pkt->family == SL_FAMILY_V4) {
		const struct iphdr *iph = pkt->l3;

		key->addr[0] = iph->daddr;
		key->addr[1] = 0;
		key->addr[2] = 0;
		key->addr[3] = 0;
	} else {
		const struct ipv6hdr *ip6h = pkt->l3;

		key->addr[0] = ip6h->daddr.in6_u.u6_addr32[0];
		key->addr[1] = ip6h->daddr.in6_u.u6_addr32[1];
		key->addr[2] = ip6h->daddr.in6_u.u6_addr32[2];
		key->addr[3] = ip6h->daddr.in6_u.u6_addr32[3];
	}
	key->port = pkt->dport;
	key->proto = pkt->proto;
	key->family = pkt->family;
}

/* The sl_conntrack key of a parsed packet: its 5-tuple as on the wire. */
static __always_inline void sl_flow_key_build(const struct sl_packet *pkt,
					      struct sl_flow_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (pkt->family == SL_FAMILY_V4) {
		const struct iphdr *iph = pkt->l3;

		key->src[0] = iph->saddr;
		key->dst[0] = iph->daddr;
	} else {
		const struct ipv6hdr *ip6h = pkt->l3;

		key->src[0] = ip6h->saddr.in6_u.u6_addr32[0];
		key->src[1] = ip6h->saddr.in6_u.u6_addr32[1];
		key->src[2] = ip6h->saddr.in6_u.u6_addr32[2];
		key->src[3] = ip6h->saddr.in6_u.u6_addr32[3];
		key->dst[0] = ip6h->daddr.in6_u.u6_addr32[0];
		key->dst[1] = ip6h->daddr.in6_u.u6_addr32[1];
		key->dst[2] = ip6h->daddr.in6_u.u6_addr32[2];
		key->dst[3] = ip6h->daddr.in6_u.u6_addr32[3];
	}
	key->sport = pkt->sport;
	key->dport = pkt->dport;
	key->proto = pkt->proto;
	key->family = pkt->family;
}

#endif /* SLUICE_PARSE_H */
