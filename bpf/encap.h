/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains IP-in-IP encapsulation for direct server return
 * (IPv4-in-IPv4, IPv6-in-IPv6 and IPv4-in-IPv6) and what every header the
 * balancer pushes in front of a packet shares (gue.h and pmtu.h use it too):
 * growing the frame at its head and writing the new link-layer header, and
 * the outer IPv4 and IPv6 headers. An IP-in-IP frame is
 *
 *   Ethernet (to the gateway, from our own MAC) [VLAN tag, as received]
 *   outer IPv4 or IPv6 header (node -> backend)
 *   the inner IP packet, untouched.
 *
 * The old link-layer header lies where the outer IP header goes, so what is
 * kept of it is read before the head moves, and every pointer is derived and
 * bounds-checked again afterwards.
 */
#ifndef SLUICE_ENCAP_H
#define SLUICE_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"

#define SL_IPV6_VERSION_SHIFT 28     /* in the first 32-bit word of struct ipv6hdr */
#define SL_IPV6_TCLASS_SHIFT 20

/* A MAC address as three 16-bit words (Ethernet fields are 2-byte aligned). */
#define SL_MAC_WORDS (ETH_ALEN / sizeof(__u16))

static __always_inline void sl_mac_copy(void *dst, const void *src)
{
	__u16 *d = dst;
	const __u16 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

/*
 * Grows the frame by outer_len bytes and writes its new link-layer header:
 * destination dst_mac (which must not point into the frame), source the old
 * frame's destination (our MAC), the VLAN tag kept if there was one, and
 * outer_proto as the L3 ethertype. Returns the place of the outer IP header,
 * with outer_len bytes checked to lie inside the frame, or NULL if the frame
 * could not grow.
 */
static __always_inline void *sl_encap_push_l2(struct xdp_md *ctx, const struct sl_packet *pkt,
					      const void *dst_mac, __u32 outer_len,
					      __be16 outer_proto)
{
	__u16 our_mac[SL_MAC_WORDS];
	__be16 vlan_tpid = 0, vlan_tci = 0;
	int has_vlan = pkt->vlan != NULL;
	struct sl_vlan_hdr *vlan;
	struct sl_eth *eth;
	void *data, *data_end, *outer;

	sl_mac_copy(our_mac, pkt->eth->dst);
	if (has_vlan) {
		vlan_tpid = pkt->eth->proto;
		vlan_tci = pkt->vlan->tci;
	}

	if (bpf_xdp_adjust_head(ctx, -(int)outer_len))
		return NULL;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return NULL;
	sl_mac_copy(eth->dst, dst_mac);
	sl_mac_copy(eth->src, our_mac);
	if (has_vlan) {
		vlan = (void *)(eth + 1);
		if ((void *)(vlan + 1) > data_end)
			return NULL;
		eth->proto = vlan_tpid;
		vlan->tci = vlan_tci;
		vlan->encap_proto = outer_proto;
		outer = vlan + 1;
	} else {
		eth->proto = outer_proto;
		outer = eth + 1;
	}
	if (outer + outer_len > data_end)
		return NULL;
	return outer;
}

/* An option-less IPv4 header carrying inner_len bytes of protocol. */
static __always_inline void sl_write_outer_ipv4(struct iphdr *iph, __u8 tos, __u32 inner_len,
						__u8 protocol, __be16 frag_off,
						__be32 saddr, __be32 daddr)
{
	/* Built aside so that the checksum is summed from registers and the
	 * header is stored in a few wide writes. tot_len cannot overflow: an
	 * XDP frame is far shorter than 64 KiB. */
	struct iphdr h = {
		.version = SL_IPV4_VERSION,
		.ihl = SL_IPV4_MIN_IHL,
		.tos = tos,
		.tot_len = bpf_htons(sizeof(h) + inner_len),
		.id = 0,
		.frag_off = frag_off,
		.ttl = SL_OUTER_TTL,
		.protocol = protocol,
		.check = 0,
		.saddr = saddr,
		.daddr = daddr,
	};

	h.check = sl_ipv4_csum(&h);
	*iph = h;
}

/* An outer IPv6 header: flow label 0, payload the whole inner packet. */
static __always_inline void sl_write_outer_ipv6(struct ipv6hdr *ip6h, __u8 tclass,
						__u32 inner_len, __u8 nexthdr,
						const __u32 *saddr, const __u32 *daddr)
{
	/* Version, traffic class and flow label share the first 32-bit word. */
	*(__be32 *)ip6h = bpf_htonl((__u32)SL_IPV6_VERSION << SL_IPV6_VERSION_SHIFT |
				    (__u32)tclass << SL_IPV6_TCLASS_SHIFT);
	ip6h->payload_len = bpf_htons(inner_len);
	ip6h->nexthdr = nexthdr;
	ip6h->hop_limit = SL_OUTER_TTL;
	ip6h->saddr.in6_u.u6_addr32[0] = saddr[0];
	ip6h->saddr.in6_u.u6_addr32[1] = saddr[1];
	ip6h->saddr.in6_u.u6_addr32[2] = saddr[2];
	ip6h->saddr.in6_u.u6_addr32[3] = saddr[3];
	ip6h->daddr.in6_u.u6_addr32[0] = daddr[0];
	ip6h->daddr.in6_u.u6_addr32[1] = daddr[1];
	ip6h->daddr.in6_u.u6_addr32[2] = daddr[2];
	ip6h->daddr.in6_u.u6_addr32[3] = daddr[3];
}

/* IPv4 in IPv4. */
static __always_inline int sl_encap_4in4(struct xdp_md *ctx, const struct sl_packet *pkt,
					 const struct sl_config *cfg,
					 const struct sl_backend *be)
{
	struct iphdr *outer;

	outer = sl_encap_push_l2(ctx, pkt, cfg->gateway_mac, sizeof(*outer), bpf_htons(ETH_P_IP));
	if (!outer)
		return SL_RC_DROP(SL_DROP_ENCAP);
	sl_write_outer_ipv4(outer, pkt->tos, pkt->ip_len, IPPROTO_IPIP, bpf_htons(SL_IP_DF),
			    cfg->source_v4, be->addr[0]);
	return XDP_TX;
}

/* IPv6 or IPv4 (nexthdr says which) in IPv6. */
static __always_inline int sl_encap_in6(struct xdp_md *ctx, const struct sl_packet *pkt,
					const struct sl_config *cfg, const struct sl_backend *be,
					__u8 nexthdr)
{
	struct ipv6hdr *outer;

	outer = sl_encap_push_l2(ctx, pkt, cfg->gateway_mac, sizeof(*outer), bpf_htons(ETH_P_IPV6));
	if (!outer)
		return SL_RC_DROP(SL_DROP_ENCAP);
	sl_write_outer_ipv6(outer, pkt->tos, pkt->ip_len, nexthdr, cfg->source_v6, be->addr);
	return XDP_TX;
}

/* Returns SL_CONTINUE when a tunnel from this node to the backend can carry
 * the packet, else a drop: NO_SOURCE when the node has no source address of
 * the outer family, NO_BACKEND for an IPv6 VIP with an IPv4 backend (the
 * control plane never configures one). Shared by IP-in-IP and GUE. */
static __always_inline int sl_encap_check(const struct sl_packet *pkt, const struct sl_config *cfg,
					  const struct sl_backend *be)
{
	if (pkt->family == SL_FAMILY_V4 && be->family == SL_FAMILY_V4)
		return cfg->flags & SL_CFG_HAS_SOURCE_V4 ? SL_CONTINUE : SL_RC_DROP(SL_DROP_NO_SOURCE);
	if (be->family != SL_FAMILY_V6)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	return cfg->flags & SL_CFG_HAS_SOURCE_V6 ? SL_CONTINUE : SL_RC_DROP(SL_DROP_NO_SOURCE);
}

/* Tunnels the packet to the backend with IP-in-IP. Returns XDP_TX, a drop of
 * sl_encap_check(), or ENCAP when the frame cannot grow. */
static __always_inline int sl_encap(struct xdp_md *ctx, const struct sl_packet *pkt,
				    const struct sl_config *cfg, const struct sl_backend *be)
{
	int rc = sl_encap_check(pkt, cfg, be);

	if (rc != SL_CONTINUE)
		return rc;
	if (be->family == SL_FAMILY_V4)
		return sl_encap_4in4(ctx, pkt, cfg, be);
	return sl_encap_in6(ctx, pkt, cfg, be,
			    pkt->family == SL_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6);
}

#endif /* SLUICE_ENCAP_H */
