/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the Maglev lookup that places a new flow: the VIP's
 * current table is the inner array of sl_maglev at the service slot, and the
 * flow's slot in it is sl_flow_hash() modulo the table size M, two slots to an
 * entry (struct sl_maglev_pair). User space
 * builds a changed table aside and switches it in with one update of
 * sl_maglev, so a packet never sees a half-written table.
 */
#ifndef SLUICE_MAGLEV_H
#define SLUICE_MAGLEV_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "verdict.h"
#include "maps.h"
#include "hash.h"

/* Sets *backend_id to the backend Maglev gives the flow. Returns SL_CONTINUE,
 * or the NO_BACKEND drop when the service has no table or its slot names no
 * backend (every backend drained). */
static __always_inline int sl_maglev_pick(const struct sl_vip *vip,
					  const struct sl_flow_key *key, __u32 *backend_id)
{
	__u32 service = vip->id;
	__u32 size = vip->maglev_size;
	struct sl_maglev_pair *pair;
	__u32 slot, index, backend;
	void *table;

	table = bpf_map_lookup_elem(&sl_maglev, &service);
	if (!table || !size)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	slot = sl_flow_hash(key) % size;
	index = slot >> 1;
	pair = bpf_map_lookup_elem(table, &index);
	if (!pair)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	backend = pair->backend[slot & 1];
	if (backend == SL_NO_BACKEND)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	*backend_id = backend;
	return SL_CONTINUE;
}

#endif /* SLUICE_MAGLEV_H */
