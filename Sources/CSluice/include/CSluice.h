/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the C side of the Swift package's view of the data
 * plane: the kernel/user header from bpf/ (lb_shared.h is a link to it, so
 * there is one definition) and the BPF objects embedded into the binary.
 */
#ifndef CSLUICE_H
#define CSLUICE_H

#include <stddef.h>
#include "lb_shared.h"

/* The compiled BPF objects (objects.c, with the bytes the Makefile generates
 * from bpf/build/). Each returns the ELF bytes and sets *size. */
const unsigned char *CSluice_balancer_object(size_t *size);
const unsigned char *CSluice_decap_object(size_t *size);

#endif
