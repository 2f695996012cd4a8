/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains network address translation, both directions:
 *
 *   nat      client -> VIP:port  becomes  client -> backend:port
 *            backend:port -> client  becomes  VIP:port -> client
 *   fullnat  client -> VIP:port  becomes  SNAT:sport -> backend:port
 *            backend:port -> SNAT:sport  becomes  VIP:port -> client
 *
 * A flow's translation is opened with its conntrack entry (which keeps the
 * SNAT address index and port) and an sl_nat entry keyed by the backend's
 * reply as it will arrive, so a reply finds its flow with one lookup. A
 * full-NAT source is allocated by inserting candidates into sl_nat with
 * BPF_NOEXIST: the hash table decides atomically, across CPUs, which flow
 * holds a (SNAT address, port) toward a backend port, and a bounded number of
 * tries replaces any walk of the port range. The agent ages both entries of
 * a flow as one and deletes them together.
 *
 * Checksums are updated incrementally (csum.h): the IPv4 header's for the
 * addresses, TCP's and UDP's for the addresses (pseudo-header) and ports. An
 * IPv4 UDP datagram sent without a checksum keeps none. Frames go to the next
 * hop the control plane resolved (toward a backend) or recorded from the
 * client's packets (toward a client), with XDP_TX, or bpf_redirect when the
 * other side is another interface.
 */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

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
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "hash.h"
#include "prefilter.h"
#include "stats.h"
#include "conntrack.h"
#include "encap.h"
#include "tail.h"
#include "proxy_seq.h"

#define SL_CSUM_MANGLED_0 0xffff /* a computed UDP checksum of 0 is sent as all ones (RFC 768) */

static __always_inline int sl_fwd_is_nat(__u8 mode)
{
	return mode == SL_FWD_NAT || mode == SL_FWD_FULLNAT;
}

static __always_inline int sl_mac_is_zero(const void *mac)
{
	const __u16 *w = mac;

	return !(w[0] | w[1] | w[2]);
}

/* The pool of a family: sl_snat_pools[0] for IPv4, [1] for IPv6. */
static __always_inline struct sl_snat_pool *sl_snat_pool_of(__u8 family)
{
	__u32 index = family == SL_FAMILY_V4 ? 0 : 1;

	return bpf_map_lookup_elem(&sl_snat_pools, &index);
}

/* Rewrites the IP addresses given (NULL keeps that side) and returns their
 * change for the transport checksum's pseudo-header. */
static __always_inline __u64 sl_nat_addrs(const struct sl_packet *pkt, const __u32 *saddr,
					  const __u32 *daddr)
{
	__u64 diff = 0;

	if (pkt->family == SL_FAMILY_V4) {
		struct iphdr *iph = pkt->l3;

		if (saddr) {
			diff += sl_csum_diff32(iph->saddr, saddr[0]);
			iph->saddr = saddr[0];
		}
		if (daddr) {
			diff += sl_csum_diff32(iph->daddr, daddr[0]);
			iph->daddr = daddr[0];
		}
		iph->check = sl_csum_apply(iph->check, diff);
		return diff;
	}

	struct ipv6hdr *ip6h = pkt->l3;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (saddr) {
			diff += sl_csum_diff32(ip6h->saddr.in6_u.u6_addr32[i], saddr[i]);
			ip6h->saddr.in6_u.u6_addr32[i] = saddr[i];
		}
		if (daddr) {
			diff += sl_csum_diff32(ip6h->daddr.in6_u.u6_addr32[i], daddr[i]);
			ip6h->daddr.in6_u.u6_addr32[i] = daddr[i];
		}
	}
	return diff;
}

/*
 * Readdresses a TCP or UDP packet: source to saddr:sport and destination to
 * daddr:dport, NULL keeping that side (address and port); l4_diff is what
 * else the caller changed in the TCP header (a PROXY flow's sequence or
 * acknowledgement number, proxy_seq.h), 0 for UDP. Returns SL_CONTINUE,
 * or the TRUNCATED drop should the transport header not be there (the parser
 * checked it; the verifier wants it again).
 */
static __always_inline int sl_nat_rewrite(struct xdp_md *ctx, const struct sl_packet *pkt,
					  const __u32 *saddr, __be16 sport,
					  const __u32 *daddr, __be16 dport, __u64 l4_diff)
{
	void *end = (void *)(long)ctx->data_end;
	struct sl_ports *ports = pkt->l4;
	__u64 diff;

	if ((void *)(ports + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	diff = sl_nat_addrs(pkt, saddr, daddr);
	if (saddr) {
		diff += sl_csum_diff16(ports->source, sport);
		ports->source = sport;
	}
	if (daddr) {
		diff += sl_csum_diff16(ports->dest, dport);
		ports->dest = dport;
	}
	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = pkt->l4;

		if ((void *)(tcp + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		tcp->check = sl_csum_apply(tcp->check, diff + l4_diff);
	} else {
		struct udphdr *udp = pkt->l4;
		__sum16 check;

		if ((void *)(udp + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		if (!udp->check && pkt->family == SL_FAMILY_V4)
			return SL_CONTINUE;
		check = sl_csum_apply(udp->check, diff);
		udp->check = check ? check : SL_CSUM_MANGLED_0;
	}
	return SL_CONTINUE;
}

/* Redirects the frame to another interface. bpf_redirect() with no flags
 * always says XDP_REDIRECT; the verdict is spelled out so that the verifier
 * sees a bounded value. */
static __always_inline int sl_redirect(__u32 ifindex)
{
	return bpf_redirect(ifindex, 0) == XDP_REDIRECT ? XDP_REDIRECT : XDP_ABORTED;
}

/* Sends a translated frame to the next hop toward a backend. */
static __always_inline int sl_nat_send_to_backend(struct xdp_md *ctx, const struct sl_packet *pkt,
						  const struct sl_backend *be)
{
	struct sl_eth *eth = pkt->eth;

	if (be->ifindex && be->ifindex != ctx->ingress_ifindex) {
		sl_mac_copy(eth->src, be->src_mac);
		sl_mac_copy(eth->dst, be->mac);
		return sl_redirect(be->ifindex);
	}
	sl_mac_copy(eth->src, eth->dst);
	sl_mac_copy(eth->dst, be->mac);
	return XDP_TX;
}

/* Sends a translated frame toward the client: to the MAC its packets came
 * from, out of the interface they came in on; a flow a peer synced knows
 * neither and goes back out to the gateway. */
static __always_inline int sl_nat_send_to_client(struct xdp_md *ctx, const struct sl_packet *pkt,
						 const struct sl_nat_entry *nat)
{
	struct sl_eth *eth = pkt->eth;
	struct sl_config *cfg;
	__u32 zero = 0;

	if (sl_mac_is_zero(nat->client_mac)) {
		cfg = bpf_map_lookup_elem(&sl_config, &zero);
		if (!cfg || !(cfg->flags & SL_CFG_HAS_GATEWAY))
			return SL_RC_DROP(SL_DROP_NO_GATEWAY);
		sl_mac_copy(eth->src, eth->dst);
		sl_mac_copy(eth->dst, cfg->gateway_mac);
		return XDP_TX;
	}
	if (nat->ifindex && nat->ifindex != ctx->ingress_ifindex) {
		sl_mac_copy(eth->src, nat->local_mac);
		sl_mac_copy(eth->dst, nat->client_mac);
		return sl_redirect(nat->ifindex);
	}
	sl_mac_copy(eth->src, eth->dst);
	sl_mac_copy(eth->dst, nat->client_mac);
	return XDP_TX;
}

/* The backend's reply to a flow, as it will arrive, with the destination left
 * for the caller: source backend:port, the flow's protocol and family. */
static __always_inline void sl_nat_reply_key(struct sl_flow_key *reply, const struct sl_flow_key *key,
					     const struct sl_backend *be)
{
	__builtin_memset(reply, 0, sizeof(*reply));
#pragma unroll
	for (int i = 0; i < 4; i++)
		reply->src[i] = be->addr[i];
	reply->sport = be->port;
	reply->proto = key->proto;
	reply->family = key->family;
}

/* The try-th full-NAT candidate of a flow: independent of the Maglev slot
 * (another seed) and of the other tries. */
static __always_inline __u32 sl_snat_candidate(__u32 flow_hash, __u32 try)
{
	return jhash_3words(flow_hash, try, SL_SNAT_TRIES, SL_HASH_SEED);
}

/*
 * Allocates the flow's source: tries up to SL_SNAT_TRIES (address, port)
 * candidates of the family's pool as the destination of `reply` (the rest of
 * the key filled in) and inserts the first free one into sl_nat as `nat`. Fills ct's snat_index and snat_port. Returns SL_CONTINUE, or the
 * NO_SNAT or SNAT_EXHAUSTED drop; an existing flow is never touched.
 */
static __always_inline int sl_snat_alloc(const struct sl_flow_key *key, struct sl_flow_key *reply,
					 const struct sl_nat_entry *nat, struct sl_ct_entry *ct,
					 struct sl_stats *st)
{
	struct sl_snat_pool *pool = sl_snat_pool_of(key->family);
	__u32 hash, range, count;

	if (!pool || !pool->count || pool->count > SL_MAX_SNAT_ADDRS || pool->port_max < pool->port_min)
		return SL_RC_DROP(SL_DROP_NO_SNAT);
	count = pool->count;
	range = (__u32)pool->port_max - pool->port_min + 1;
	hash = sl_flow_hash(key);
	for (__u32 try = 0; try < SL_SNAT_TRIES; try++) {
		__u32 x = sl_snat_candidate(hash, try);
		__u32 index = (x / range) % count;
		__u16 port = pool->port_min + x % range;

		/* Cannot be out of range (count <= SL_MAX_SNAT_ADDRS), but clang
		 * would drop the check the verifier needs without the barrier. */
		barrier_var(index);
		if (index >= SL_MAX_SNAT_ADDRS)
			break;
#pragma unroll
		for (int i = 0; i < 4; i++)
			reply->dst[i] = pool->addr[index][i];
		reply->dport = bpf_htons(port);
		if (!bpf_map_update_elem(&sl_nat, reply, nat, BPF_NOEXIST)) {
			ct->snat_index = index;
			ct->snat_port = reply->dport;
			return SL_CONTINUE;
		}
		st->snat_collisions++;
	}
	return SL_RC_DROP(SL_DROP_SNAT_EXHAUSTED);
}

/*
 * Opens the translation of a flow just placed on backend `be` in `mode`: its
 * sl_nat entry (for fullnat with a source allocated) and its conntrack entry,
 * which *ct is filled in as. Returns SL_CONTINUE or a drop; nothing is
 * recorded when the allocation fails.
 */
/* Takes one new translation from this CPU's budget of nat_flow_budget a
 * second (0: no limit). The translation's entries are the one thing a SYN
 * still writes, so the budget bounds how fast a SYN flood to a NAT VIP can
 * churn the tables; past it the SYN is dropped and the client sends it again.
 * The coarse clock (the last tick, no clock read) is fine for a one-second
 * window. */
static __always_inline int sl_nat_budget_take(const struct sl_config *cfg)
{
	__u32 zero = 0, limit = cfg->nat_flow_budget;
	struct sl_nat_budget *budget;
	__u64 now;

	if (!limit)
		return 1;
	budget = bpf_map_lookup_elem(&sl_nat_budget, &zero);
	if (!budget)
		return 1;
	now = bpf_ktime_get_coarse_ns();
	if (now - budget->window_ns >= 1000000000ull) {
		budget->window_ns = now;
		budget->created = 0;
	}
	if (budget->created >= limit)
		return 0;
	budget->created++;
	return 1;
}

static __always_inline int sl_nat_open(struct xdp_md *ctx, const struct sl_packet *pkt,
				       const struct sl_config *cfg, const struct sl_backend *be,
				       const struct sl_flow_key *key, __u32 backend_id, __u32 service_id,
				       __u8 mode, __u8 vip_flags, struct sl_ct_entry *ct, struct sl_stats *st)
{
	struct sl_nat_entry nat = {};
	struct sl_flow_key reply;
	int rc;

	if (!sl_nat_budget_take(cfg))
		return SL_RC_DROP(SL_DROP_NAT_BUDGET);
	__builtin_memcpy(&nat.flow, key, sizeof(nat.flow));
	sl_mac_copy(nat.client_mac, pkt->eth->src);
	sl_mac_copy(nat.local_mac, pkt->eth->dst);
	nat.ifindex = ctx->ingress_ifindex;
	nat.backend_id = backend_id;
	nat.service_id = service_id;
	nat.mode = mode;
	nat.last_seen = sl_clock_now();

	__builtin_memset(ct, 0, sizeof(*ct));
	ct->backend_id = backend_id;
	ct->service_id = service_id;
	ct->tcp_seen = pkt->tcp_seen;
	ct->nat = mode;
	if (mode == SL_FWD_FULLNAT && (vip_flags & SL_VIP_F_PROXY_V2) && pkt->proto == IPPROTO_TCP) {
		if (sl_proxy_open(ctx, pkt, &ct->proxy_seq)) {
			ct->proxy = SL_PROXY_ON;
			nat.proxy = SL_PROXY_ON;
			nat.proxy_seq = ct->proxy_seq;
		} else {
			st->proxy_midstream++;
		}
	}
	sl_nat_reply_key(&reply, key, be);
	if (mode == SL_FWD_FULLNAT) {
		rc = sl_snat_alloc(key, &reply, &nat, ct, st);
		if (rc != SL_CONTINUE)
			return rc;
	} else {
		/* The reply goes to the client itself. Two VIPs sharing a backend
		 * port cannot tell one client port's replies apart: the last flow
		 * opened wins, as with any half NAT. */
#pragma unroll
		for (int i = 0; i < 4; i++)
			reply.dst[i] = key->src[i];
		reply.dport = key->sport;
		bpf_map_update_elem(&sl_nat, &reply, &nat, BPF_ANY);
	}
	sl_ct_record(key, ct, cfg, st);
	st->nat_created++;
	return SL_CONTINUE;
}

/* Translates a client's packet of an open NAT flow for the backend (l4_diff
 * as for sl_nat_rewrite). */
static __always_inline int sl_nat_forward_rewrite(struct xdp_md *ctx, const struct sl_packet *pkt,
						  const struct sl_backend *be, const struct sl_ct_entry *ct,
						  __u64 l4_diff)
{
	struct sl_snat_pool *pool;
	__u32 index = ct->snat_index;

	if (ct->nat == SL_FWD_FULLNAT) {
		pool = sl_snat_pool_of(pkt->family);
		/* An address the pool no longer holds (it shrank): the flow
		 * has lost its source. */
		if (!pool || index >= SL_MAX_SNAT_ADDRS || index >= pool->count)
			return SL_RC_DROP(SL_DROP_NO_SNAT);
		return sl_nat_rewrite(ctx, pkt, pool->addr[index], ct->snat_port, be->addr, be->port, l4_diff);
	}
	return sl_nat_rewrite(ctx, pkt, NULL, 0, be->addr, be->port, l4_diff);
}

/* Translates a client's packet of an open NAT flow and sends it to the
 * backend, whose next hop's MAC the caller found resolved. A PROXY flow's
 * segment that must carry the header (or lose its SYN's data) takes the
 * sl_proxy program; the others have their sequence number offset. */
static __always_inline int sl_nat_forward(struct xdp_md *ctx, const struct sl_packet *pkt,
					  const struct sl_backend *be, const struct sl_ct_entry *ct)
{
	__u64 l4_diff = 0;
	int rc;

	if (ct->proxy) {
		rc = sl_proxy_seq_forward(ctx, pkt, ct, &l4_diff);
		if (rc == SL_PROXY_SLOW) {
			bpf_tail_call(ctx, &sl_progs, SL_TAIL_PROXY);
			return SL_RC_DROP(SL_DROP_PROXY); /* the program is missing */
		}
		if (rc != SL_CONTINUE)
			return rc;
	}
	rc = sl_nat_forward_rewrite(ctx, pkt, be, ct, l4_diff);
	if (rc != SL_CONTINUE)
		return rc;
	return sl_nat_send_to_backend(ctx, pkt, be);
}

/* The prefilter's test of a packet's source as a NAT backend's reply, in
 * `key`'s storage. */
static __always_inline int sl_nat_reply_filter_test(const struct sl_packet *pkt, struct sl_vip_key *key)
{
	if (pkt->family == SL_FAMILY_V4) {
		const struct iphdr *iph = pkt->l3;

		key->addr[0] = iph->saddr;
		key->addr[1] = 0;
		key->addr[2] = 0;
		key->addr[3] = 0;
	} else {
		const struct ipv6hdr *ip6h = pkt->l3;

#pragma unroll
		for (int i = 0; i < 4; i++)
			key->addr[i] = ip6h->saddr.in6_u.u6_addr32[i];
	}
	key->port = pkt->sport;
	key->proto = pkt->proto | SL_VIP_FILTER_REPLY;
	key->family = pkt->family;
	return sl_vip_filter_test(key);
}

/* Translates a backend's reply to its NAT flow `nat` back to the client and
 * sends it there (l4_diff as for sl_nat_rewrite). */
static __always_inline int sl_nat_reply_translate(struct xdp_md *ctx, const struct sl_packet *pkt,
						  struct sl_nat_entry *nat, __u64 l4_diff, struct sl_stats *st)
{
	__u32 now;
	int rc;

	now = sl_clock_now();
	if (nat->last_seen != now)
		nat->last_seen = now;
	if ((nat->tcp_seen | pkt->tcp_seen) != nat->tcp_seen)
		nat->tcp_seen |= pkt->tcp_seen;
	/* Two calls, each with its sides fixed, so that clang cannot fold the
	 * choice into a pointer the verifier cannot follow. */
	if (nat->mode == SL_FWD_FULLNAT)
		rc = sl_nat_rewrite(ctx, pkt, nat->flow.dst, nat->flow.dport, nat->flow.src,
				    nat->flow.sport, l4_diff);
	else
		rc = sl_nat_rewrite(ctx, pkt, nat->flow.dst, nat->flow.dport, NULL, 0, l4_diff);
	if (rc != SL_CONTINUE)
		return rc;
	sl_count_reply(nat->service_id, nat->backend_id, pkt->frame_len);
	st->nat_replies++;
	return sl_nat_send_to_client(ctx, pkt, nat);
}

/* A packet for no VIP: a backend's reply to a NAT flow is translated back to
 * its client; anything else passes. The caller lends the storage of the keys
 * (one stack frame holds every path, within 512 bytes). A PROXY flow's reply
 * has its acknowledgement number offset back, or takes the sl_proxy_reply
 * program when it needs more. */
static __always_inline int sl_nat_reply(struct xdp_md *ctx, const struct sl_packet *pkt,
					struct sl_vip_key *filter_key, struct sl_flow_key *key,
					struct sl_stats *st)
{
	struct sl_nat_entry *nat;
	struct sl_config *cfg;
	__u64 l4_diff = 0;
	__u32 zero = 0;
	int rc;

	/* A node without NAT flows passes what is for no VIP at the cost of
	 * one inlined array read. */
	cfg = bpf_map_lookup_elem(&sl_config, &zero);
	if (!cfg || !(cfg->flags & SL_CFG_NAT))
		return XDP_PASS;
	if (!sl_nat_reply_filter_test(pkt, filter_key))
		return XDP_PASS;
	sl_flow_key_build(pkt, key);
	nat = bpf_map_lookup_elem(&sl_nat, key);
	if (!nat)
		return XDP_PASS;
	if (nat->proxy) {
		rc = sl_proxy_seq_reply(ctx, pkt, nat, &l4_diff);
		if (rc == SL_PROXY_SLOW) {
			bpf_tail_call(ctx, &sl_progs, SL_TAIL_PROXY_REPLY);
			return SL_RC_DROP(SL_DROP_PROXY); /* the program is missing */
		}
		if (rc != SL_CONTINUE)
			return rc;
	}
	return sl_nat_reply_translate(ctx, pkt, nat, l4_diff, st);
}

#endif /* SLUICE_NAT_H */
