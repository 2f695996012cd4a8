/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the steering of inbound ICMP errors. A router on the
 * path of a backend's reply (VIP -> client) that cannot deliver it, or must
 * tell it to send smaller packets, sends its error to the reply's source: the
 * VIP, so the balancer gets it. The error quotes the reply's headers, and the
 * quoted 5-tuple turned around is the flow's conntrack key: the error goes to
 * the backend that owns the flow (conntrack, else Maglev as for a new flow,
 * recording nothing), forwarded as its service forwards, so that the
 * backend's kernel learns the path MTU or the failure, as Katran and Cilium
 * do. Errors handled: IPv4 destination unreachable (fragmentation needed
 * among them) and time exceeded; ICMPv6 destination unreachable, packet too
 * big and time exceeded. Any other ICMP, and errors about no VIP's flow, pass
 * to the kernel untouched.
 */
#ifndef SLUICE_ICMP_ERROR_H
#define SLUICE_ICMP_ERROR_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "verdict.h"
#include "maps.h"
#include "parse.h"
#include "prefilter.h"
#include "stats.h"
#include "conntrack.h"
#include "maglev.h"
#include "forward.h"
#include "nat_icmp.h"

static __always_inline int sl_icmp_is_error(const struct sl_packet *pkt, __u8 type)
{
	if (pkt->ip_proto == IPPROTO_ICMP)
		return type == SL_ICMP_DEST_UNREACH || type == SL_ICMP_TIME_EXCEEDED;
	return type == SL_ICMPV6_DEST_UNREACH || type == SL_ICMPV6_PKT_TOOBIG ||
	       type == SL_ICMPV6_TIME_EXCEED;
}

/* Reads the quoted reply of an ICMP error into the flow keys it belongs to:
 * the conntrack key (client -> VIP) and the VIP key. Returns SL_CONTINUE, or
 * XDP_PASS for anything that is not an error about a TCP or UDP packet of the
 * error's own family. Fills pkt's flow fields (proto, ports) from the quote. */
static __always_inline int sl_icmp_quoted_flow(struct xdp_md *ctx, struct sl_packet *pkt,
					       struct sl_flow_key *flow, struct sl_vip_key *vip)
{
	void *end = (void *)(long)ctx->data_end;
	struct sl_icmp_hdr *icmp = pkt->l4;
	struct sl_ports *ports;
	void *quote;

	if ((void *)(icmp + 1) > end || !sl_icmp_is_error(pkt, icmp->type))
		return XDP_PASS;
	quote = icmp + 1;
	__builtin_memset(flow, 0, sizeof(*flow));
	__builtin_memset(vip, 0, sizeof(*vip));
	if (pkt->family == SL_FAMILY_V4) {
		struct iphdr *iph = quote;

		if ((void *)(iph + 1) > end || iph->version != SL_IPV4_VERSION ||
		    iph->ihl < SL_IPV4_MIN_IHL)
			return XDP_PASS;
		if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
			return XDP_PASS;
		ports = quote + iph->ihl * SL_IHL_UNIT;
		if ((void *)(ports + 1) > end)
			return XDP_PASS;
		pkt->proto = iph->protocol;
		flow->src[0] = iph->daddr;
		flow->dst[0] = iph->saddr;
		vip->addr[0] = iph->saddr;
	} else {
		struct ipv6hdr *ip6h = quote;

		if ((void *)(ip6h + 1) > end || ip6h->version != SL_IPV6_VERSION)
			return XDP_PASS;
		if (ip6h->nexthdr != IPPROTO_TCP && ip6h->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		ports = (void *)(ip6h + 1);
		if ((void *)(ports + 1) > end)
			return XDP_PASS;
		pkt->proto = ip6h->nexthdr;
		for (int i = 0; i < 4; i++) {
			flow->src[i] = ip6h->daddr.in6_u.u6_addr32[i];
			flow->dst[i] = ip6h->saddr.in6_u.u6_addr32[i];
			vip->addr[i] = ip6h->saddr.in6_u.u6_addr32[i];
		}
	}
	/* The quote is the reply: its destination port is the client's. */
	pkt->sport = ports->dest;
	pkt->dport = ports->source;
	pkt->tcp_syn = 0;
	pkt->tcp_seen = 0;
	flow->sport = pkt->sport;
	flow->dport = pkt->dport;
	flow->proto = pkt->proto;
	flow->family = pkt->family;
	vip->port = pkt->dport;
	vip->proto = pkt->proto;
	vip->family = pkt->family;
	return SL_CONTINUE;
}

/* An error about a reply from a VIP: steered to the backend of the flow it
 * is about (translated when the flow is), or passed. SL_CONTINUE when the
 * quote's source is no VIP after all (a prefilter collision). */
static __always_inline int sl_steer_icmp_to_backend(struct xdp_md *ctx, struct sl_packet *pkt,
						    const struct sl_flow_key *flow,
						    const struct sl_vip_key *vip_key, struct sl_stats *st)
{
	struct sl_ct_flow known;
	struct sl_backend *be;
	struct sl_config *cfg;
	struct sl_vip *vip;
	__u32 zero = 0, backend_id, service_id;
	int rc, hit;

	hit = sl_ct_lookup(flow, 0, &known);
	if (hit) {
		backend_id = known.backend_id;
		service_id = known.service_id;
	} else {
		vip = bpf_map_lookup_elem(&sl_vips, vip_key);
		if (!vip)
			return SL_CONTINUE;
		rc = sl_maglev_pick(vip, flow, &backend_id);
		if (rc != SL_CONTINUE)
			return rc;
		service_id = vip->id;
	}
	cfg = bpf_map_lookup_elem(&sl_config, &zero);
	if (!cfg || !(cfg->flags & SL_CFG_HAS_GATEWAY))
		return SL_RC_DROP(SL_DROP_NO_GATEWAY);
	be = bpf_map_lookup_elem(&sl_backends, &backend_id);
	if (!be || !be->family)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	if (hit && known.entry->nat) {
		sl_count_traffic(service_id, backend_id, pkt->frame_len);
		return sl_nat_icmp_to_backend(ctx, pkt, flow, be, known.entry, st);
	}
	/* A NAT service's flow without a translation: nothing to translate. */
	if (sl_fwd_is_nat(be->forwarding))
		return XDP_PASS;
	sl_count_traffic(service_id, backend_id, pkt->frame_len);
	rc = sl_forward_as_is(ctx, pkt, cfg, be, flow);
	if (rc == XDP_TX)
		st->icmp_steered++;
	return rc;
}

/* An ICMP or ICMPv6 packet: an error about a VIP's reply goes to the flow's
 * backend, one about a packet translated toward a backend to the flow's
 * client; anything else passes (echo requests to a VIP among them: the
 * kernel answers them if the VIP is one of its addresses). The caller lends
 * the storage of the keys. */
static __always_inline int sl_steer_icmp(struct xdp_md *ctx, struct sl_packet *pkt,
					 struct sl_flow_key *flow, struct sl_vip_key *vip_key,
					 struct sl_stats *st)
{
	int rc;

	rc = sl_icmp_quoted_flow(ctx, pkt, flow, vip_key);
	if (rc != SL_CONTINUE)
		return rc;
	if (sl_vip_filter_test(vip_key)) {
		rc = sl_steer_icmp_to_backend(ctx, pkt, flow, vip_key, st);
		if (rc != SL_CONTINUE)
			return rc;
	}
	return sl_nat_icmp_to_client(ctx, pkt, flow, vip_key, st);
}

#endif /* SLUICE_ICMP_ERROR_H */
