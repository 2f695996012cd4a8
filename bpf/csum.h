/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the Internet checksum (RFC 1071): of an IPv4 header with
 * no options, as the outer header of a 4in4 tunnel needs it (an unrolled sum
 * of its ten 16-bit words folded to 16 bits), and the pieces the other
 * checksums are built from: 32-bit words summed into 64 bits, folded at the
 * end. The one's-complement sum does not depend on byte order, so words are
 * summed as they lie in memory, constants are added in network order, and the
 * result is stored as it comes out.
 */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include "lb_shared.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SL_CSUM_HALF_BITS 16
#define SL_CSUM_HALF_MASK 0xffff

/* Folds a 32-bit sum of 16-bit words and complements it. Two folds carry any
 * sum of up to 0x10000 words. */
static __always_inline __sum16 sl_csum_fold(__u32 sum)
{
	sum = (sum & SL_CSUM_HALF_MASK) + (sum >> SL_CSUM_HALF_BITS);
	sum = (sum & SL_CSUM_HALF_MASK) + (sum >> SL_CSUM_HALF_BITS);
	return (__sum16)~sum;
}

/* The header checksum of an option-less IPv4 header whose check field is 0. */
static __always_inline __sum16 sl_ipv4_csum(const struct iphdr *iph)
{
	const __u16 *word = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (__u32 i = 0; i < sizeof(*iph) / sizeof(*word); i++)
		sum += word[i];
	return sl_csum_fold(sum);
}

/* Folds a 64-bit sum of 32-bit words and complements it: the checksum. */
static __always_inline __sum16 sl_csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffffULL) + (sum >> 32);
	sum = (sum & 0xffffffffULL) + (sum >> 32);
	return sl_csum_fold((__u32)sum);
}

/* The sum of an IPv6 address's four words. */
static __always_inline __u64 sl_csum_addr6(const __u32 *addr)
{
	return (__u64)addr[0] + addr[1] + addr[2] + addr[3];
}

/* The pseudo-header of an upper-layer checksum (RFC 8200 8.1, RFC 793):
 * both addresses, the upper-layer length and the protocol. For IPv4 only
 * src[0] and dst[0] count. */
static __always_inline __u64 sl_csum_pseudo(__u8 family, const __u32 *src, const __u32 *dst,
					    __u32 len, __u8 proto)
{
	__u64 sum = bpf_htonl(len) + (__u64)bpf_htonl(proto);

	if (family == SL_FAMILY_V4)
		return sum + src[0] + dst[0];
	return sum + sl_csum_addr6(src) + sl_csum_addr6(dst);
}

/* Replaces the 16-bit word old with new in a checksum (RFC 1624, eqn. 3);
 * old and new as they lie in memory. */
static __always_inline __sum16 sl_csum_replace16(__sum16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32)new;

	return sl_csum_fold(sum);
}

/* Incremental updates (RFC 1624, eqn. 3) of any number of words at once: the
 * changes are summed into a 64-bit difference, then applied to each checksum
 * that covers them. A 32-bit word counts as its two 16-bit halves, since the
 * one's-complement sum is the same modulo 0xffff. */
static __always_inline __u64 sl_csum_diff32(__u32 old, __u32 new)
{
	return (__u64)(__u32)~old + new;
}

static __always_inline __u64 sl_csum_diff16(__u16 old, __u16 new)
{
	return (__u64)(__u16)~old + new;
}

static __always_inline __sum16 sl_csum_apply(__sum16 check, __u64 diff)
{
	return sl_csum_fold64((__u16)~check + diff);
}

#endif /* SLUICE_CSUM_H */
