// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * This file contains the programs of the live forwarding benchmark
 * (sluice-bench --only live), never shipped with lbctl:
 *
 *   live_gen   the traffic generator, run by BPF_PROG_TEST_RUN in live-frames
 *              mode with the generator veth as ingress: it writes the frame
 *              template of live_gen_cfg over the page (live frames are
 *              recycled without their contents being restored, and the
 *              balancer's tunnel header overwrites the old Ethernet header),
 *              optionally gives every frame a new source address and port,
 *              and returns XDP_TX, which the kernel turns into a transmit
 *              on that veth, so the frame arrives at its peer.
 *   live_sink  attached to the generator veth: counts what comes back (and
 *              how much of it is IPv4-in-IPv4) and drops it. Any XDP program
 *              there is also what lets the peer's XDP_TX frames arrive.
 *   live_swap  the floor: stands in for the balancer on its veth, swaps the
 *              MAC addresses, counts and returns XDP_TX.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The frame every generated packet starts as: Ethernet, IPv4, TCP, payload. */
#define LIVE_FRAME_LEN 64
#define LIVE_IP_OFF ETH_HLEN
#define LIVE_TCP_OFF (ETH_HLEN + (int)sizeof(struct iphdr))

/* Flags of struct live_gen_cfg. */
#define LIVE_GEN_VARY_SOURCE 1

/* What user space writes before a run; counter is the generator's own. */
struct live_gen_cfg {
	__u64 frame[LIVE_FRAME_LEN / 8]; /* bytes in wire order */
	__u32 flags;
	__u32 counter;
};

/* One CPU's count of frames seen by the sink or the swap floor. */
struct live_count {
	__u64 packets;
	__u64 bytes;
	__u64 ipip;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct live_gen_cfg);
} live_gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct live_count);
} live_sink_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct live_count);
} live_swap_count SEC(".maps");

/* RFC 1624: the checksum after one 16-bit word changed from old to new. */
static __always_inline __u16 live_csum_replace(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32) new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("xdp")
int live_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct live_gen_cfg *cfg;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 zero = 0, n;
	__u16 old, new;

	cfg = bpf_map_lookup_elem(&live_gen_cfg, &zero);
	if (!cfg || data + LIVE_FRAME_LEN > end)
		return XDP_ABORTED;
	/* Eight 64-bit stores rather than memcpy's 64 byte stores: the packet
	 * pointer's alignment is unknown to clang, unaligned access is fine here. */
#pragma unroll
	for (int i = 0; i < LIVE_FRAME_LEN / 8; i++)
		((__u64 *)data)[i] = cfg->frame[i];
	if (!(cfg->flags & LIVE_GEN_VARY_SOURCE))
		return XDP_TX;

	/* A new flow per frame: the low 16 bits of the source address and the
	 * source port count up from the template's (2^31 flows before a repeat);
	 * both checksums follow. Only this program's one CPU writes counter. */
	n = cfg->counter++;
	ip = data + LIVE_IP_OFF;
	tcp = data + LIVE_TCP_OFF;

	old = ((__u16 *)&ip->saddr)[1];
	new = bpf_htons(bpf_ntohs(old) + (__u16)(n >> 15));
	((__u16 *)&ip->saddr)[1] = new;
	ip->check = live_csum_replace(ip->check, old, new);
	tcp->check = live_csum_replace(tcp->check, old, new);

	old = tcp->source;
	new = bpf_htons(bpf_ntohs(old) + (__u16)(n & 0x7fff));
	tcp->source = new;
	tcp->check = live_csum_replace(tcp->check, old, new);
	return XDP_TX;
}

static __always_inline void live_count(void *map, struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct live_count *c;
	__u32 zero = 0;

	c = bpf_map_lookup_elem(map, &zero);
	if (!c)
		return;
	c->packets++;
	c->bytes += end - data;
	if ((void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_IPIP)
		c->ipip++;
}

SEC("xdp")
int live_sink(struct xdp_md *ctx)
{
	live_count(&live_sink_count, ctx);
	return XDP_DROP;
}

SEC("xdp")
int live_swap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	live_count(&live_swap_count, ctx);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
