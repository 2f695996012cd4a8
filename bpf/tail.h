/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the programs the balancer tail-calls and the prog array
 * that holds them, filled in by libbpf at load: paths that would not fit the
 * balancer's 512-byte stack beside the TCP and UDP paths, or that are rare
 * and long, and so cost nothing on the common paths this way. Nothing
 * crosses a tail call but the context: each parses the frame again. Pinned,
 * so the entries outlive the loader.
 */
#ifndef SLUICE_TAIL_H
#define SLUICE_TAIL_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum sl_tail {
	SL_TAIL_ICMP = 0,        /* ICMP and ICMPv6 (icmp_error.h, nat_icmp.h) */
	SL_TAIL_PROXY = 1,       /* a client's segment that carries the PROXY v2 header (proxy.h) */
	SL_TAIL_PROXY_REPLY = 2, /* a backend's segment of a PROXY flow that needs more than its
	                          * acknowledgement number translated (proxy.h) */
	SL_TAIL__MAX,
};

int sl_icmp(struct xdp_md *ctx);
int sl_proxy(struct xdp_md *ctx);
int sl_proxy_reply(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SL_TAIL__MAX);
	__uint(key_size, sizeof(__u32)); /* no BTF: a prog array's values are program fds */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, int(void *));
} sl_progs SEC(".maps") = {
	.values = {
		[SL_TAIL_ICMP] = (void *)&sl_icmp,
		[SL_TAIL_PROXY] = (void *)&sl_proxy,
		[SL_TAIL_PROXY_REPLY] = (void *)&sl_proxy_reply,
	},
};

#endif /* SLUICE_TAIL_H */
