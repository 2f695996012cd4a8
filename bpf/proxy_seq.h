/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the common path of a flow that carries a PROXY v2
 * header (full NAT, client_address: proxy-v2): the header occupies the first
 * SL_PROXY_V2_LEN_* bytes of the backend's stream, at proxy_seq, so the
 * client's sequence numbers past it are offset forward and the backend's
 * acknowledgements offset back:
 *
 *   client -> backend   seq' = seq + len           (seq at or past proxy_seq - 1:
 *                                                   a keepalive probe carries that) 
 *   backend -> client   ack' = ack - len           (proxy_seq while the backend
 *                                                   has acknowledged only part
 *                                                   of the header)
 *
 * Segments that need more return SL_PROXY_SLOW and take the sl_proxy
 * programs (proxy.h): the stream's start while the header is owed (it carries
 * the header), a SYN with data (its data is removed), and on the backend's
 * side its SYN-ACK (MSS), options that may hold SACK blocks, and every
 * segment until the header is acknowledged.
 */
#ifndef SLUICE_PROXY_SEQ_H
#define SLUICE_PROXY_SEQ_H

#include <linux/bpf.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "lb_shared.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"

/* Not a verdict: the segment goes to the sl_proxy programs. */
#define SL_PROXY_SLOW 0x100

/* The first word of TCP options that hold a timestamp and nothing else (NOP,
 * NOP, kind 8, length 10), as every Linux segment after the handshake does. */
#define SL_TCP_OPTS_NOP_NOP_TS 0x0101080a
#define SL_TCP_DOFF_TS 8 /* words: the header and those 12 bytes */

static __always_inline __u32 sl_proxy_len(__u8 family)
{
	return family == SL_FAMILY_V4 ? SL_PROXY_V2_LEN_V4 : SL_PROXY_V2_LEN_V6;
}

/* Bytes of TCP payload in the packet. */
static __always_inline __u32 sl_tcp_payload_len(const struct sl_packet *pkt, const struct tcphdr *tcp)
{
	__u32 hlen = pkt->l3_len + tcp->doff * SL_IHL_UNIT;

	return pkt->ip_len > hlen ? pkt->ip_len - hlen : 0;
}

/* Sets a 32-bit TCP field (network order in memory) to `value` (host order)
 * and returns the change for the checksum. */
static __always_inline __u64 sl_tcp_set32(__be32 *field, __u32 value)
{
	__be32 now = bpf_htonl(value);
	__u64 diff = sl_csum_diff32(*field, now);

	*field = now;
	return diff;
}

/* The backend's acknowledgement `ack` in the client's stream. */
static __always_inline __u32 sl_proxy_ack_back(__u32 ack, __u32 proxy_seq, __u32 len)
{
	return (__s32)(ack - proxy_seq) >= (__s32)len ? ack - len : proxy_seq;
}

/*
 * Sets a new flow of a proxy-v2 service up: its SYN gives the client's first
 * sequence number (*proxy_seq). Returns 0 for a flow opened by another packet
 * (its start is gone, no header can be written).
 */
static __always_inline int sl_proxy_open(struct xdp_md *ctx, const struct sl_packet *pkt, __u32 *proxy_seq)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;

	if (!pkt->tcp_syn || (void *)(tcp + 1) > end)
		return 0;
	*proxy_seq = bpf_ntohl(tcp->seq) + 1;
	return 1;
}

/* The client's segment of a PROXY flow: SL_PROXY_SLOW for one that must carry
 * the header or lose its SYN's data; else its sequence number is offset
 * (*l4_diff gets the checksum change) and SL_CONTINUE returned. */
static __always_inline int sl_proxy_seq_forward(struct xdp_md *ctx, const struct sl_packet *pkt,
						const struct sl_ct_entry *ct, __u64 *l4_diff)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	__u32 seq;

	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (tcp->syn)
		return sl_tcp_payload_len(pkt, tcp) ? SL_PROXY_SLOW : SL_CONTINUE;
	seq = bpf_ntohl(tcp->seq);
	if (seq == ct->proxy_seq && !(ct->proxy & SL_PROXY_ACKED) && !tcp->rst)
		return SL_PROXY_SLOW;
	/* From one before the start: a keepalive probe of a connection that sent
	 * nothing carries the last byte before it. */
	if ((__s32)(seq - ct->proxy_seq) >= -1)
		*l4_diff = sl_tcp_set32(&tcp->seq, seq + sl_proxy_len(pkt->family));
	return SL_CONTINUE;
}

/* The backend's segment of a PROXY flow: SL_PROXY_SLOW while the header is
 * not acknowledged, for a SYN-ACK, and for options other than a lone
 * timestamp (SACK blocks are offset too); else its acknowledgement is offset
 * back and SL_CONTINUE returned. */
static __always_inline int sl_proxy_seq_reply(struct xdp_md *ctx, const struct sl_packet *pkt,
					      const struct sl_nat_entry *nat, __u64 *l4_diff)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = pkt->l4;
	__be32 *opts = (__be32 *)(tcp + 1);

	if ((void *)(tcp + 1) > end)
		return SL_RC_DROP(SL_DROP_TRUNCATED);
	if (!(nat->proxy & SL_PROXY_ACKED) || tcp->syn)
		return SL_PROXY_SLOW;
	if (tcp->doff != SL_TCP_MIN_DOFF) {
		if (tcp->doff != SL_TCP_DOFF_TS || (void *)(opts + 1) > end ||
		    *opts != bpf_htonl(SL_TCP_OPTS_NOP_NOP_TS))
			return SL_PROXY_SLOW;
	}
	if (tcp->ack)
		*l4_diff = sl_tcp_set32(&tcp->ack_seq, sl_proxy_ack_back(bpf_ntohl(tcp->ack_seq), nat->proxy_seq,
									  sl_proxy_len(pkt->family)));
	return SL_CONTINUE;
}

#endif /* SLUICE_PROXY_SEQ_H */
