/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains what keeps a tunnelled packet within node.tunnel_mtu:
 * the MSS option of a TCP SYN lowered to what fits once encapsulated, and for
 * a packet that does not fit, the ICMP "fragmentation needed" (IPv4, DF set)
 * or ICMPv6 "packet too big" answer that tells the client the MTU to use, sent
 * from the VIP back out of the interface it came in on (XDP_TX), as a router
 * on the path would. An IPv4 packet without DF that does not fit cannot be
 * fragmented here and is dropped (TOO_BIG). The answer is built in place:
 *
 *   Ethernet (back to the sender's MAC, from ours) [VLAN tag, as received]
 *   IPv4 or IPv6 header (VIP -> client)
 *   ICMP type 3 code 4 / ICMPv6 type 2, with the MTU
 *   the first SL_ICMP_QUOTE bytes of the packet (its IP and L4 headers)
 *
 * The frame grows at its head by the new IP and ICMP headers, which puts the
 * old IP packet right behind them, and its tail is cut after the quote.
 */
#ifndef SLUICE_PMTU_H
#define SLUICE_PMTU_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"
#include "encap.h"

#define SL_TCP_OPT_EOL 0
#define SL_TCP_OPT_NOP 1
#define SL_TCP_OPT_MSS 2
#define SL_TCP_OPT_MSS_LEN 4
/* Options looked at before giving up. Every stack we know of sends MSS first
 * in a SYN (Linux, Windows, the BSDs, macOS), some after a NOP or two; a
 * longer walk makes the verifier's work explode with the paths into it. */
#define SL_TCP_MSS_SCAN 6
#define SL_TCP_OPT_OFFSET_MASK 0x3f  /* keeps the verifier's view of an option offset < 64 */
#define SL_IPV6_MIN_MTU 1280         /* RFC 8200: no link is smaller; ICMPv6 never asks for less */
/* Bytes of the offending packet an ICMP error quotes: its IP header with
 * options and its TCP header with options fit (60 + 60). A multiple of 4, as
 * bpf_csum_diff wants; every packet that is too big is longer. */
#define SL_ICMP_QUOTE 128
#define SL_ICMP_HLEN sizeof(struct sl_icmp_hdr)

/* Bytes of the link-layer header. */
static __always_inline __u32 sl_l2_len(const struct sl_packet *pkt)
{
	return pkt->vlan ? sizeof(struct sl_eth) + sizeof(struct sl_vlan_hdr) : sizeof(struct sl_eth);
}

/* Bytes the mode adds in front of the packet. */
static __always_inline __u32 sl_tunnel_overhead(const struct sl_backend *be)
{
	__u32 outer = be->family == SL_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);

	return be->forwarding == SL_FWD_GUE ? outer + sizeof(struct udphdr) : outer;
}

/* The two bytes of the MSS as a word of the TCP checksum: one at an odd
 * offset from the TCP header's start counts as the low byte. */
static __always_inline __u16 sl_mss_word(const __u8 *value, __u32 odd)
{
	return odd ? (__u16)(value[1] | value[0] << 8) : (__u16)(value[0] | value[1] << 8);
}

/* Lowers the MSS option of a SYN to max_mss when it is larger, fixing the TCP
 * checksum incrementally. The first SL_TCP_MSS_SCAN options are walked as RFC
 * 9293 3.2 lays them out; a malformed list is left as it is. */
static __always_inline void sl_clamp_mss(struct xdp_md *ctx, const struct sl_packet *pkt,
					 __u32 max_mss, struct sl_stats *st)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	__u8 *opts = (__u8 *)(tcp + 1), *opt;
	__u32 len, off = 0, old;
	__u16 before, after;

	if ((void *)(tcp + 1) > end)
		return;
	len = tcp->doff * SL_IHL_UNIT - sizeof(*tcp);
	for (int i = 0; i < SL_TCP_MSS_SCAN; i++) {
		if (off >= len)
			return;
		opt = opts + (off & SL_TCP_OPT_OFFSET_MASK);
		if ((void *)(opt + 2) > end)
			return;
		if (opt[0] == SL_TCP_OPT_EOL)
			return;
		if (opt[0] == SL_TCP_OPT_NOP) {
			off++;
			continue;
		}
		if (opt[1] < 2)
			return;
		if (opt[0] == SL_TCP_OPT_MSS) {
			if (opt[1] != SL_TCP_OPT_MSS_LEN || (void *)(opt + SL_TCP_OPT_MSS_LEN) > end)
				return;
			old = (__u32)opt[2] << 8 | opt[3];
			if (old <= max_mss)
				return;
			before = sl_mss_word(opt + 2, off & 1);
			opt[2] = max_mss >> 8;
			opt[3] = max_mss & 0xff;
			after = sl_mss_word(opt + 2, off & 1);
			tcp->check = sl_csum_replace16(tcp->check, before, after);
			st->mss_clamped++;
			return;
		}
		off += opt[1];
	}
}

/* The checksum of an ICMP message of SL_ICMP_HLEN + SL_ICMP_QUOTE bytes at
 * icmp (checked to lie in the frame), plus `sum` (the ICMPv6 pseudo-header). */
static __always_inline __sum16 sl_icmp_csum(void *icmp, __u64 sum)
{
	__s64 part = bpf_csum_diff(NULL, 0, icmp, SL_ICMP_HLEN + SL_ICMP_QUOTE, 0);

	return sl_csum_fold64(sum + (__u32)part);
}

/* Cuts the frame after the quote; the head has already grown by `grown`.
 * Returns the ICMP header with the message checked to lie in the frame, or
 * NULL. l2_len is the link-layer header's length (14, or 18 with a tag). */
static __always_inline void *sl_icmp_trim(struct xdp_md *ctx, const struct sl_packet *pkt,
					  __u32 l2_len, __u32 ip_hlen)
{
	int keep = l2_len + ip_hlen + SL_ICMP_HLEN + SL_ICMP_QUOTE;
	void *data, *data_end, *icmp;

	if (bpf_xdp_adjust_tail(ctx, keep - (int)(pkt->frame_len + ip_hlen + SL_ICMP_HLEN)))
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	icmp = data + l2_len + ip_hlen;
	if (icmp + SL_ICMP_HLEN + SL_ICMP_QUOTE > data_end)
		return NULL;
	return icmp;
}

static __always_inline int sl_icmp4_too_big(struct xdp_md *ctx, const struct sl_packet *pkt,
					    __u32 mtu)
{
	const struct iphdr *in = pkt->l3;
	__u32 l2_len = sl_l2_len(pkt);
	__be32 client = in->saddr, vip = in->daddr;
	__u16 sender[SL_MAC_WORDS];
	struct sl_icmp_hdr *icmp;
	struct iphdr *iph;

	sl_mac_copy(sender, pkt->eth->src);
	iph = sl_encap_push_l2(ctx, pkt, sender, sizeof(*iph) + SL_ICMP_HLEN, bpf_htons(ETH_P_IP));
	if (!iph)
		return SL_RC_DROP(SL_DROP_TOO_BIG);
	icmp = sl_icmp_trim(ctx, pkt, l2_len, sizeof(*iph));
	if (!icmp)
		return SL_RC_DROP(SL_DROP_TOO_BIG);
	iph = (void *)icmp - sizeof(*iph);
	sl_write_outer_ipv4(iph, 0, SL_ICMP_HLEN + SL_ICMP_QUOTE, IPPROTO_ICMP, 0, vip, client);
	icmp->type = SL_ICMP_DEST_UNREACH;
	icmp->code = SL_ICMP_FRAG_NEEDED;
	icmp->check = 0;
	icmp->rest = bpf_htonl(mtu); /* 16 unused bits, then the next-hop MTU (RFC 1191) */
	icmp->check = sl_icmp_csum(icmp, 0);
	return XDP_TX;
}

static __always_inline int sl_icmp6_too_big(struct xdp_md *ctx, const struct sl_packet *pkt,
					    __u32 mtu)
{
	const struct ipv6hdr *in = pkt->l3;
	__u32 l2_len = sl_l2_len(pkt);
	__u32 client[4], vip[4];
	__u16 sender[SL_MAC_WORDS];
	struct sl_icmp_hdr *icmp;
	struct ipv6hdr *ip6h;
	__u64 pseudo;

	for (int i = 0; i < 4; i++) {
		client[i] = in->saddr.in6_u.u6_addr32[i];
		vip[i] = in->daddr.in6_u.u6_addr32[i];
	}
	sl_mac_copy(sender, pkt->eth->src);
	ip6h = sl_encap_push_l2(ctx, pkt, sender, sizeof(*ip6h) + SL_ICMP_HLEN, bpf_htons(ETH_P_IPV6));
	if (!ip6h)
		return SL_RC_DROP(SL_DROP_TOO_BIG);
	icmp = sl_icmp_trim(ctx, pkt, l2_len, sizeof(*ip6h));
	if (!icmp)
		return SL_RC_DROP(SL_DROP_TOO_BIG);
	ip6h = (void *)icmp - sizeof(*ip6h);
	sl_write_outer_ipv6(ip6h, 0, SL_ICMP_HLEN + SL_ICMP_QUOTE, IPPROTO_ICMPV6, vip, client);
	icmp->type = SL_ICMPV6_PKT_TOOBIG;
	icmp->code = 0;
	icmp->check = 0;
	icmp->rest = bpf_htonl(mtu < SL_IPV6_MIN_MTU ? SL_IPV6_MIN_MTU : mtu);
	pseudo = sl_csum_pseudo(SL_FAMILY_V6, vip, client, SL_ICMP_HLEN + SL_ICMP_QUOTE, IPPROTO_ICMPV6);
	icmp->check = sl_icmp_csum(icmp, pseudo);
	return XDP_TX;
}

/* A packet that will not fit once `overhead` bytes go in front of it: answer
 * it (counted), or drop an IPv4 one without DF. */
static __always_inline int sl_too_big(struct xdp_md *ctx, const struct sl_packet *pkt,
				      __u32 mtu, struct sl_stats *st)
{
	int rc;

	if (!pkt->df)
		return SL_RC_DROP(SL_DROP_TOO_BIG);
	if (pkt->family == SL_FAMILY_V4)
		rc = sl_icmp4_too_big(ctx, pkt, mtu);
	else
		rc = sl_icmp6_too_big(ctx, pkt, mtu);
	if (rc == XDP_TX)
		st->icmp_too_big++;
	return rc;
}

/* Keeps the packet within cfg->tunnel_mtu once `overhead` bytes are added:
 * SL_CONTINUE (a SYN's MSS lowered when needed), or the fate of a packet that
 * is too big. */
static __always_inline int sl_pmtu_check(struct xdp_md *ctx, const struct sl_packet *pkt,
					 const struct sl_config *cfg, __u32 overhead,
					 struct sl_stats *st)
{
	__u32 room, ip_hlen, tcp_hlen = sizeof(struct tcphdr);

	if (cfg->tunnel_mtu <= overhead)
		return SL_CONTINUE; /* 0: no limit (the control plane never writes less) */
	room = cfg->tunnel_mtu - overhead;
	if (pkt->ip_len > room)
		return sl_too_big(ctx, pkt, room, st);
	ip_hlen = pkt->family == SL_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	if (pkt->tcp_syn && room > ip_hlen + tcp_hlen)
		sl_clamp_mss(ctx, pkt, room - ip_hlen - tcp_hlen, st);
	return SL_CONTINUE;
}

#endif /* SLUICE_PMTU_H */
