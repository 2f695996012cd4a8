/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the Internet checksum (RFC 1071) of an IPv4 header with
 * no options, as the outer header of a 4in4 tunnel needs it: an unrolled sum
 * of its ten 16-bit words folded to 16 bits. The one's-complement sum does not
 * depend on byte order, so the words are summed as they lie in memory and the
 * result is stored the same way.
 */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

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

#endif /* SLUICE_CSUM_H */
