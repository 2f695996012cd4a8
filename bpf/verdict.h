/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * This file contains the return-code convention shared by every stage of the
 * balancer (parse, backend selection, encapsulation). A stage returns an int
 * rc that means exactly one of:
 *
 *   rc >= 0             the packet's fate is decided: rc is the XDP action to
 *                       return (XDP_PASS or XDP_TX);
 *   rc == SL_CONTINUE   the stage is done: go on with the next one;
 *   rc <= SL_RC_DROP(0) the packet is dropped, and SL_RC_REASON(rc) is the
 *                       enum sl_drop_reason to count in sl_stats.drops.
 *
 * The drop codes start below SL_CONTINUE because SL_DROP_MALFORMED is 0.
 * The entry point turns the final rc into a verdict in one place,
 * record_action() in stats.h.
 */
#ifndef SLUICE_VERDICT_H
#define SLUICE_VERDICT_H

#include "lb_shared.h"

#define SL_CONTINUE (-1)
#define SL_RC_DROP(reason) (SL_CONTINUE - 1 - (int)(reason))
#define SL_RC_REASON(rc) ((__u32)(SL_CONTINUE - 1 - (rc)))
#define SL_RC_IS_DROP(rc) ((rc) < SL_CONTINUE)

#endif /* SLUICE_VERDICT_H */
