/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the flow hash that places a new flow in a Maglev table:
 * Bob Jenkins' jhash_3words exactly as Linux's include/linux/jhash.h writes
 * it, applied to three words of the flow. The Swift control plane keeps a
 * bit-exact model of sl_flow_hash (SluiceCore), so any change here is a change
 * of the kernel/user contract.
 */
#ifndef SLUICE_HASH_H
#define SLUICE_HASH_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "lb_shared.h"

/* An arbitrary initial parameter, as in Linux. */
#define JHASH_INITVAL 0xdeadbeef

/* Bits of one port: where the destination port starts in word b. */
#define SL_PORT_BITS 16

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << (shift & 31)) | (word >> ((-shift) & 31));
}

/* Final mixing of three 32-bit values (a, b, c) into c. */
#define __jhash_final(a, b, c)                  \
	{                                       \
		c ^= b;                         \
		c -= rol32(b, 14);              \
		a ^= c;                         \
		a -= rol32(c, 11);              \
		b ^= a;                         \
		b -= rol32(a, 25);              \
		c ^= b;                         \
		c -= rol32(b, 16);              \
		a ^= c;                         \
		a -= rol32(c, 4);               \
		b ^= a;                         \
		b -= rol32(a, 14);              \
		c ^= b;                         \
		c -= rol32(b, 24);              \
	}

static __always_inline __u32 __jhash_nwords(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += initval;
	b += initval;
	c += initval;

	__jhash_final(a, b, c);

	return c;
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	return __jhash_nwords(a, b, c, initval + JHASH_INITVAL + (3 << 2));
}

/* Mixing of three 32-bit values, as in Linux. */
#define __jhash_mix(a, b, c)                    \
	{                                       \
		a -= c; a ^= rol32(c, 4);  c += b; \
		b -= a; b ^= rol32(a, 6);  a += c; \
		c -= b; c ^= rol32(b, 8);  b += a; \
		a -= c; a ^= rol32(c, 16); c += b; \
		b -= a; b ^= rol32(a, 19); a += c; \
		c -= b; c ^= rol32(b, 4);  b += a; \
	}

/* Linux's jhash2(words, 4, initval), unrolled: one mix of the first three
 * words, the fourth in the final mix. */
static __always_inline __u32 jhash_4words(const __u32 *words, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (4 << 2) + initval;
	a += words[0];
	b += words[1];
	c += words[2];
	__jhash_mix(a, b, c);
	a += words[3];
	__jhash_final(a, b, c);
	return c;
}

/*
 * The hash of a flow: jhash_3words(a, b, c, SL_HASH_SEED) with
 *   a = for IPv4, the source address as loaded from the packet, no byte
 *       swap; for IPv6, jhash2 of its four 32-bit words with SL_HASH_SEED,
 *       so every bit of all 16 bytes moves the slot (a fold by XOR would let
 *       sources that differ in two words the same way collide);
 *   b = the first four bytes of the TCP/UDP header as one 32-bit word:
 *       sport | dport << 16 with both ports in network order;
 *   c = the IP protocol number.
 * The client's address and port are enough to spread flows; the destination
 * is the VIP, the same for the whole table.
 */
static __always_inline __u32 sl_flow_hash(const struct sl_flow_key *key)
{
	__u32 a = key->family == SL_FAMILY_V6 ? jhash_4words(key->src, SL_HASH_SEED) : key->src[0];
	__u32 b = (__u32)key->sport | ((__u32)key->dport << SL_PORT_BITS);

	return jhash_3words(a, b, key->proto, SL_HASH_SEED);
}

/*
 * The bit of a VIP key in the prefilter sl_vip_filter: the key's words folded
 * by XOR (port and protocol side by side in one word), then Fibonacci hashing
 * (one multiply; the top bits depend on every input bit). Cheap on purpose:
 * it runs for every TCP/UDP packet, and a collision only costs the lookups
 * the prefilter would have saved. SluiceCore.VIPFilter models it.
 */
static __always_inline __u32 sl_vip_filter_bit(const struct sl_vip_key *key)
{
	__u32 x = key->addr[0] ^ key->addr[1] ^ key->addr[2] ^ key->addr[3] ^
		  ((__u32)key->port | ((__u32)key->proto << SL_PORT_BITS));

	return (x * SL_VIP_FILTER_MULT) >> (32 - SL_VIP_FILTER_BITS);
}

#endif /* SLUICE_HASH_H */
