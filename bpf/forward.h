/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the last stage of the balancer: sending a packet to the
 * backend chosen for it the way the backend's service says
 * (sl_backend.forwarding, written by the control plane with the backend):
 *
 *   l2dsr  the frame goes back out with the backend's MAC as its destination
 *          and ours as its source; the IP packet is not touched
 *   ipip   IP-in-IP (encap.h)
 *   gue    IP in UDP (gue.h)
 *
 * The tunnelling modes first keep the packet within node.tunnel_mtu (pmtu.h).
 * Every path is map values the control plane wrote: no helper call but the
 * head (and, for an ICMP answer, the tail) adjustment.
 */
#ifndef SLUICE_FORWARD_H
#define SLUICE_FORWARD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "encap.h"
#include "gue.h"
#include "pmtu.h"

/* The frame, readdressed to the backend on this segment. */
static __always_inline int sl_l2dsr(const struct sl_packet *pkt, const struct sl_backend *be)
{
	const __u16 *mac = (const __u16 *)be->mac;
	struct sl_eth *eth = pkt->eth;

	if (!(mac[0] | mac[1] | mac[2]))
		return SL_RC_DROP(SL_DROP_NO_NEIGHBOUR);
	sl_mac_copy(eth->src, eth->dst);
	sl_mac_copy(eth->dst, mac);
	return XDP_TX;
}

/* Sends the packet on to the backend without a size check: for ICMP errors,
 * which are small and must not be answered with ICMP. */
static __always_inline int sl_forward_as_is(struct xdp_md *ctx, const struct sl_packet *pkt,
					    const struct sl_config *cfg, const struct sl_backend *be,
					    const struct sl_flow_key *key)
{
	if (be->forwarding == SL_FWD_L2DSR)
		return sl_l2dsr(pkt, be);
	if (be->forwarding == SL_FWD_GUE)
		return sl_encap_gue(ctx, pkt, cfg, be, key);
	return sl_encap(ctx, pkt, cfg, be);
}

/* Sends a client's packet to the backend. Returns XDP_TX (to the backend, or
 * an ICMP answer to the client), or a drop. */
static __always_inline int sl_forward(struct xdp_md *ctx, const struct sl_packet *pkt,
				      const struct sl_config *cfg, const struct sl_backend *be,
				      const struct sl_flow_key *key, struct sl_stats *st)
{
	int rc;

	if (be->forwarding == SL_FWD_L2DSR)
		return sl_l2dsr(pkt, be);
	if (cfg->tunnel_mtu) {
		rc = sl_pmtu_check(ctx, pkt, cfg, sl_tunnel_overhead(be), st);
		if (rc != SL_CONTINUE)
			return rc;
	}
	if (be->forwarding == SL_FWD_GUE)
		return sl_encap_gue(ctx, pkt, cfg, be, key);
	return sl_encap(ctx, pkt, cfg, be);
}

#endif /* SLUICE_FORWARD_H */
