/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains GUE encapsulation: the packet rides in UDP, so networks
 * that drop IP protocols 4 and 41 carry it, and the UDP source port comes from
 * the flow hash, so ECMP routers and the backends' NICs (RSS) spread tunnels
 * over paths and queues. The variant is GUE variant 1, "direct IP
 * encapsulation" (draft-ietf-intarea-gue section 4): no GUE header, the inner
 * IP header's version nibble says IPv4 or IPv6. Linux strips it with
 * `ip fou add port PORT gue`, as does lbctl decap. The frame is
 *
 *   Ethernet (to the gateway, from our own MAC) [VLAN tag, as received]
 *   outer IPv4 (DF) or IPv6 header (node -> backend, protocol 17)
 *   UDP (flow-hash source port -> node.gue_port)
 *   the inner IP packet, untouched.
 *
 * The UDP checksum is 0 in IPv4, as RFC 768 allows. In IPv6 it is a real one
 * (RFC 8200; RFC 6935 permits 0 only under RFC 6936's conditions), computed
 * without reading the payload: a packet with a valid L4 checksum sums to the
 * complement of its pseudo-header, the trick Linux calls local checksum
 * offload. An IPv4 UDP packet without a checksum gives nothing to derive one
 * from; it goes with 0, the one case RFC 6935 is used for.
 */
#ifndef SLUICE_GUE_H
#define SLUICE_GUE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"
#include "hash.h"
#include "encap.h"

/* Source ports 49152-65535 (RFC 8086 3.3): the top 14 bits of the hash. */
#define SL_GUE_SPORT_BASE 0xc000
#define SL_GUE_SPORT_SHIFT 18

/* The tunnel's UDP source port for a flow, network order: the flow's words
 * folded by XOR, then Fibonacci hashing, as the VIP prefilter does. One
 * multiply, not jhash: it runs for every packet of a GUE flow, and all it
 * must do is spread flows (the same flow always gets the same port). */
static __always_inline __be16 sl_gue_sport(const struct sl_flow_key *key)
{
	__u32 x = key->src[0] ^ key->src[1] ^ key->src[2] ^ key->src[3] ^
		  ((__u32)key->sport | ((__u32)key->dport << SL_PORT_BITS)) ^ key->proto;

	return bpf_htons(SL_GUE_SPORT_BASE | (x * SL_VIP_FILTER_MULT) >> SL_GUE_SPORT_SHIFT);
}

/* The one's-complement sum of the whole inner packet, from its headers alone.
 * Returns 0 and sets *known = 0 when it cannot be known (IPv4 UDP without a
 * checksum). Reads the packet: call it before the head moves. */
static __always_inline __u64 sl_gue_inner_sum(const struct sl_packet *pkt, void *data_end,
					      int *known)
{
	__u32 l4_len = pkt->ip_len - pkt->l3_len;
	const __u32 *src, *dst;
	__u64 sum = 0;

	*known = 1;
	if (pkt->family == SL_FAMILY_V4) {
		const struct iphdr *iph = pkt->l3;

		/* A valid IPv4 header sums to 0xffff: nothing to add. */
		src = &iph->saddr;
		dst = &iph->daddr;
	} else {
		const struct ipv6hdr *ip6h = pkt->l3;
		const __u32 *w = pkt->l3;

		sum = (__u64)w[0] + w[1] + sl_csum_addr6(ip6h->saddr.in6_u.u6_addr32) +
		      sl_csum_addr6(ip6h->daddr.in6_u.u6_addr32);
		src = ip6h->saddr.in6_u.u6_addr32;
		dst = ip6h->daddr.in6_u.u6_addr32;
	}
	/* ICMPv4 has no pseudo-header: a valid message sums to 0xffff. */
	if (pkt->ip_proto == IPPROTO_ICMP)
		return sum;
	if (pkt->ip_proto == IPPROTO_UDP) {
		const struct udphdr *udp = pkt->l4;

		if ((void *)(udp + 1) > data_end || !udp->check) {
			*known = 0;
			return 0;
		}
	}
	/* TCP, UDP with a checksum, ICMPv6: segment = ~pseudo-header. */
	return sum + (__u16)sl_csum_fold64(sl_csum_pseudo(pkt->family, src, dst, l4_len,
							   pkt->ip_proto));
}

static __always_inline void sl_gue_write_udp(struct udphdr *udp, __be16 sport, __be16 dport,
					     __u32 inner_len)
{
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(sizeof(*udp) + inner_len);
	udp->check = 0;
}

/* IPv4 or IPv6 in UDP over IPv4. */
static __always_inline int sl_encap_gue4(struct xdp_md *ctx, const struct sl_packet *pkt,
					 const struct sl_config *cfg, const struct sl_backend *be,
					 __be16 sport)
{
	struct iphdr *outer;
	struct udphdr *udp;
	__u32 udp_len = sizeof(*udp) + pkt->ip_len;

	outer = sl_encap_push_l2(ctx, pkt, cfg->gateway_mac, sizeof(*outer) + sizeof(*udp),
				 bpf_htons(ETH_P_IP));
	if (!outer)
		return SL_RC_DROP(SL_DROP_ENCAP);
	sl_write_outer_ipv4(outer, pkt->tos, udp_len, IPPROTO_UDP, bpf_htons(SL_IP_DF),
			    cfg->source_v4, be->addr[0]);
	udp = (void *)(outer + 1);
	sl_gue_write_udp(udp, sport, cfg->gue_port, pkt->ip_len);
	return XDP_TX;
}

/* IPv4 or IPv6 in UDP over IPv6, with the UDP checksum. */
static __always_inline int sl_encap_gue6(struct xdp_md *ctx, const struct sl_packet *pkt,
					 const struct sl_config *cfg, const struct sl_backend *be,
					 __be16 sport)
{
	struct ipv6hdr *outer;
	struct udphdr *udp;
	__u32 udp_len = sizeof(*udp) + pkt->ip_len;
	__u64 sum;
	__sum16 check;
	int known;

	sum = sl_gue_inner_sum(pkt, (void *)(long)ctx->data_end, &known);
	outer = sl_encap_push_l2(ctx, pkt, cfg->gateway_mac, sizeof(*outer) + sizeof(*udp),
				 bpf_htons(ETH_P_IPV6));
	if (!outer)
		return SL_RC_DROP(SL_DROP_ENCAP);
	sl_write_outer_ipv6(outer, pkt->tos, udp_len, IPPROTO_UDP, cfg->source_v6, be->addr);
	udp = (void *)(outer + 1);
	sl_gue_write_udp(udp, sport, cfg->gue_port, pkt->ip_len);
	if (known) {
		sum += sl_csum_pseudo(SL_FAMILY_V6, cfg->source_v6, be->addr, udp_len, IPPROTO_UDP);
		sum += (__u32)sport | (__u32)cfg->gue_port << 16;
		sum += udp->len;
		check = sl_csum_fold64(sum);
		/* A computed 0 goes as all ones: 0 means "no checksum". */
		udp->check = check ? check : (__sum16)0xffff;
	}
	return XDP_TX;
}

/* Tunnels the packet to the backend in GUE. Returns XDP_TX, a drop of
 * sl_encap_check(), or ENCAP when the frame cannot grow. */
static __always_inline int sl_encap_gue(struct xdp_md *ctx, const struct sl_packet *pkt,
					const struct sl_config *cfg, const struct sl_backend *be,
					const struct sl_flow_key *key)
{
	int rc = sl_encap_check(pkt, cfg, be);

	if (rc != SL_CONTINUE)
		return rc;
	if (be->family == SL_FAMILY_V4)
		return sl_encap_gue4(ctx, pkt, cfg, be, sl_gue_sport(key));
	return sl_encap_gue6(ctx, pkt, cfg, be, sl_gue_sport(key));
}

#endif /* SLUICE_GUE_H */
