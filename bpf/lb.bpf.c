// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * This file contains the balancer's XDP entry point, sl_balancer, and the
 * dispatch between its stages: parse the frame, test the destination against
 * the VIP prefilter and look it up in sl_vips (anything else passes to the
 * kernel untouched), find the flow's
 * backend (conntrack, else Maglev), count the packet, and tunnel it to the
 * backend with XDP_TX. The stages live in the headers named after their
 * concern and follow the return-code convention of verdict.h; every packet
 * leaves through record_action(), which counts its verdict.
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
#include "encap.h"

/* The flow's backend: the one conntrack recorded, else Maglev's choice, which
 * is then recorded. A TCP SYN opens a new connection and skips conntrack. */
static __always_inline int sl_pick_backend(const struct sl_packet *pkt,
					   const struct sl_vip *vip, struct sl_stats *st,
					   __u32 *backend_id)
{
	struct sl_flow_key key;
	int rc;

	sl_flow_key_build(pkt, &key);
	if (!pkt->tcp_syn && sl_ct_lookup(&key, st, backend_id))
		return SL_CONTINUE;
	rc = sl_maglev_pick(vip, &key, backend_id);
	if (rc != SL_CONTINUE)
		return rc;
	sl_ct_record(&key, *backend_id, st);
	return SL_CONTINUE;
}

/* One packet, stage by stage, in the documented order: a packet for a VIP is
 * counted for its VIP and backend once the backend is known, before the
 * tunnel header is written (so a later NO_SOURCE or ENCAP drop is counted
 * there too). A packet for no VIP costs only the parse and, unless its
 * prefilter bit collides with a VIP's, one inlined array lookup. */
static __always_inline int sl_process(struct xdp_md *ctx, struct sl_stats *st)
{
	struct sl_packet pkt;
	struct sl_vip_key vip_key;
	struct sl_backend *be;
	struct sl_config *cfg;
	struct sl_vip *vip;
	__u32 zero = 0, backend_id;
	int rc;

	rc = sl_parse_packet(ctx, &pkt, st);
	if (rc != SL_CONTINUE)
		return rc;

	sl_vip_key_build(&pkt, &vip_key);
	if (!sl_vip_filter_test(&vip_key))
		return XDP_PASS;
	vip = bpf_map_lookup_elem(&sl_vips, &vip_key);
	if (!vip)
		return XDP_PASS;
	if (pkt.ip_options)
		st->ip_options++;

	cfg = bpf_map_lookup_elem(&sl_config, &zero);
	if (!cfg || !(cfg->flags & SL_CFG_HAS_GATEWAY))
		return SL_RC_DROP(SL_DROP_NO_GATEWAY);

	rc = sl_pick_backend(&pkt, vip, st, &backend_id);
	if (rc != SL_CONTINUE)
		return rc;
	be = bpf_map_lookup_elem(&sl_backends, &backend_id);
	if (!be || !be->family)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);

	sl_count_traffic(vip->id, backend_id, pkt.frame_len);
	return sl_encap(ctx, &pkt, cfg, be);
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
