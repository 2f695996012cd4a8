/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the BTF definitions of the maps of the backend-side
 * decapsulation program (decap.bpf.c). Like the balancer's maps (maps.h) they
 * are pinned by name (LIBBPF_PIN_BY_NAME) under the loader's pin root, beside
 * the balancer's when both run on one host. Keys and values are the structs of
 * lb_shared.h and nothing else.
 */
#ifndef SLUICE_DECAP_MAPS_H
#define SLUICE_DECAP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"

/* Outer destinations that are this host: a tunnel to any other address is
 * left alone. The value is unused (1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SL_MAX_DECAP_ADDRS);
	__type(key, struct sl_addr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_decap_locals SEC(".maps");

/* Inner destinations that are VIPs served here (configured on lo). The value
 * is unused (1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SL_MAX_DECAP_ADDRS);
	__type(key, struct sl_addr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_decap_vips SEC(".maps");

/* What lbctl decap attach configured: the GUE port to strip. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_decap_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_decap_config SEC(".maps");

/* The program's counters, per CPU: an array of one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_decap_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_decap_stats SEC(".maps");

#endif /* SLUICE_DECAP_MAPS_H */
