// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * This file contains the balancer's XDP entry point, sl_balancer, and the
 * dispatch between its stages: parse the frame, test the destination against
 * the VIP prefilter (anything else passes to the kernel untouched), find the
 * flow's service and backend (a current conntrack entry, else sl_vips and
 * Maglev), count the packet, and send it to the backend with XDP_TX the way
 * its service forwards (forward.h). ICMP errors about a VIP's flows take
 * their own way to the flow's backend (icmp_error.h). The stages live in the
 * headers named after their concern and follow the return-code convention of
 * verdict.h; every packet leaves through record_action(), which counts its
 * verdict.
 */
#include <linux/bpf.h>
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
#include "tail.h"
#include "nat.h"
#include "proxy.h"
#include "icmp_error.h"

/* Where a packet goes: its service slot and backend. */
struct sl_target {
	__u32 service_id;
	__u32 backend_id;
};

/* Places a flow conntrack did not vouch for (a SYN, an unknown flow, a stale
 * entry). A UDP flow whose first packet is held in sl_ct_unconfirmed goes
 * where that packet went; any other flow is placed by Maglev. A non-SYN
 * packet here is a conntrack miss. Sets *confirmed for a held UDP flow. */
static __always_inline int sl_place_flow(const struct sl_packet *pkt, const struct sl_vip *vip,
					 const struct sl_flow_key *key, struct sl_stats *st,
					 struct sl_target *target, int *confirmed)
{
	if (!pkt->tcp_syn)
		st->ct_misses++;
	target->service_id = vip->id;
	*confirmed = pkt->proto == IPPROTO_UDP && !sl_fwd_is_nat(vip->forwarding) &&
		     sl_ct_unconfirmed_lookup(key, vip->id, &target->backend_id);
	if (*confirmed)
		return SL_CONTINUE;
	return sl_maglev_pick(vip, key, &target->backend_id);
}

/* Writes what a flow that does not translate leaves behind, by its packet:
 * a SYN nothing at all (not even a lookup: an entry an earlier connection
 * left on the same 5-tuple keeps catching that 5-tuple's packets until it
 * ages out), a UDP flow's first packet its hold in sl_ct_unconfirmed,
 * anything else (the first packet after a SYN, a UDP flow's second, a flow
 * that was never seen opening) its sl_conntrack entry. */
static __always_inline void sl_remember_flow(const struct sl_packet *pkt, const struct sl_flow_key *key,
					     const struct sl_target *target, int confirmed,
					     const struct sl_config *cfg, struct sl_stats *st)
{
	struct sl_ct_entry entry;

	if (pkt->tcp_syn)
		return;
	__builtin_memset(&entry, 0, sizeof(entry));
	entry.backend_id = target->backend_id;
	entry.service_id = target->service_id;
	entry.tcp_seen = pkt->tcp_seen;
	if (pkt->proto == IPPROTO_UDP && !confirmed)
		sl_ct_hold(key, &entry, st);
	else
		sl_ct_record(key, &entry, cfg, st);
}

/* A SYN of a NAT service that finds its flow open is a retransmission: it
 * keeps the flow's backend and source, or the backend would see two
 * connections. One after a FIN or RST opens a new connection and is placed
 * afresh. The flow's state is the one before this SYN: a SYN that itself
 * carries FIN or RST (no real stack sends one) does not close the open flow
 * it lands on. */
static __always_inline int sl_syn_reopens(const struct sl_flow_key *key, struct sl_ct_flow *known)
{
	return sl_ct_lookup(key, 0, known) && known->entry->nat &&
	       !(known->entry->tcp_seen & (SL_TCP_SEEN_FIN | SL_TCP_SEEN_RST));
}

/* One packet, stage by stage, in the documented order. A packet whose
 * prefilter bit is clear is for no VIP and passes at once. Every other
 * packet but a SYN asks conntrack first: a current entry names the service
 * slot and the backend, so an established flow costs one hash lookup and
 * never touches sl_vips. A SYN, an unknown flow or a stale entry is looked up
 * in sl_vips (no VIP: pass, counting nothing else) and placed by Maglev; what
 * it leaves in conntrack is sl_remember_flow's (or, translated, sl_nat_open's)
 * concern. A
 * packet for a VIP is counted for its VIP and backend once the backend is
 * known, before the tunnel header is written (so a later NO_SOURCE or ENCAP
 * drop, or an ICMP "too big" answer, is counted there too). */
static __always_inline int sl_process(struct xdp_md *ctx, struct sl_stats *st)
{
	struct sl_packet pkt;
	struct sl_vip_key vip_key;
	struct sl_flow_key flow_key;
	struct sl_ct_flow known;
	struct sl_ct_entry opened;
	struct sl_target target;
	struct sl_backend *be;
	struct sl_config *cfg;
	struct sl_vip *vip = NULL;
	__u32 zero = 0;
	__u8 mode;
	int rc, hit, confirmed = 0;

	rc = sl_parse_packet(ctx, &pkt, st);
	if (rc != SL_CONTINUE)
		return rc;
	/* ICMP takes a program of its own (a tail call, so its stack is its
	 * own). Should the call fail, the packet passes. */
	if (pkt.ip_proto != pkt.proto) {
		bpf_tail_call(ctx, &sl_progs, SL_TAIL_ICMP);
		return XDP_PASS;
	}

	sl_vip_key_build(&pkt, &vip_key);
	if (!sl_vip_filter_test(&vip_key))
		return sl_nat_reply(ctx, &pkt, &vip_key, &flow_key, st);

	sl_flow_key_build(&pkt, &flow_key);
	hit = !pkt.tcp_syn && sl_ct_lookup(&flow_key, pkt.tcp_seen, &known);
	if (!hit) {
		vip = bpf_map_lookup_elem(&sl_vips, &vip_key);
		if (!vip)
			return sl_nat_reply(ctx, &pkt, &vip_key, &flow_key, st);
		if (pkt.tcp_syn && sl_fwd_is_nat(vip->forwarding))
			hit = sl_syn_reopens(&flow_key, &known);
	}
	if (pkt.ip_options)
		st->ip_options++;

	cfg = bpf_map_lookup_elem(&sl_config, &zero);
	if (!cfg || !(cfg->flags & SL_CFG_HAS_GATEWAY))
		return SL_RC_DROP(SL_DROP_NO_GATEWAY);

	if (hit) {
		st->ct_hits++;
		target.service_id = known.service_id;
		target.backend_id = known.backend_id;
	} else {
		rc = sl_place_flow(&pkt, vip, &flow_key, st, &target, &confirmed);
		if (rc != SL_CONTINUE)
			return rc;
	}
	be = bpf_map_lookup_elem(&sl_backends, &target.backend_id);
	if (!be || !be->family)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);

	/* A translated flow stays translated as it was opened; any other flow
	 * follows its backend's mode, and one that turns to NAT opens now. */
	mode = hit && known.entry->nat ? known.entry->nat : be->forwarding;
	if (sl_fwd_is_nat(mode)) {
		if (sl_mac_is_zero(be->mac))
			return SL_RC_DROP(SL_DROP_NO_NEIGHBOUR); /* before a source is taken */
		if (!hit || !known.entry->nat) {
			rc = sl_nat_open(ctx, &pkt, cfg, be, &flow_key, target.backend_id,
					 target.service_id, mode, vip ? vip->flags : 0, &opened, st);
			if (rc != SL_CONTINUE)
				return rc;
			known.entry = &opened;
		}
		sl_count_traffic(target.service_id, target.backend_id, pkt.frame_len);
		return sl_nat_forward(ctx, &pkt, be, known.entry);
	}
	if (!hit)
		sl_remember_flow(&pkt, &flow_key, &target, confirmed, cfg, st);
	sl_count_traffic(target.service_id, target.backend_id, pkt.frame_len);
	return sl_forward(ctx, &pkt, cfg, be, &flow_key, st);
}

/* ICMP and ICMPv6, reached by the balancer's tail call: the frame is parsed
 * again (nothing crosses a tail call but the context). */
SEC("xdp")
int sl_icmp(struct xdp_md *ctx)
{
	struct sl_stats *st = sl_stats_get();
	struct sl_packet pkt;
	struct sl_flow_key flow;
	struct sl_vip_key vip_key;
	int rc;

	if (!st)
		return XDP_ABORTED; /* unreachable: see sl_stats_get() */
	rc = sl_parse_packet(ctx, &pkt, st);
	if (rc == SL_CONTINUE)
		rc = pkt.ip_proto != pkt.proto ? sl_steer_icmp(ctx, &pkt, &flow, &vip_key, st) : XDP_PASS;
	return record_action(st, rc);
}

/* A client's segment of a PROXY flow that carries the header or loses its
 * SYN's data, reached by the balancer's tail call (proxy.h). */
SEC("xdp")
int sl_proxy(struct xdp_md *ctx)
{
	struct sl_stats *st = sl_stats_get();

	if (!st)
		return XDP_ABORTED; /* unreachable: see sl_stats_get() */
	return record_action(st, sl_proxy_forward(ctx, st));
}

/* A backend's segment of a PROXY flow that needs more than its
 * acknowledgement offset, reached by the balancer's tail call (proxy.h). */
SEC("xdp")
int sl_proxy_reply(struct xdp_md *ctx)
{
	struct sl_stats *st = sl_stats_get();

	if (!st)
		return XDP_ABORTED; /* unreachable: see sl_stats_get() */
	return record_action(st, sl_proxy_translate_reply(ctx, st));
}

SEC("xdp")
int sl_balancer(struct xdp_md *ctx)
{
	struct sl_stats *st = sl_stats_get();

	if (!st)
		return XDP_ABORTED; /* unreachable: see sl_stats_get() */
	return record_action(st, sl_process(ctx, st));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
