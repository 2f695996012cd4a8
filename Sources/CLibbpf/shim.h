/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains what Swift needs from libbpf and the kernel headers but
 * cannot import on its own: function-like macros, variadic callbacks and the
 * few libc declarations Glibc's module leaves out. Each shim is tiny and says
 * why it exists. Symbols are prefixed CLibbpf_.
 */
#ifndef CLIBBPF_SHIM_H
#define CLIBBPF_SHIM_H

#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_ether.h>
#include <net/if.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/mount.h>

/* Swift's Glibc module does not declare setns(2) or CLONE_NEWNET. */
int setns(int fd, int nstype);
static const int CLibbpf_CLONE_NEWNET = 0x40000000;

static inline __u32 CLibbpf_XDP_FLAGS_SKB_MODE(void) { return XDP_FLAGS_SKB_MODE; }
static inline __u32 CLibbpf_XDP_FLAGS_DRV_MODE(void) { return XDP_FLAGS_DRV_MODE; }
static inline __u32 CLibbpf_XDP_FLAGS_UPDATE_IF_NOEXIST(void) { return XDP_FLAGS_UPDATE_IF_NOEXIST; }
static inline __u32 CLibbpf_XDP_FLAGS_REPLACE(void) { return XDP_FLAGS_REPLACE; }

#endif
