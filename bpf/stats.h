/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the counters of the balancer: the node-wide struct
 * sl_stats, fetched once per packet and passed to every stage; the per-VIP and
 * per-backend packet and byte counters; and record_action(), the single exit
 * that turns a stage's return code (verdict.h) into the XDP verdict and counts
 * it. All maps are per CPU, so plain increments need no atomics.
 */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "verdict.h"
#include "maps.h"

/* This CPU's node-wide counters. Never NULL in practice (an array always has
 * its index 0), but the verifier wants the check. */
static __always_inline struct sl_stats *sl_stats_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sl_stats, &zero);
}

static __always_inline void sl_counter_add(void *map, __u32 index, __u32 bytes)
{
	struct sl_counter *cnt = bpf_map_lookup_elem(map, &index);

	if (cnt) {
		cnt->packets++;
		cnt->bytes += bytes;
	}
}

/* One packet of `bytes` (the frame before encapsulation) for a VIP and the
 * backend chosen for it. */
static __always_inline void sl_count_traffic(__u32 vip_id, __u32 backend_id, __u32 bytes)
{
	sl_counter_add(&sl_vip_stats, vip_id, bytes);
	sl_counter_add(&sl_backend_stats, backend_id, bytes);
}

/* One reply of `bytes` a backend sent, translated back to the client. */
static __always_inline void sl_count_reply(__u32 vip_id, __u32 backend_id, __u32 bytes)
{
	struct sl_counter *cnt = bpf_map_lookup_elem(&sl_vip_stats, &vip_id);

	if (cnt) {
		cnt->reply_packets++;
		cnt->reply_bytes += bytes;
	}
	cnt = bpf_map_lookup_elem(&sl_backend_stats, &backend_id);
	if (cnt) {
		cnt->reply_packets++;
		cnt->reply_bytes += bytes;
	}
}

/* The single exit: a drop code becomes XDP_DROP and counts its reason; every
 * verdict is counted. */
static __always_inline int record_action(struct sl_stats *st, int rc)
{
	__u32 action = rc;

	if (SL_RC_IS_DROP(rc)) {
		__u32 reason = SL_RC_REASON(rc);

		if (reason < SL_DROP__MAX)
			st->drops[reason]++;
		action = XDP_DROP;
	} else if (rc < 0) {
		/* SL_CONTINUE never leaves the dispatch; if it did, it is a bug. */
		action = XDP_ABORTED;
	}
	if (action < SL_VERDICTS)
		st->verdicts[action]++;
	return action;
}

#endif /* SLUICE_STATS_H */
