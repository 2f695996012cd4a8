/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the BTF definitions of every map the balancer shares with
 * the control plane. Each map is pinned by name (LIBBPF_PIN_BY_NAME) under the
 * loader's pin root, so the data plane keeps its state with no Swift process
 * alive. Keys and values are the structs of lb_shared.h and nothing else.
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"

/* The services: (VIP address, port, protocol, family) -> service slot and M. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SL_MAX_VIPS);
	__type(key, struct sl_vip_key);
	__type(value, struct sl_vip);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_vips SEC(".maps");

/* The VIP prefilter: a bitmap over sl_vip_filter_bit() of every VIP key
 * (hash.h), so that a packet for no VIP passes after one inlined array lookup
 * instead of a hash-map lookup. A set bit only means "maybe a VIP": sl_vips
 * decides. The control plane sets a VIP's bit before it publishes the VIP and
 * clears bits only after the VIPs that needed them are withdrawn, so a clear
 * bit is never a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_vip_filter SEC(".maps");

/* The epoch of each service slot: bumped by the control plane when the slot
 * is freed or its VIP key changes (never for a backend or weight change), so
 * conntrack entries recorded under an older epoch stop being trusted without
 * a walk of the table. An array, so the lookup is inlined. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_vip_epochs SEC(".maps");

/* One Maglev lookup table: slot pair -> two backend ids (or SL_NO_BACKEND),
 * struct sl_maglev_pair. The template only fixes the key and value sizes:
 * BPF_F_INNER_MAP lets user space install tables of any prime size M, made aside and switched in with one
 * update of sl_maglev. BPF_F_MMAPABLE lets user space fill a new table with
 * one copy through a mapping instead of a syscall's work per slot. */
struct sl_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (SL_MAGLEV_DEFAULT_SIZE + 1) / 2);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	/* Sizes, not __type: clang leaves a struct reached only through the
	 * template's pointer as a forward declaration libbpf cannot size, and
	 * the kernel refuses BTF for a key without BTF for the value. */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct sl_maglev_pair));
};

/* The Maglev tables: service slot -> that service's current table. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SL_MAX_VIPS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct sl_maglev_table); /* must come last: a flexible array */
} sl_maglev SEC(".maps");

/* The backends, indexed by backend id; family 0 marks a slot never used. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct sl_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_backends SEC(".maps");

/* Connection tracking: 5-tuple -> backend id, service slot and the slot's
 * epoch. LRU, so a full table forgets its oldest flows; user space may resize
 * it before load. Looked up before sl_vips for every packet but a SYN, so an
 * established flow costs one hash lookup, not two. Only flows that proved
 * themselves are written: a TCP flow by its first packet after the SYN, a UDP
 * flow by its second (sl_ct_unconfirmed holds its first). A NAT flow needs its
 * translation at once and is written by its first packet, at most
 * nat_flow_budget a second per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SL_CT_DEFAULT_SIZE);
	__type(key, struct sl_flow_key);
	__type(value, struct sl_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_conntrack SEC(".maps");

/* UDP flows seen once (struct sl_ct_entry): a flow's first packet is held
 * here, its second records it in sl_conntrack on the same backend. Small and
 * LRU, sized by user space, so a flood of one-packet flows (spoofed sources)
 * churns this table and never pushes established flows out of sl_conntrack.
 * An entry older than SL_CT_UNCONFIRMED_TTL, or of an older epoch, is not
 * trusted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SL_CT_UNCONFIRMED_DEFAULT_SIZE);
	__type(key, struct sl_flow_key);
	__type(value, struct sl_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_ct_unconfirmed SEC(".maps");

/* Each CPU's count of new NAT translations in the current second, against
 * sl_config.nat_flow_budget. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_nat_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_nat_budget SEC(".maps");

/* The translations seen from the backend's side (struct sl_nat_entry), keyed
 * by the backend's reply as it arrives: one per nat or fullnat flow, created
 * with the flow's sl_conntrack entry and removed with it by the agent. LRU and
 * sized with sl_conntrack by user space. A full-NAT source port is in use for
 * a backend port exactly while its entry exists. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SL_CT_DEFAULT_SIZE);
	__type(key, struct sl_flow_key);
	__type(value, struct sl_nat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_nat SEC(".maps");

/* Full NAT's source addresses and port range: index 0 for IPv4, 1 for IPv6. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sl_snat_pool);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_snat_pools SEC(".maps");

/* New flows for the agent to send to its peers (struct sl_flow_event), when
 * SL_CFG_SYNC is set. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SL_FLOW_EVENTS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_flow_events SEC(".maps");

/* The agent's clock in seconds, for conntrack's last_seen (see lb_shared.h).
 * An array, so its lookup is inlined by the verifier: no helper call. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_clock SEC(".maps");

/* Sync peers by origin index (see SL_MAX_PEERS): for lbctl flows only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_PEERS + 1);
	__type(key, __u32);
	__type(value, struct sl_addr_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_peers SEC(".maps");

/* The node's settings (tunnel sources, next-hop MAC): an array of one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_config SEC(".maps");

/* The node-wide counters, per CPU: verdicts, flows, drops by reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_stats SEC(".maps");

/* Packets and bytes per service slot, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct sl_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_vip_stats SEC(".maps");

/* Packets and bytes per backend id, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct sl_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_backend_stats SEC(".maps");

/* Control-plane metadata per service slot (name, VIP, generation). The data
 * plane never reads it; it is defined here so that it is created and pinned
 * with the rest of the maps. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct sl_service_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_services SEC(".maps");

#endif /* SLUICE_MAPS_H */
