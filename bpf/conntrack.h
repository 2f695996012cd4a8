/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains connection tracking: the lookup of a flow's backend in
 * sl_conntrack and the record of a flow Maglev has just placed. The table is
 * an LRU hash shared by all CPUs; a lookup refreshes the entry, and a full
 * table evicts its least recently used flows. A hit keeps the flow on the
 * backend it recorded even when that backend has since been removed or
 * drained, so established connections survive a change of the backend set.
 */
#ifndef SLUICE_CONNTRACK_H
#define SLUICE_CONNTRACK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "maps.h"

/* Sets *backend_id and returns 1 if the flow is known, else returns 0. Counts
 * the hit or the miss. */
static __always_inline int sl_ct_lookup(const struct sl_flow_key *key, struct sl_stats *st,
					__u32 *backend_id)
{
	struct sl_ct_entry *ct = bpf_map_lookup_elem(&sl_conntrack, key);

	if (!ct) {
		st->ct_misses++;
		return 0;
	}
	st->ct_hits++;
	*backend_id = ct->backend_id;
	return 1;
}

/* Records (or replaces) the flow's backend and counts a new flow. Should the
 * update fail, the packet is still forwarded: its next packet goes through
 * Maglev again and most likely lands on the same backend. */
static __always_inline void sl_ct_record(const struct sl_flow_key *key, __u32 backend_id,
					 struct sl_stats *st)
{
	struct sl_ct_entry entry = { .backend_id = backend_id, .flags = 0 };

	bpf_map_update_elem(&sl_conntrack, key, &entry, BPF_ANY);
	st->new_flows++;
}

#endif /* SLUICE_CONNTRACK_H */
