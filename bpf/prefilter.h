/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the VIP prefilter: the test of a packet's destination
 * against the bitmap sl_vip_filter before any hash-map lookup. Most traffic
 * through a balancer's interface is for no VIP (replies, management, other
 * hosts' traffic), and an ARRAY lookup is inlined by the verifier where a
 * HASH lookup is a helper call, so a clear bit sends such a packet on with
 * nothing but the parse, the bit's hash and one load. A set bit may be a
 * collision; sl_vips stays the authority.
 */
#ifndef SLUICE_PREFILTER_H
#define SLUICE_PREFILTER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"
#include "maps.h"
#include "hash.h"

_Static_assert(SL_VIP_FILTER_WORDS * SL_VIP_FILTER_WORD_BITS == 1u << SL_VIP_FILTER_BITS,
	       "sl_vip_filter holds exactly the bits sl_vip_filter_bit() can name");

/* Returns 1 if the key may be a VIP (its bit is set), 0 if it is none. */
static __always_inline int sl_vip_filter_test(const struct sl_vip_key *key)
{
	__u32 bit = sl_vip_filter_bit(key);
	__u32 word = bit / SL_VIP_FILTER_WORD_BITS;
	__u64 *bits = bpf_map_lookup_elem(&sl_vip_filter, &word);

	/* A missing word cannot happen (an array has every index below
	 * max_entries); if it did, let sl_vips decide. */
	if (!bits)
		return 1;
	return (*bits >> (bit % SL_VIP_FILTER_WORD_BITS)) & 1;
}

#endif /* SLUICE_PREFILTER_H */
