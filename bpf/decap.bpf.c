// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * This file contains the backend side of direct server return: the XDP entry
 * point sl_decap, which strips the tunnel header the balancer added so the
 * kernel delivers the inner packet to the VIP configured on this host (the
 * kernel here may have no ipip/ip6_tunnel/fou driver at all). It handles
 *
 *   Ethernet [one VLAN tag] outer IPv4 (protocol 4)                   inner IPv4
 *   Ethernet [one VLAN tag] outer IPv6 (next header 41, 4)            inner IPv6, IPv4
 *   Ethernet [one VLAN tag] outer IPv4/IPv6 + UDP to the GUE port     inner IPv4, IPv6
 *
 * (GUE variant 1, "direct IP encapsulation": the inner packet follows the UDP
 * header, its version nibble says which family; sl_decap_config.gue_port, 0 =
 * GUE off), and only when the outer destination is in sl_decap_locals and the
 * inner destination is in sl_decap_vips. The outer headers are removed by
 * moving the link-layer header forward over them (the inner ethertype is
 * written in) and moving the head of the frame; the inner packet is not
 * touched, so its checksums stay valid. Every packet is counted once in
 * sl_decap_stats:
 *
 *   decapsulated  stripped (either kind), XDP_PASS
 *   not_local     a tunnel to another host's address: XDP_PASS untouched
 *   not_vip       a tunnel for a destination that is no VIP here: XDP_PASS untouched
 *   malformed     a tunnel to us whose inner header is impossible or cut, or a
 *                 GUE datagram to us whose UDP length is not its IP payload's or
 *                 whose inner version is neither 4 nor 6: XDP_DROP
 *   passed        anything else (not a tunnel; UDP to another port; outer IPv4
 *                 with options or fragmented; a bad outer header): XDP_PASS untouched
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "parse.h"
#include "decap_maps.h"

/* What became of a packet: which counter moves, and so the verdict. The
 * parsing stages return one of these, or SL_DECAP_CONTINUE to go on. */
enum sl_decap_outcome {
	SL_DECAP_STRIPPED = 0,
	SL_DECAP_NOT_LOCAL,
	SL_DECAP_NOT_VIP,
	SL_DECAP_MALFORMED,
	SL_DECAP_PASSED,
};
#define SL_DECAP_CONTINUE (-1)

/* The tunnel as the outer parser found it. */
struct sl_tunnel {
	__u32 outer_len;     /* bytes of the outer IP (and UDP) header, removed by decap */
	__u32 payload_len;   /* bytes the outer headers say they carry: the inner packet's room */
	__u8 inner_family;   /* enum sl_family */
};

static __always_inline void sl_addr_key_v4(struct sl_addr_key *key, __be32 addr)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->addr[0] = addr;
	key->family = SL_FAMILY_V4;
}

static __always_inline void sl_addr_key_v6(struct sl_addr_key *key, const struct in6_addr *addr)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->addr[0] = addr->in6_u.u6_addr32[0];
	key->addr[1] = addr->in6_u.u6_addr32[1];
	key->addr[2] = addr->in6_u.u6_addr32[2];
	key->addr[3] = addr->in6_u.u6_addr32[3];
	key->family = SL_FAMILY_V6;
}

/* The outer destination is this host, or the tunnel is not ours to strip. */
static __always_inline int sl_decap_local(const struct sl_addr_key *dst)
{
	return bpf_map_lookup_elem(&sl_decap_locals, dst) ? SL_DECAP_CONTINUE : SL_DECAP_NOT_LOCAL;
}

/* UDP after the outer header (the cursor is on it; t holds the outer header's
 * length and payload). A datagram to the GUE port is a tunnel: to us, its UDP
 * length must be the IP payload's and the first nibble after it an IP version.
 * The outer UDP checksum is not verified (IPv4 outers carry 0): the inner
 * packet keeps its own checksums, which the stack checks after decap. */
static __always_inline int sl_decap_gue(struct sl_cursor *c, struct sl_tunnel *t, const struct sl_addr_key *dst)
{
	struct udphdr *udp = c->pos;
	const struct sl_decap_config *cfg;
	__u32 zero = 0;
	__u8 *first;
	int rc;

	if (t->payload_len < sizeof(*udp) || (void *)(udp + 1) > c->end)
		return SL_DECAP_PASSED;
	cfg = bpf_map_lookup_elem(&sl_decap_config, &zero);
	if (!cfg || !cfg->gue_port || udp->dest != cfg->gue_port)
		return SL_DECAP_PASSED;
	rc = sl_decap_local(dst);
	if (rc != SL_DECAP_CONTINUE)
		return rc;
	if (bpf_ntohs(udp->len) != t->payload_len)
		return SL_DECAP_MALFORMED;
	first = (void *)(udp + 1);
	if ((void *)(first + 1) > c->end)
		return SL_DECAP_MALFORMED;
	/* Variant 0 (a GUE header, first nibble 0) and anything else: not what the balancer sends. */
	if (*first >> 4 == SL_IPV4_VERSION)
		t->inner_family = SL_FAMILY_V4;
	else if (*first >> 4 == SL_IPV6_VERSION)
		t->inner_family = SL_FAMILY_V6;
	else
		return SL_DECAP_MALFORMED;
	t->outer_len += sizeof(*udp);
	t->payload_len -= sizeof(*udp);
	c->pos = first;
	return SL_DECAP_CONTINUE;
}

/* An outer IPv4 header carrying IPv4 (protocol 4) or GUE to one of our
 * addresses. Options and fragments are not tunnels this program handles: the
 * kernel gets them as they are, like any outer header that does not add up. */
static __always_inline int sl_decap_outer_ipv4(struct sl_cursor *c, struct sl_tunnel *t)
{
	struct iphdr *iph = c->pos;
	struct sl_addr_key key;
	__u32 tot_len;

	if ((void *)(iph + 1) > c->end)
		return SL_DECAP_PASSED;
	if (iph->version != SL_IPV4_VERSION || iph->ihl != SL_IPV4_MIN_IHL)
		return SL_DECAP_PASSED;
	if (iph->protocol != IPPROTO_IPIP && iph->protocol != IPPROTO_UDP)
		return SL_DECAP_PASSED;
	if (iph->frag_off & bpf_htons(SL_IP_MF | SL_IP_OFFSET))
		return SL_DECAP_PASSED;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < sizeof(*iph) || c->pos + tot_len > c->end)
		return SL_DECAP_PASSED;

	sl_addr_key_v4(&key, iph->daddr);
	t->outer_len = sizeof(*iph);
	t->payload_len = tot_len - sizeof(*iph);
	c->pos = iph + 1;
	if (iph->protocol == IPPROTO_UDP)
		return sl_decap_gue(c, t, &key);
	t->inner_family = SL_FAMILY_V4;
	return sl_decap_local(&key);
}

/* An outer IPv6 header carrying IPv6 (next header 41), IPv4 (4) or GUE to one
 * of our addresses. Extension headers are not tunnels this program handles. */
static __always_inline int sl_decap_outer_ipv6(struct sl_cursor *c, struct sl_tunnel *t)
{
	struct ipv6hdr *ip6h = c->pos;
	struct sl_addr_key key;
	__u32 payload_len;

	if ((void *)(ip6h + 1) > c->end)
		return SL_DECAP_PASSED;
	if (ip6h->version != SL_IPV6_VERSION)
		return SL_DECAP_PASSED;
	if (ip6h->nexthdr == IPPROTO_IPV6)
		t->inner_family = SL_FAMILY_V6;
	else if (ip6h->nexthdr == IPPROTO_IPIP)
		t->inner_family = SL_FAMILY_V4;
	else if (ip6h->nexthdr != IPPROTO_UDP)
		return SL_DECAP_PASSED;
	payload_len = bpf_ntohs(ip6h->payload_len);
	if ((void *)(ip6h + 1) + payload_len > c->end)
		return SL_DECAP_PASSED;

	sl_addr_key_v6(&key, &ip6h->daddr);
	t->outer_len = sizeof(*ip6h);
	t->payload_len = payload_len;
	c->pos = ip6h + 1;
	if (ip6h->nexthdr == IPPROTO_UDP)
		return sl_decap_gue(c, t, &key);
	return sl_decap_local(&key);
}

/* The inner packet's destination, once its header is known to be whole and
 * to fit in what the outer header carries. */
static __always_inline int sl_decap_inner(struct sl_cursor *c, const struct sl_tunnel *t,
					  struct sl_addr_key *dst)
{
	if (t->inner_family == SL_FAMILY_V4) {
		struct iphdr *iph = c->pos;
		__u32 hdr_len, tot_len;

		/* Version and IHL share the first byte: judge them before the length. */
		if (c->pos + sizeof(__u8) > c->end)
			return SL_DECAP_MALFORMED;
		if (iph->version != SL_IPV4_VERSION || iph->ihl < SL_IPV4_MIN_IHL)
			return SL_DECAP_MALFORMED;
		if ((void *)(iph + 1) > c->end)
			return SL_DECAP_MALFORMED;
		hdr_len = iph->ihl * SL_IHL_UNIT;
		tot_len = bpf_ntohs(iph->tot_len);
		if (tot_len < hdr_len || tot_len > t->payload_len)
			return SL_DECAP_MALFORMED;
		sl_addr_key_v4(dst, iph->daddr);
	} else {
		struct ipv6hdr *ip6h = c->pos;

		if (c->pos + sizeof(__u8) > c->end)
			return SL_DECAP_MALFORMED;
		if (ip6h->version != SL_IPV6_VERSION)
			return SL_DECAP_MALFORMED;
		if ((void *)(ip6h + 1) > c->end)
			return SL_DECAP_MALFORMED;
		if (sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len) > t->payload_len)
			return SL_DECAP_MALFORMED;
		sl_addr_key_v6(dst, &ip6h->daddr);
	}
	return SL_DECAP_CONTINUE;
}

/*
 * Removes the outer header: the link-layer header (and its VLAN tag) is saved,
 * the head moves forward by the outer header's length, and the saved header is
 * written back in front of the inner packet with the inner ethertype.
 */
static __always_inline int sl_decap_strip(struct xdp_md *ctx, const struct sl_packet *pkt,
					  const struct sl_tunnel *t)
{
	__be16 inner_proto = t->inner_family == SL_FAMILY_V4 ? bpf_htons(ETH_P_IP)
							      : bpf_htons(ETH_P_IPV6);
	struct sl_eth saved = *pkt->eth;
	int has_vlan = pkt->vlan != NULL;
	__be16 vlan_tci = 0;
	struct sl_vlan_hdr *vlan;
	struct sl_eth *eth;
	void *data, *data_end;

	if (has_vlan)
		vlan_tci = pkt->vlan->tci;

	/* A frame that cannot shrink is still whole: the kernel gets it as it came. */
	if (bpf_xdp_adjust_head(ctx, (int)t->outer_len))
		return SL_DECAP_PASSED;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return SL_DECAP_MALFORMED; /* unreachable: the inner header follows */
	*eth = saved;
	if (has_vlan) {
		vlan = (void *)(eth + 1);
		if ((void *)(vlan + 1) > data_end)
			return SL_DECAP_MALFORMED; /* unreachable, as above */
		vlan->tci = vlan_tci;
		vlan->encap_proto = inner_proto;
	} else {
		eth->proto = inner_proto;
	}
	return SL_DECAP_STRIPPED;
}

static __always_inline int sl_decap_process(struct xdp_md *ctx)
{
	struct sl_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct sl_packet pkt;
	struct sl_tunnel t = {}; /* zeroed: clang may spill a field a path never set, which the verifier refuses */
	struct sl_addr_key dst;
	__be16 eth_proto;
	int rc;

	if (sl_parse_l2(&c, &pkt, &eth_proto) != SL_CONTINUE)
		return SL_DECAP_PASSED;
	if (eth_proto == bpf_htons(ETH_P_IP))
		rc = sl_decap_outer_ipv4(&c, &t);
	else if (eth_proto == bpf_htons(ETH_P_IPV6))
		rc = sl_decap_outer_ipv6(&c, &t);
	else
		return SL_DECAP_PASSED;
	if (rc != SL_DECAP_CONTINUE)
		return rc;

	rc = sl_decap_inner(&c, &t, &dst);
	if (rc != SL_DECAP_CONTINUE)
		return rc;
	if (!bpf_map_lookup_elem(&sl_decap_vips, &dst))
		return SL_DECAP_NOT_VIP;
	return sl_decap_strip(ctx, &pkt, &t);
}

SEC("xdp")
int sl_decap(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sl_decap_stats *st = bpf_map_lookup_elem(&sl_decap_stats, &zero);

	if (!st)
		return XDP_ABORTED; /* unreachable: an array of one always has slot 0 */
	switch (sl_decap_process(ctx)) {
	case SL_DECAP_STRIPPED:
		st->decapsulated++;
		return XDP_PASS;
	case SL_DECAP_NOT_LOCAL:
		st->not_local++;
		return XDP_PASS;
	case SL_DECAP_NOT_VIP:
		st->not_vip++;
		return XDP_PASS;
	case SL_DECAP_MALFORMED:
		st->malformed++;
		return XDP_DROP;
	default:
		st->passed++;
		return XDP_PASS;
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
