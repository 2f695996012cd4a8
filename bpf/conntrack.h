/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains connection tracking: the lookup of a flow's backend and
 * service slot in sl_conntrack and the record of a flow Maglev placed. The
 * table is an LRU hash shared by all CPUs; a lookup refreshes the entry, and a
 * full table evicts its least recently used flows. A hit keeps the flow on
 * the backend it recorded even when that backend has since been removed or
 * drained, so established connections survive a change of the backend set.
 * It does not outlive its service: each entry carries the epoch its slot had
 * when it was recorded, and the control plane bumps the epoch when the slot is
 * freed or given another VIP, after which the entry is stale and the packet
 * goes through sl_vips again.
 *
 * What is written, and when, is the defence of the table: a packet that
 * anyone can forge does not write it. A SYN is placed by Maglev and leaves no
 * entry; the flow's first packet after it (the handshake's ACK) is placed by
 * Maglev again, on the same backend unless the table was switched in between,
 * and records it. A UDP flow's first packet goes to sl_ct_unconfirmed, its
 * second records it from there. So a flood of spoofed SYNs or one-packet UDP
 * flows writes nothing here, and cannot evict an established flow.
 */
#ifndef SLUICE_CONNTRACK_H
#define SLUICE_CONNTRACK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "maps.h"

_Static_assert(SL_MAX_VIPS <= 1 << 16, "a service slot fits sl_ct_entry.service_id");

/* What a trusted conntrack entry says about a flow, and the entry itself (a
 * NAT flow's translation lives there). */
struct sl_ct_flow {
	__u32 backend_id;
	__u32 service_id;
	struct sl_ct_entry *entry;
};

/* The agent's clock (seconds), or 0 while no agent ticks it. */
static __always_inline __u32 sl_clock_now(void)
{
	__u32 zero = 0, *now = bpf_map_lookup_elem(&sl_clock, &zero);

	return now ? *now : 0;
}

/* Marks a trusted entry seen now. Written only when the second changed, so a
 * busy flow dirties its entry once a second, not once a packet. */
static __always_inline void sl_ct_touch(struct sl_ct_entry *ct)
{
	__u32 now = sl_clock_now();

	if (ct->last_seen != now)
		ct->last_seen = now;
}

/* Returns 1 and fills *flow if the flow is known and its entry is current
 * (its slot's epoch has not moved since it was recorded); 0 for an unknown
 * flow or a stale entry. Adds the TCP flags the packet carries (tcp_seen) to
 * the entry, written only when one is new. Counts nothing: whether a miss is
 * counted depends on whether the packet turns out to be for a VIP at all. */
/* True when the entry was recorded under its slot's current epoch. */
static __always_inline int sl_ct_current(const struct sl_ct_entry *ct)
{
	__u32 service = ct->service_id, *epoch = bpf_map_lookup_elem(&sl_vip_epochs, &service);

	return epoch && (__u16)*epoch == ct->epoch;
}

static __always_inline int sl_ct_lookup(const struct sl_flow_key *key, __u8 tcp_seen,
					struct sl_ct_flow *flow)
{
	struct sl_ct_entry *ct = bpf_map_lookup_elem(&sl_conntrack, key);
	__u32 service, *epoch;

	if (!ct)
		return 0;
	service = ct->service_id;
	epoch = bpf_map_lookup_elem(&sl_vip_epochs, &service);
	if (!epoch || (__u16)*epoch != ct->epoch)
		return 0;
	sl_ct_touch(ct);
	if ((ct->tcp_seen | tcp_seen) != ct->tcp_seen)
		ct->tcp_seen |= tcp_seen;
	flow->backend_id = ct->backend_id;
	flow->service_id = service;
	flow->entry = ct;
	return 1;
}

/* Reports a new flow to the agent, which sends it to the peer balancers.
 * Without a wakeup: the agent drains the ring every batch interval, and a
 * wakeup per flow would cost an irq_work on this CPU. A full ring loses the
 * report, not the packet. */
static __always_inline void sl_ct_report(const struct sl_flow_key *key, const struct sl_ct_entry *entry,
					 struct sl_stats *st)
{
	struct sl_flow_event *ev = bpf_ringbuf_reserve(&sl_flow_events, sizeof(*ev), 0);

	if (!ev) {
		st->flow_events_lost++;
		return;
	}
	__builtin_memcpy(&ev->key, key, sizeof(ev->key));
	ev->backend_id = entry->backend_id;
	ev->service_id = entry->service_id;
	ev->epoch = entry->epoch;
	ev->nat = entry->nat;
	ev->snat_index = entry->snat_index;
	ev->snat_port = entry->snat_port;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* Stamps an entry this node writes: its slot's current epoch, now, and local
 * origin. */
static __always_inline void sl_ct_stamp(struct sl_ct_entry *entry)
{
	__u32 service_id = entry->service_id;
	__u32 *epoch = bpf_map_lookup_elem(&sl_vip_epochs, &service_id);

	entry->epoch = epoch ? *epoch : 0;
	entry->last_seen = sl_clock_now();
	entry->origin = SL_ORIGIN_LOCAL;
}

/* Records (or replaces) the flow's entry — backend, service slot and, for a
 * NAT flow, its translation, as the caller filled them in — under the slot's
 * current epoch, counts a new flow, and reports it when the node syncs with
 * peers. Should the update fail, the packet is still forwarded: its next
 * packet goes through Maglev again and most likely lands on the same
 * backend. */
static __always_inline void sl_ct_record(const struct sl_flow_key *key, struct sl_ct_entry *entry,
					 const struct sl_config *cfg, struct sl_stats *st)
{
	sl_ct_stamp(entry);
	bpf_map_update_elem(&sl_conntrack, key, entry, BPF_ANY);
	st->new_flows++;
	if (cfg->flags & SL_CFG_SYNC)
		sl_ct_report(key, entry, st);
}

/* Returns 1 and sets *backend_id if the UDP flow's first packet is held in
 * sl_ct_unconfirmed, current and younger than SL_CT_UNCONFIRMED_TTL: its
 * second packet goes where its first went, even across a table switch. */
static __always_inline int sl_ct_unconfirmed_lookup(const struct sl_flow_key *key, __u32 service_id,
						    __u32 *backend_id)
{
	struct sl_ct_entry *ct = bpf_map_lookup_elem(&sl_ct_unconfirmed, key);

	if (!ct || ct->service_id != service_id || !sl_ct_current(ct) ||
	    sl_clock_now() - ct->last_seen > SL_CT_UNCONFIRMED_TTL)
		return 0;
	*backend_id = ct->backend_id;
	return 1;
}

/* Holds a UDP flow's first packet's placement in sl_ct_unconfirmed. */
static __always_inline void sl_ct_hold(const struct sl_flow_key *key, struct sl_ct_entry *entry,
				       struct sl_stats *st)
{
	sl_ct_stamp(entry);
	bpf_map_update_elem(&sl_ct_unconfirmed, key, entry, BPF_ANY);
	st->ct_unconfirmed++;
}

#endif /* SLUICE_CONNTRACK_H */
