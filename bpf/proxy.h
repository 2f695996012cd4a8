/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the rare segments of a flow that carries a PROXY v2
 * header (full NAT, client_address: proxy-v2), in the programs sl_proxy and
 * sl_proxy_reply that the balancer tail-calls for them (proxy_seq.h has the
 * common path):
 *
 *   the client's segment at the stream's start while the backend has not
 *     acknowledged the header: the header is put in front of its data (the
 *     handshake's ACK becomes a segment of the header alone), so the backend
 *     has it as soon as the handshake completes, before any data, and gets it
 *     again from any later segment at the start should it have been lost (a
 *     backend that lost it answers the client's ACK with its SYN-ACK again,
 *     which the client acknowledges again);
 *   the client's SYN with data (TCP Fast Open): the data is removed, the
 *     client sends it again after the handshake, behind the header;
 *   the backend's SYN-ACK: its MSS is lowered by the header's length, so that
 *     a full-sized first segment still fits with the header in front;
 *   the backend's segments with SACK blocks: their edges are offset back like
 *     its acknowledgement; and the first that acknowledges the whole header,
 *     after which the header is never written again.
 *
 * The header is written by growing the frame at its head and moving the
 * Ethernet, IP and TCP headers forward into the room; checksums are updated
 * incrementally (the payload after the header keeps its 16-bit alignment, as
 * the header's length is a multiple of 4).
 */
#ifndef SLUICE_PROXY_H
#define SLUICE_PROXY_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "stats.h"
#include "conntrack.h"
#include "pmtu.h"
#include "nat.h"
#include "proxy_seq.h"

/* The headers moved to make room: Ethernet with a tag (18), IPv4 with options
 * (60) or IPv6 (40), TCP with options (60). */
#define SL_PROXY_HDRS_MAX 140
#define SL_TCP_HDR_MAX 60
#define SL_TCP_OPT_SACK 5
#define SL_TCP_OPT_SACK_MAX_EDGES 8 /* four blocks */
#define SL_TCP_OPTS_MAX 40          /* bytes of TCP options at most */
#define SL_TCP_OPTS_BUF 64          /* ... rounded up to what SL_TCP_OPTS_MASK indexes */
#define SL_TCP_OPTS_MASK 63

#define SL_PROXY_V2_VER_CMD 0x21    /* version 2, command PROXY */
#define SL_PROXY_V2_TCP4 0x11       /* AF_INET, STREAM */
#define SL_PROXY_V2_TCP6 0x21       /* AF_INET6, STREAM */
#define SL_PROXY_V2_FIXED 16        /* signature, version and command, family, length */

/* The PROXY v2 header of TCP over IPv4 or IPv6 (HAProxy's specification,
 * section 2.2): the client's address and port as source, the VIP's as
 * destination. */
struct sl_proxy_v2 {
	__u8 sig[12];
	__u8 ver_cmd;
	__u8 fam;
	__be16 len;        /* bytes after these 16 */
	union {
		struct {
			__be32 src;
			__be32 dst;
			__be16 sport;
			__be16 dport;
		} v4;
		struct {
			__be32 src[4];
			__be32 dst[4];
			__be16 sport;
			__be16 dport;
		} v6;
	} addr;
};
_Static_assert(sizeof(struct sl_proxy_v2) == SL_PROXY_V2_LEN_V6, "the IPv6 header is the whole struct");

/* Fills the header of the client's flow `flow` (client -> VIP). */
static __always_inline void sl_proxy_v2_build(struct sl_proxy_v2 *hdr, const struct sl_flow_key *flow)
{
	/* The signature "\r\n\r\n\0\r\nQUIT\n" as three words written as
	 * immediates: a constant array would become a .rodata map of its own. */
	__be32 *sig = (__be32 *)hdr->sig;

	sig[0] = bpf_htonl(0x0d0a0d0a);
	sig[1] = bpf_htonl(0x000d0a51);
	sig[2] = bpf_htonl(0x5549540a);
	hdr->ver_cmd = SL_PROXY_V2_VER_CMD;
	if (flow->family == SL_FAMILY_V4) {
		hdr->fam = SL_PROXY_V2_TCP4;
		hdr->len = bpf_htons(SL_PROXY_V2_LEN_V4 - SL_PROXY_V2_FIXED);
		hdr->addr.v4.src = flow->src[0];
		hdr->addr.v4.dst = flow->dst[0];
		hdr->addr.v4.sport = flow->sport;
		hdr->addr.v4.dport = flow->dport;
		return;
	}
	hdr->fam = SL_PROXY_V2_TCP6;
	hdr->len = bpf_htons(SL_PROXY_V2_LEN_V6 - SL_PROXY_V2_FIXED);
#pragma unroll
	for (int i = 0; i < 4; i++) {
		hdr->addr.v6.src[i] = flow->src[i];
		hdr->addr.v6.dst[i] = flow->dst[i];
	}
	hdr->addr.v6.sport = flow->sport;
	hdr->addr.v6.dport = flow->dport;
}

/* Points pkt's header pointers into the frame again after it grew or shrank
 * (l2 and l3_len unchanged). Returns the TCP header, or NULL. */
static __always_inline struct tcphdr *sl_proxy_repoint(struct xdp_md *ctx, struct sl_packet *pkt, __u32 l2)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp;
	__u32 tcp_off = (l2 + pkt->l3_len) & 0xff;

	pkt->eth = data;
	pkt->vlan = pkt->vlan ? data + sizeof(struct sl_eth) : NULL;
	pkt->l3 = data + (l2 & 0x1f);
	tcp = data + tcp_off;
	pkt->l4 = tcp;
	if ((void *)(pkt->eth + 1) > end || (void *)(tcp + 1) > end)
		return NULL;
	pkt->frame_len = end - data;
	return tcp;
}

/* Sets the IP header's length to `ip_len` and returns it. */
static __always_inline int sl_proxy_set_ip_len(struct xdp_md *ctx, struct sl_packet *pkt, __u32 ip_len)
{
	void *end = (void *)(long)ctx->data_end;

	if (pkt->family == SL_FAMILY_V4) {
		struct iphdr *iph = pkt->l3;
		__be16 now = bpf_htons(ip_len);

		if ((void *)(iph + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		iph->check = sl_csum_apply(iph->check, sl_csum_diff16(iph->tot_len, now));
		iph->tot_len = now;
	} else {
		struct ipv6hdr *ip6h = pkt->l3;

		if ((void *)(ip6h + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		ip6h->payload_len = bpf_htons(ip_len - sizeof(*ip6h));
	}
	pkt->ip_len = ip_len;
	return SL_CONTINUE;
}

/* The change of the TCP pseudo-header's length from `before` to `after`. */
static __always_inline __u64 sl_pseudo_len_diff(__u8 family, __u32 before, __u32 after)
{
	if (family == SL_FAMILY_V4)
		return sl_csum_diff16(bpf_htons(before), bpf_htons(after));
	return sl_csum_diff32(bpf_htonl(before), bpf_htonl(after));
}

/*
 * Puts the header of `flow` in front of the segment's payload. The frame
 * grows at its head by the header's length and its Ethernet, IP and TCP
 * headers move forward into the room. Returns SL_CONTINUE with pkt pointing
 * into the new frame, or a drop.
 */
static __always_inline int sl_proxy_insert(struct xdp_md *ctx, struct sl_packet *pkt,
					   const struct sl_flow_key *flow)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	struct sl_proxy_v2 hdr = {};
	__u8 hdrs[SL_PROXY_HDRS_MAX];
	__u32 l2 = sl_l2_len(pkt), hlen, len = sl_proxy_len(pkt->family), tcp_len;
	__u64 diff;
	int rc;

	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	hlen = l2 + pkt->l3_len + tcp->doff * SL_IHL_UNIT;
	tcp_len = pkt->ip_len - pkt->l3_len;
	if (hlen > SL_PROXY_HDRS_MAX || len > sizeof(hdr))
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if (bpf_xdp_load_bytes(ctx, 0, hdrs, hlen))
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	sl_proxy_v2_build(&hdr, flow);
	if (bpf_xdp_adjust_head(ctx, -(int)len))
		return SL_RC_DROP(SL_DROP_PROXY);
	if (bpf_xdp_store_bytes(ctx, 0, hdrs, hlen) || bpf_xdp_store_bytes(ctx, hlen, &hdr, len))
		return SL_RC_DROP(SL_DROP_PROXY);
	tcp = sl_proxy_repoint(ctx, pkt, l2);
	if (!tcp)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	rc = sl_proxy_set_ip_len(ctx, pkt, pkt->ip_len + len);
	if (rc != SL_CONTINUE)
		return rc;
	end = (void *)(long)ctx->data_end;
	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	diff = sl_pseudo_len_diff(pkt->family, tcp_len, tcp_len + len);
	diff += (__u32)bpf_csum_diff(NULL, 0, (__be32 *)&hdr, len, 0);
	tcp->check = sl_csum_apply(tcp->check, diff);
	return SL_CONTINUE;
}

/* Removes a SYN's data (TCP Fast Open) and computes its TCP checksum anew
 * over the header that remains. */
static __always_inline int sl_proxy_trim_syn(struct xdp_md *ctx, struct sl_packet *pkt)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	__u8 buf[SL_TCP_HDR_MAX];
	__u32 l2 = sl_l2_len(pkt), thlen, tcp_off;
	__u32 src[4] = {}, dst[4] = {};
	__u64 sum;
	int rc;

	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	thlen = tcp->doff * SL_IHL_UNIT;
	tcp_off = l2 + pkt->l3_len;
	if (thlen > SL_TCP_HDR_MAX || thlen < sizeof(*tcp))
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if (bpf_xdp_adjust_tail(ctx, (int)(tcp_off + thlen) - (int)pkt->frame_len))
		return SL_RC_DROP(SL_DROP_PROXY);
	tcp = sl_proxy_repoint(ctx, pkt, l2);
	if (!tcp)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	rc = sl_proxy_set_ip_len(ctx, pkt, pkt->l3_len + thlen);
	if (rc != SL_CONTINUE)
		return rc;
	end = (void *)(long)ctx->data_end;
	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	tcp->check = 0;
	if (bpf_xdp_load_bytes(ctx, tcp_off, buf, thlen))
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (pkt->family == SL_FAMILY_V4) {
		struct iphdr *iph = pkt->l3;

		if ((void *)(iph + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		src[0] = iph->saddr;
		dst[0] = iph->daddr;
	} else {
		struct ipv6hdr *ip6h = pkt->l3;

		if ((void *)(ip6h + 1) > end)
			return SL_RC_DROP(SL_DROP_TRUNCATED);
		__builtin_memcpy(src, &ip6h->saddr, sizeof(src));
		__builtin_memcpy(dst, &ip6h->daddr, sizeof(dst));
	}
	sum = sl_csum_pseudo(pkt->family, src, dst, thlen, IPPROTO_TCP);
	sum += (__u32)bpf_csum_diff(NULL, 0, (__be32 *)buf, thlen, 0);
	end = (void *)(long)ctx->data_end;
	tcp = pkt->l4;
	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	tcp->check = sl_csum_fold64(sum);
	return SL_CONTINUE;
}

/* The frame again, as the balancer parsed it before its tail call (nothing
 * else crosses it), with its 5-tuple in *key; anything but TCP passes. */
static __always_inline int sl_proxy_parse(struct xdp_md *ctx, struct sl_packet *pkt, struct sl_flow_key *key,
					  struct sl_stats *st)
{
	int rc = sl_parse_packet(ctx, pkt, st);

	if (rc != SL_CONTINUE)
		return rc;
	if (pkt->proto != IPPROTO_TCP || pkt->ip_proto != pkt->proto)
		return XDP_PASS;
	sl_flow_key_build(pkt, key);
	return SL_CONTINUE;
}

/* A client's segment that sl_proxy_seq_forward() sent here: its SYN loses its
 * data, or, at the stream's start, it gets the header. Translated and sent
 * to the backend. */
static __always_inline int sl_proxy_forward(struct xdp_md *ctx, struct sl_stats *st)
{
	struct sl_packet pkt;
	struct sl_flow_key flow;
	struct sl_ct_entry *ct;
	struct sl_backend *be;
	struct tcphdr *tcp;
	__u32 backend_id;
	int rc;

	rc = sl_proxy_parse(ctx, &pkt, &flow, st);
	if (rc != SL_CONTINUE)
		return rc;
	ct = bpf_map_lookup_elem(&sl_conntrack, &flow);
	if (!ct || !ct->proxy)
		return SL_RC_DROP(SL_DROP_PROXY); /* aged out since the balancer saw it */
	backend_id = ct->backend_id;
	be = bpf_map_lookup_elem(&sl_backends, &backend_id);
	if (!be || !be->family)
		return SL_RC_DROP(SL_DROP_NO_BACKEND);
	rc = sl_nat_forward_rewrite(ctx, &pkt, be, ct, 0);
	if (rc != SL_CONTINUE)
		return rc;
	tcp = pkt.l4;
	if ((void *)(tcp + 1) > (void *)(long)ctx->data_end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (tcp->syn) {
		rc = sl_proxy_trim_syn(ctx, &pkt);
		if (rc != SL_CONTINUE)
			return rc;
		st->proxy_tfo_trimmed++;
	} else {
		rc = sl_proxy_insert(ctx, &pkt, &flow);
		if (rc != SL_CONTINUE)
			return rc;
		if (ct->proxy & SL_PROXY_SENT) {
			st->proxy_resent++;
		} else {
			ct->proxy |= SL_PROXY_SENT;
			st->proxy_headers++;
		}
	}
	return sl_nat_send_to_backend(ctx, &pkt, be);
}

/* The walk of a backend's TCP options, copied out of the frame into buf. */
struct sl_opt_walk {
	__u8 buf[SL_TCP_OPTS_BUF];
	__u32 olen;       /* bytes of options (a multiple of 4, at most 40) */
	__u32 off;        /* the next option's offset */
	__u32 proxy_seq;
	__u32 len;        /* the header's */
	__u8 syn;
};

/* Reads the 32-bit edge at buf[at] and writes it offset back. */
static __always_inline void sl_opt_edge_back(struct sl_opt_walk *w, __u32 at)
{
	__u8 *b = w->buf;
	__u32 old = (__u32)b[at & SL_TCP_OPTS_MASK] << 24 | (__u32)b[(at + 1) & SL_TCP_OPTS_MASK] << 16 |
		    (__u32)b[(at + 2) & SL_TCP_OPTS_MASK] << 8 | b[(at + 3) & SL_TCP_OPTS_MASK];
	__u32 now = sl_proxy_ack_back(old, w->proxy_seq, w->len);

	b[at & SL_TCP_OPTS_MASK] = now >> 24;
	b[(at + 1) & SL_TCP_OPTS_MASK] = now >> 16;
	b[(at + 2) & SL_TCP_OPTS_MASK] = now >> 8;
	b[(at + 3) & SL_TCP_OPTS_MASK] = now;
}

/* One option (a bpf_loop() callback, verified once however many options
 * there are): a SYN-ACK's MSS lowered by the header's length, SACK edges
 * offset back. Returns 1 at the end of the list or where it is malformed. */
static long sl_opt_step(__u32 index, void *data)
{
	struct sl_opt_walk *w = data;
	__u32 off = w->off, olen, mss;
	__u8 kind;

	if (off >= w->olen || off >= SL_TCP_OPTS_MAX)
		return 1;
	kind = w->buf[off & SL_TCP_OPTS_MASK];
	if (kind == SL_TCP_OPT_EOL)
		return 1;
	if (kind == SL_TCP_OPT_NOP) {
		w->off = off + 1;
		return 0;
	}
	olen = w->buf[(off + 1) & SL_TCP_OPTS_MASK];
	if (olen < 2 || off + olen > w->olen)
		return 1;
	if (kind == SL_TCP_OPT_MSS && olen == SL_TCP_OPT_MSS_LEN && w->syn) {
		mss = (__u32)w->buf[(off + 2) & SL_TCP_OPTS_MASK] << 8 | w->buf[(off + 3) & SL_TCP_OPTS_MASK];
		if (mss > w->len) {
			mss -= w->len;
			w->buf[(off + 2) & SL_TCP_OPTS_MASK] = mss >> 8;
			w->buf[(off + 3) & SL_TCP_OPTS_MASK] = mss;
		}
	} else if (kind == SL_TCP_OPT_SACK) {
		for (__u32 e = 0; e < SL_TCP_OPT_SACK_MAX_EDGES; e++) {
			if (2 + e * 4 + 4 > olen)
				break;
			sl_opt_edge_back(w, off + 2 + e * 4);
		}
	}
	w->off = off + olen;
	return 0;
}

/* The backend's TCP options in the client's terms (sl_opt_step). Returns
 * the checksum change, or a drop. The options are copied out, rewritten and
 * copied back; the change is the difference of the two copies (they start at
 * an even offset of the TCP header and are a multiple of 4 long). */
static __always_inline int sl_proxy_options_back(struct xdp_md *ctx, const struct sl_packet *pkt,
						 __u32 proxy_seq, __u32 len, __u64 *diff)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	struct sl_opt_walk w = {};
	__u8 before[SL_TCP_OPTS_MAX];
	__u32 at, olen;

	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	olen = tcp->doff * SL_IHL_UNIT - sizeof(*tcp);
	if (!olen)
		return SL_CONTINUE;
	if (olen > SL_TCP_OPTS_MAX)
		return SL_RC_DROP(SL_DROP_MALFORMED);
	w.olen = olen;
	at = (void *)(tcp + 1) - (void *)(long)ctx->data;
	if (bpf_xdp_load_bytes(ctx, at, w.buf, olen))
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	__builtin_memcpy(before, w.buf, sizeof(before));
	w.proxy_seq = proxy_seq;
	w.len = len;
	w.syn = tcp->syn;
	bpf_loop(SL_TCP_OPTS_MAX, sl_opt_step, &w, 0);
	/* The verifier's view of olen is lost across the call otherwise. */
	barrier_var(olen);
	if (!olen || olen > SL_TCP_OPTS_MAX)
		return SL_RC_DROP(SL_DROP_MALFORMED);
	if (bpf_xdp_store_bytes(ctx, at, w.buf, olen))
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	*diff += (__u32)bpf_csum_diff((__be32 *)before, olen, (__be32 *)w.buf, olen, 0);
	return SL_CONTINUE;
}

/* A backend's segment that sl_proxy_seq_reply() sent here: its
 * acknowledgement, SACK edges and (SYN-ACK) MSS in the client's terms, and
 * the first acknowledgement of the whole header marks it acknowledged on both
 * sides of the flow. Translated and sent to the client. */
static __always_inline int sl_proxy_translate_reply(struct xdp_md *ctx, struct sl_stats *st)
{
	struct sl_packet pkt;
	struct sl_flow_key key;
	struct sl_nat_entry *nat;
	struct sl_ct_entry *ct;
	struct tcphdr *tcp;
	__u32 len, ack;
	__u64 diff = 0;
	int rc;

	rc = sl_proxy_parse(ctx, &pkt, &key, st);
	if (rc != SL_CONTINUE)
		return rc;
	nat = bpf_map_lookup_elem(&sl_nat, &key);
	if (!nat || !nat->proxy)
		return XDP_PASS; /* aged out since the balancer saw it */
	tcp = pkt.l4;
	if ((void *)(tcp + 1) > (void *)(long)ctx->data_end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	len = sl_proxy_len(pkt.family);
	if (tcp->ack) {
		ack = bpf_ntohl(tcp->ack_seq);
		if (!(nat->proxy & SL_PROXY_ACKED) && (__s32)(ack - nat->proxy_seq) >= (__s32)len) {
			nat->proxy |= SL_PROXY_ACKED;
			ct = bpf_map_lookup_elem(&sl_conntrack, &nat->flow);
			if (ct && ct->proxy)
				ct->proxy |= SL_PROXY_ACKED;
		}
		diff += sl_tcp_set32(&tcp->ack_seq, sl_proxy_ack_back(ack, nat->proxy_seq, len));
	}
	rc = sl_proxy_options_back(ctx, &pkt, nat->proxy_seq, len, &diff);
	if (rc != SL_CONTINUE)
		return rc;
	return sl_nat_reply_translate(ctx, &pkt, nat, diff, st);
}

#endif /* SLUICE_PROXY_H */
