/* GPU devices of one node: which device indices a task or actor gets, so a
 * worker can export them as CUDA_VISIBLE_DEVICES. */
#ifndef SH_GPUS_H
#define SH_GPUS_H

#include <stdint.h>

#define SH_GPUS_MAX 64 /* devices per node; the mask is a u64 */

/* Free capacity per device in thousandths (1000 = a whole device free).
 * Invariant: free_milli[i] <= 1000 for i < n; the last device of a node that
 * offers a fraction (GPU 1.5) has that fraction as its whole capacity. */
typedef struct sh_gpus_s {
  uint32_t n;                        /* devices, 0 when the node offers none */
  uint32_t cap_milli[SH_GPUS_MAX];   /* each device's capacity */
  uint32_t free_milli[SH_GPUS_MAX];  /* each device's unassigned part */
} sh_gpus_t;

/* Sets up the devices for a node offering `total_milli` (device i has index
 * i; at most SH_GPUS_MAX are used). */
void sh_gpus_init(sh_gpus_t *g, uint64_t total_milli);

/* Checks that a request is one the devices can ever express: under a whole
 * device, or whole devices. 0, or -EINVAL. */
int sh_gpus_valid(uint64_t milli);

/* Chooses devices for `milli` (0: none): whole devices, lowest free indices
 * first, or for a fraction the device with the least room that still fits
 * (fractions pack together). Returns 0 and the choice in *mask, or -EAGAIN
 * when no set of devices has room now. Takes nothing. */
int sh_gpus_pick(const sh_gpus_t *g, uint64_t milli, uint64_t *mask);

/* Takes / gives back `milli` on the devices in `mask` (from sh_gpus_pick). */
void sh_gpus_take(sh_gpus_t *g, uint64_t milli, uint64_t mask);
void sh_gpus_give(sh_gpus_t *g, uint64_t milli, uint64_t mask);

/* Writes the devices of `mask` as "0,2,3" (empty for 0) into out. Returns
 * the length written (out is always NUL-terminated when cap > 0). */
int sh_gpus_format(uint64_t mask, char *out, size_t cap);

#endif
