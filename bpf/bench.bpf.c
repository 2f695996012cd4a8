// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * This file contains the programs `make bench` measures the balancer against
 * with BPF_PROG_TEST_RUN; they are never attached or shipped.
 *
 *   bench_pass     XDP_PASS: the cost of a pass itself (the XDP_PASS floor)
 *   bench_swap_tx  swaps the MACs and returns XDP_TX (the forwarding floor)
 *   bench_encap    grows the head by an outer IPv4 header, writes a fixed
 *                  Ethernet + outer IPv4 header and returns XDP_TX: the least
 *                  work any tunnelling balancer must do (the encapsulation floor)
 *   bench_encap_lookup  one lookup of the frame's flow in an LRU hash keyed
 *                  and valued like sl_conntrack, then bench_encap's work: the
 *                  least any tunnelling balancer with a flow table does per
 *                  established packet (the flow-table floor)
 *   bench_wrapper  restores the frame, then tail-calls the program under test
 *
 * With repeat > 1 the kernel runs the program again on the frame the previous
 * pass left behind, so an encapsulating program would see its own output.
 * bench_wrapper undoes that before every pass: it moves the head back to the
 * template's length, copies the template's bytes over the frame, and
 * tail-calls slot 0 of bench_target (a floor, or the real sl_balancer). Every
 * figure is taken through it, floors included, so its cost is the same in all.
 * Before the copy it writes a pass counter into the template at vary_off: at
 * the TCP source port a pass is a new flow, anywhere unread by the program
 * under test it only keeps the work the same.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"
#include "lb_shared.h"

/* The largest frame the wrapper restores. */
#define BENCH_FRAME_MAX 128

/* The frame every pass starts from. User space writes len, vary_off and data
 * (seq is the wrapper's). */
struct bench_frame {
	__u32 len;                   /* bytes of data used: 14..BENCH_FRAME_MAX */
	__u32 vary_off;              /* where the 16-bit pass counter is written in data */
	__u32 seq;                   /* the pass counter */
	__u32 pad;
	__u8 data[BENCH_FRAME_MAX];
};

/* The template frame: an array of one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_template SEC(".maps");

/* The program under test, in slot 0. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_target SEC(".maps");

SEC("xdp")
int bench_wrapper(struct xdp_md *ctx)
{
	struct bench_frame *tpl;
	__u32 zero = 0, len, off;
	__u64 cur;

	tpl = bpf_map_lookup_elem(&bench_template, &zero);
	if (!tpl)
		return XDP_ABORTED;
	len = tpl->len;
	off = tpl->vary_off;
	if (len < ETH_HLEN || len > BENCH_FRAME_MAX || off > BENCH_FRAME_MAX - sizeof(__u16))
		return XDP_ABORTED;
	*(__u16 *)&tpl->data[off] = (__u16)tpl->seq++;

	/* The previous pass may have grown the head: move it back. The empty
	 * asm keeps clang from folding the length into 32-bit pointer
	 * arithmetic, which the verifier refuses. */
	cur = (void *)(long)ctx->data_end - (void *)(long)ctx->data;
	asm volatile("" : "+r"(cur));
	if (cur != len && bpf_xdp_adjust_head(ctx, (int)cur - (int)len))
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, tpl->data, len))
		return XDP_ABORTED;

	bpf_tail_call(ctx, &bench_target, 0);
	return XDP_ABORTED; /* slot 0 empty */
}

SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

static __always_inline int bench_swap_macs(struct sl_eth *eth)
{
	__u16 *dst = (__u16 *)eth->dst, *src = (__u16 *)eth->src, tmp;

	tmp = dst[0]; dst[0] = src[0]; src[0] = tmp;
	tmp = dst[1]; dst[1] = src[1]; src[1] = tmp;
	tmp = dst[2]; dst[2] = src[2]; src[2] = tmp;
	return XDP_TX;
}

SEC("xdp")
int bench_swap_tx(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct sl_eth *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	return bench_swap_macs(eth);
}

/* The MAC swap after a bpf_fib_lookup() of the IPv4 frame's destination in
 * this namespace: what resolving a NAT next hop per packet would add (the
 * balancer reads it from a map instead). Read-only; the result is not used. */
SEC("xdp")
int bench_fib_swap(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct sl_eth *eth = (void *)(long)ctx->data;
	struct iphdr *iph = (void *)(eth + 1);
	struct bpf_fib_lookup fib = {};

	if ((void *)(iph + 1) > data_end)
		return XDP_DROP;
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = iph->protocol;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = iph->saddr;
	fib.ipv4_dst = iph->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) < 0)
		return XDP_DROP;
	return bench_swap_macs(eth);
}

/* The flow-table floor's table: the balancer's conntrack key and entry, and
 * the frame's one flow, recorded by the first pass. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sl_flow_key);
	__type(value, struct sl_ct_entry);
} bench_flows SEC(".maps");

static __always_inline int bench_encap_fixed(struct xdp_md *ctx)
{
	void *data, *data_end;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end)
		return XDP_DROP;
	/* A fixed header, nothing computed: Ethernet 02:47:57:00:00:01 <-
	 * 02:00:00:00:00:bb, IPv4; IPv4 192.0.2.10 -> 10.1.0.21, protocol 4,
	 * DF, TTL 64, total length 60 (the 40-byte inner packet of the bench
	 * frame) and its checksum. Word stores: clang 14 drops the stores
	 * before a struct copy from a constant here. */
	*(__be32 *)(data + 0) = bpf_htonl(0x02475700);
	*(__be32 *)(data + 4) = bpf_htonl(0x00010200);
	*(__be32 *)(data + 8) = bpf_htonl(0x000000bb);
	*(__be32 *)(data + 12) = bpf_htonl(0x08004500);  /* ethertype, version+IHL, TOS */
	*(__be32 *)(data + 16) = bpf_htonl(0x003c0000);  /* total length, ID */
	*(__be32 *)(data + 20) = bpf_htonl(0x40004004);  /* DF, TTL, protocol */
	*(__be32 *)(data + 24) = bpf_htonl(0x6e9ec000);  /* checksum, source */
	*(__be32 *)(data + 28) = bpf_htonl(0x020a0a01);  /* source, destination */
	*(__be16 *)(data + 32) = bpf_htons(0x0015);
	return XDP_TX;
}

SEC("xdp")
int bench_encap(struct xdp_md *ctx)
{
	return bench_encap_fixed(ctx);
}

/* The flow's key is read at the fixed offsets of the bench's IPv4 TCP frame
 * (no parse: the balancer's parse is part of what it is measured for). */
SEC("xdp")
int bench_encap_lookup(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct sl_flow_key key;
	struct sl_ct_entry *ct;

	if (data + ETH_HLEN + sizeof(struct iphdr) + 4 > data_end)
		return XDP_DROP;
	__builtin_memset(&key, 0, sizeof(key));
	key.src[0] = *(__u32 *)(data + 26);
	key.dst[0] = *(__u32 *)(data + 30);
	key.sport = *(__u16 *)(data + 34);
	key.dport = *(__u16 *)(data + 36);
	key.proto = IPPROTO_TCP;
	key.family = SL_FAMILY_V4;
	ct = bpf_map_lookup_elem(&bench_flows, &key);
	if (!ct) {
		struct sl_ct_entry entry;

		__builtin_memset(&entry, 0, sizeof(entry));
		bpf_map_update_elem(&bench_flows, &key, &entry, BPF_ANY);
	} else if (ct->backend_id == SL_NO_BACKEND) {
		return XDP_DROP; /* never: keeps the load */
	}
	return bench_encap_fixed(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
