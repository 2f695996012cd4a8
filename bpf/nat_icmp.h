/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the translation of ICMP errors about NAT flows, so that
 * path MTU discovery and fast failure work through the translation:
 *
 *   toward the backend  an error a router on the client's side sends about a
 *                       reply (VIP:port -> client): the outer destination
 *                       becomes the backend (and, for fullnat, the outer source
 *                       the SNAT address), and the quoted reply is readdressed
 *                       to what the backend sent (backend:port -> client, or
 *                       -> SNAT:port);
 *   toward the client   an error the backend, or a router on its side, sends
 *                       about a translated packet: the outer destination
 *                       becomes the client (and an outer source that is the
 *                       backend, the VIP), and the quote what the client sent
 *                       (client -> VIP:port).
 *
 * Every checksum the rewrite touches is updated incrementally: the outer IPv4
 * header's; the quoted IPv4 header's; the quoted TCP or UDP checksum when the
 * quote holds it (its pseudo-header and ports changed); and the ICMP
 * checksum, which covers the whole quote (and, for ICMPv6, the outer
 * addresses through its pseudo-header).
 */
#ifndef SLUICE_NAT_ICMP_H
#define SLUICE_NAT_ICMP_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"
#include "nat.h"

#define SL_TCP_CHECK_OFFSET 16   /* of struct tcphdr */
#define SL_UDP_CHECK_OFFSET 6    /* of struct udphdr */

/* The quoted packet's new addresses and ports. */
struct sl_quote_rewrite {
	const __u32 *src;
	const __u32 *dst;
	__be16 sport;
	__be16 dport;
};

/* Rewrites the quoted IP header's addresses; returns their change (which the
 * quoted transport checksum's pseudo-header and the ICMP checksum both see)
 * and adds the quoted IPv4 header checksum's change to *icmp_diff. */
static __always_inline int sl_quote_addrs(const struct sl_packet *pkt, void *quote, void *end,
					  const struct sl_quote_rewrite *to, __u64 *addr_diff,
					  __u64 *icmp_diff, void **ports)
{
	__u64 diff = 0;

	if (pkt->family == SL_FAMILY_V4) {
		struct iphdr *iph = quote;
		__sum16 check;

		if ((void *)(iph + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		diff += sl_csum_diff32(iph->saddr, to->src[0]);
		diff += sl_csum_diff32(iph->daddr, to->dst[0]);
		iph->saddr = to->src[0];
		iph->daddr = to->dst[0];
		check = sl_csum_apply(iph->check, diff);
		*icmp_diff += sl_csum_diff16(iph->check, check);
		iph->check = check;
		*ports = quote + iph->ihl * SL_IHL_UNIT;
	} else {
		struct ipv6hdr *ip6h = quote;

		if ((void *)(ip6h + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
#pragma unroll
		for (int i = 0; i < 4; i++) {
			diff += sl_csum_diff32(ip6h->saddr.in6_u.u6_addr32[i], to->src[i]);
			diff += sl_csum_diff32(ip6h->daddr.in6_u.u6_addr32[i], to->dst[i]);
			ip6h->saddr.in6_u.u6_addr32[i] = to->src[i];
			ip6h->daddr.in6_u.u6_addr32[i] = to->dst[i];
		}
		*ports = ip6h + 1;
	}
	*addr_diff = diff;
	return SL_CONTINUE;
}

/* The quoted transport checksum, when the quote reaches it. */
static __always_inline void sl_quote_l4_check(const struct sl_packet *pkt, void *ports, void *end,
					      __u64 diff, __u64 *icmp_diff)
{
	__sum16 *check, updated;

	if (pkt->proto == IPPROTO_TCP) {
		check = ports + SL_TCP_CHECK_OFFSET;
	} else {
		check = ports + SL_UDP_CHECK_OFFSET;
	}
	if ((void *)(check + 1) > end)
		return;
	if (pkt->proto == IPPROTO_UDP && !*check && pkt->family == SL_FAMILY_V4)
		return;
	updated = sl_csum_apply(*check, diff);
	if (pkt->proto == IPPROTO_UDP && !updated)
		updated = SL_CSUM_MANGLED_0;
	*icmp_diff += sl_csum_diff16(*check, updated);
	*check = updated;
}

/*
 * Readdresses an ICMP error about a NAT flow: the outer source (NULL keeps
 * it) and destination, and the quoted packet as `to` says. Returns
 * SL_CONTINUE or the TRUNCATED drop (sl_icmp_quoted_flow already checked the
 * headers; the verifier wants them checked again).
 */
static __always_inline int sl_nat_icmp_rewrite(struct xdp_md *ctx, const struct sl_packet *pkt,
					       const __u32 *outer_src, const __u32 *outer_dst,
					       const struct sl_quote_rewrite *to)
{
	void *end = (void *)(long)ctx->data_end;
	struct sl_icmp_hdr *icmp = pkt->l4;
	struct sl_ports *ports;
	__u64 outer_diff, addr_diff = 0, icmp_diff = 0, port_diff;
	void *l4 = NULL;
	int rc;

	if ((void *)(icmp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	outer_diff = sl_nat_addrs(pkt, outer_src, outer_dst);
	rc = sl_quote_addrs(pkt, icmp + 1, end, to, &addr_diff, &icmp_diff, &l4);
	if (rc != SL_CONTINUE)
		return rc;
	ports = l4;
	if (!ports || (void *)(ports + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	port_diff = sl_csum_diff16(ports->source, to->sport) + sl_csum_diff16(ports->dest, to->dport);
	ports->source = to->sport;
	ports->dest = to->dport;
	sl_quote_l4_check(pkt, ports, end, addr_diff + port_diff, &icmp_diff);
	icmp_diff += addr_diff + port_diff;
	if (pkt->family == SL_FAMILY_V6)
		icmp_diff += outer_diff; /* ICMPv6's pseudo-header */
	icmp = pkt->l4;
	if ((void *)(icmp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	icmp->check = sl_csum_apply(icmp->check, icmp_diff);
	return SL_CONTINUE;
}

/* An error about a reply of NAT flow `ct` (found by the quote turned around),
 * translated and sent to the flow's backend `be`. */
static __always_inline int sl_nat_icmp_to_backend(struct xdp_md *ctx, const struct sl_packet *pkt,
						  const struct sl_flow_key *flow, const struct sl_backend *be,
						  const struct sl_ct_entry *ct, struct sl_stats *st)
{
	struct sl_quote_rewrite to = { .src = be->addr, .sport = be->port };
	struct sl_snat_pool *pool;
	__u32 index = ct->snat_index;
	int rc;

	if (sl_mac_is_zero(be->mac))
		return SL_RC_DROP(SL_DROP_NO_NEIGHBOUR);
	if (ct->nat == SL_FWD_FULLNAT) {
		pool = sl_snat_pool_of(pkt->family);
		if (!pool || index >= SL_MAX_SNAT_ADDRS)
			return SL_RC_DROP(SL_DROP_NO_SNAT);
		to.dst = pool->addr[index];
		to.dport = ct->snat_port;
		rc = sl_nat_icmp_rewrite(ctx, pkt, pool->addr[index], be->addr, &to);
	} else {
		to.dst = flow->src;
		to.dport = flow->sport;
		rc = sl_nat_icmp_rewrite(ctx, pkt, NULL, be->addr, &to);
	}
	if (rc != SL_CONTINUE)
		return rc;
	st->nat_icmp++;
	return sl_nat_send_to_backend(ctx, pkt, be);
}

/* An error about a packet the balancer translated toward a backend: `flow` is
 * the quote turned around, the backend's reply as sl_nat keys it. Translated
 * and sent to the client, or passed when no translation matches. `reply` is
 * storage for the prefilter key. */
static __always_inline int sl_nat_icmp_to_client(struct xdp_md *ctx, const struct sl_packet *pkt,
						 const struct sl_flow_key *flow, struct sl_vip_key *reply,
						 struct sl_stats *st)
{
	struct sl_quote_rewrite to;
	struct sl_nat_entry *nat;
	const __u32 *outer_src = NULL;
	int rc;

#pragma unroll
	for (int i = 0; i < 4; i++)
		reply->addr[i] = flow->src[i];
	reply->port = flow->sport;
	reply->proto = flow->proto | SL_VIP_FILTER_REPLY;
	reply->family = flow->family;
	if (!sl_vip_filter_test(reply))
		return XDP_PASS;
	nat = bpf_map_lookup_elem(&sl_nat, flow);
	if (!nat)
		return XDP_PASS;
	to.src = nat->flow.src;
	to.sport = nat->flow.sport;
	to.dst = nat->flow.dst;
	to.dport = nat->flow.dport;
	/* An error the backend sent itself comes from the VIP, as the client
	 * knows it; a router's keeps its own address. */
	if (pkt->family == SL_FAMILY_V4) {
		const struct iphdr *iph = pkt->l3;

		if (iph->saddr == flow->src[0])
			outer_src = nat->flow.dst;
	} else {
		const struct ipv6hdr *ip6h = pkt->l3;

		if (ip6h->saddr.in6_u.u6_addr32[0] == flow->src[0] &&
		    ip6h->saddr.in6_u.u6_addr32[1] == flow->src[1] &&
		    ip6h->saddr.in6_u.u6_addr32[2] == flow->src[2] &&
		    ip6h->saddr.in6_u.u6_addr32[3] == flow->src[3])
			outer_src = nat->flow.dst;
	}
	if (outer_src)
		rc = sl_nat_icmp_rewrite(ctx, pkt, outer_src, nat->flow.src, &to);
	else
		rc = sl_nat_icmp_rewrite(ctx, pkt, NULL, nat->flow.src, &to);
	if (rc != SL_CONTINUE)
		return rc;
	sl_count_reply(nat->service_id, nat->backend_id, pkt->frame_len);
	st->nat_icmp++;
	return sl_nat_send_to_client(ctx, pkt, nat);
}

#endif /* SLUICE_NAT_ICMP_H */
