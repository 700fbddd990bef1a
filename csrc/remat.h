/* remat.h: rematerialization schedule simulator and fast heuristic planners.
 *
 * NumPy-free, no Python.h. All sizes and node ids are int64_t.
 *
 * Memory model (DESIGN.md, "Remat memory model"): a schedule is a list of steps,
 * encoded as int64: step >= 0 means "compute node step", step < 0 means
 * "free node (-1 - step)". Computing v needs every predecessor resident; the memory
 * of that step is the sum of the resident outputs including v's. peak = max step
 * memory, duration = sum of the durations of all computes.
 *
 * Graphs are passed as CSR adjacency: pred_ptr (n+1,), pred_idx (pred_ptr[n],)
 * lists the predecessors of each node, succ_ptr/succ_idx its successors.
 */
#ifndef SPARSEFT_REMAT_H
#define SPARSEFT_REMAT_H

#include <stdint.h>

/* status codes returned by every function below */
#define REMAT_OK 0
#define REMAT_EBADNODE 1     /* a step names a node outside [0, n) */
#define REMAT_EMISSING 2     /* a compute whose input is not resident */
#define REMAT_ERESIDENT 3    /* a compute of a node that is already resident */
#define REMAT_ENOTRESIDENT 4 /* a free of a node that is not resident */
#define REMAT_ENEVER 5       /* a node that is never computed */
#define REMAT_ENOMEM 6       /* malloc failed */
#define REMAT_EBUDGET 7      /* the heuristic could not stay within the budget */
#define REMAT_ECAPACITY 8    /* the output buffer is too small */
#define REMAT_EOVERFLOW 9    /* the total duration does not fit in int64 */
#define REMAT_ETIME 10       /* the heuristic ran out of its time limit */

/* Input checks used by the Python wrappers before calling the functions below.
 * remat_check_csr: 1 if ptr (n+1,) starts at 0, never decreases, ends at nidx, and every
 * idx (nidx,) entry is in [0, n); else 0.
 * remat_check_perm: 1 if perm (n,) is a permutation of [0, n); else 0. */
int remat_check_csr(const int64_t *ptr, const int64_t *idx, int64_t n, int64_t nidx);
int remat_check_perm(const int64_t *perm, int64_t n);

/* Simulate a schedule.
 * result:  (4,) out: peak, duration, index of the offending step (-1 if none),
 *          offending node (-1 if none)
 * profile: (nsteps,) out, memory after each step (compute: memory during the step), or NULL
 * returns REMAT_OK or an error code; result[0..1] are only meaningful on REMAT_OK. */
int remat_simulate(int64_t *result, int64_t *profile, const int64_t *steps, const int64_t *memory,
                   const int64_t *duration, const int64_t *pred_ptr, const int64_t *pred_idx, int64_t n,
                   int64_t nsteps);

/* Rewrite a valid schedule so that every copy is freed right after its last use
 * (never later), and drop recomputations whose copy is never used. The first
 * compute of every node is kept. Peak and duration never increase.
 * out_steps: (cap,) out; out_n: (1,) out, number of steps written.
 * The input must be valid (check with remat_simulate first); nodes out of range give
 * REMAT_EBADNODE. */
int remat_compact(int64_t *out_steps, int64_t *out_n, const int64_t *steps, const int64_t *pred_ptr,
                  const int64_t *pred_idx, int64_t n, int64_t nsteps, int64_t cap);

/* Stage-based planner. Nodes get their first computation in `order` (stage t computes
 * order[t]); before it, the missing inputs are recomputed (in order position) from
 * whatever is resident. A node is freed once it has no use left; when memory would go
 * over the budget, resident nodes not needed in the current stage are evicted, the one
 * with the largest score memory^mem_exp * (distance to next use)^dist_exp / (cost of
 * recomputing it: its duration plus those of the non-resident ancestors it needs) first.
 * seg_end: (n,) or NULL. If given, node v (not needed by the current stage) is also
 *          freed at the end of stage seg_end[v] when it is still resident from its
 *          first computation (checkpointing policies; seg_end[v] >= n keeps it).
 * out_steps: (cap,) out; info: (3,) out: number of steps, peak, duration.
 * Returns REMAT_OK, REMAT_EBUDGET, REMAT_ECAPACITY or REMAT_ENOMEM. */
int remat_plan_stages(int64_t *out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
                      const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
                      const int64_t *succ_idx, const int64_t *order, const int64_t *seg_end, int64_t n,
                      int64_t budget, double mem_exp, double dist_exp, int64_t cap);

/* Greedy planner: runs remat_plan_stages with a small set of eviction scores and
 * keeps the schedule with the least duration (ties: lower peak).
 * Same outputs as remat_plan_stages. */
int remat_greedy(int64_t *out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
                 const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
                 const int64_t *succ_idx, const int64_t *order, int64_t n, int64_t budget, int64_t cap);

/* DTR (Dynamic Tensor Rematerialization, Kirisame et al. 2021) over `order`: every node computed once
 * in order, evicted inputs rematerialized on demand, and when an output would not fit the budget the
 * resident output with the lowest h = cost / (memory * s) evicted (see dtr.c). heuristic:
 * REMAT_DTR_FULL (cost = duration plus the exact evicted neighbourhood's) or REMAT_DTR_EQ (the
 * neighbourhood approximated by union-find equivalence classes of evicted nodes, never split).
 * lookahead: 0 for s = staleness (steps since the last access), 1 for s = distance in `order` to
 * the next first use. once: (n,) or NULL; a node with once[v] != 0 is never evicted (computed once).
 * keep: (n,) or NULL; nodes with keep[v] != 0 are checkpoints, evicted only when no other node can be
 * (for Belady: before the inputs of frames in progress).
 * A run that needs more than max_computes computations gives up (REMAT_EBUDGET): it thrashes;
 * max_computes <= 0 means 8 n + 1024 (Belady: 64 n + 1024). time_limit > 0: seconds after which the
 * run gives up (REMAT_ETIME); <= 0: none.
 * Outputs as remat_plan_stages, except the steps: *out_steps is a malloc'd buffer of info[0] steps
 * that the caller frees (NULL unless REMAT_OK; the run grows it as it goes). Also REMAT_EOVERFLOW
 * and REMAT_ETIME. */
#define REMAT_DTR_FULL 0
#define REMAT_DTR_EQ 1
/* Belady-style: evict the highest memory * next-use distance / recompute cost (see dtr.c) */
#define REMAT_DTR_BELADY 2
/* Belady's eviction, with each computation's missing ancestors rematerialized as one cone in order
 * position (see dtr.c) */
#define REMAT_DTR_CONE 3
/* Belady, a frame rematerializing its missing input with the costliest cone first (see dtr.c) */
#define REMAT_DTR_LARGEST 4
/* Belady's eviction, a frame rebuilding its inputs in Sethi-Ullman order of their from-scratch
 * memory need and holding each once back: succeeds at every budget >= that need's maximum when
 * nothing is once (see dtr.c) */
#define REMAT_DTR_SU 5
int remat_dtr(int64_t **out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
              const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
              const int64_t *succ_idx, const int64_t *order, const uint8_t *once, const uint8_t *keep,
              int64_t n, int64_t budget, int heuristic, int lookahead, int64_t max_computes,
              double time_limit);

/* remat_su_need: the from-scratch memory need P of every node that REMAT_DTR_SU rebuilds by:
 * P(x) = max(max_i (memory of inputs before i + P(input i)), memory of all inputs + memory(x)), the
 * inputs sorted by P - memory descending (stable), computed in `order` (a topological order). A
 * DTR "su" run fits every budget >= the largest P when no node is once. Sums saturate at INT64_MAX.
 * out_need (n,), memory (n,) (total < 2^62), pred_ptr (n+1,), pred_idx (edges,), order (n,).
 * Returns REMAT_OK or REMAT_ENOMEM. */
int remat_su_need(int64_t *out_need, const int64_t *memory, const int64_t *pred_ptr, const int64_t *pred_idx,
                  const int64_t *order, int64_t n);

/* Helpers shared by the planners.
 * remat_sorted_use_positions: spos (succ_ptr[n],) out, the positions pos[] of each node's users,
 * sorted per node; cursor (n,) out, set to succ_ptr[u].
 * remat_next_use: the first position > t among u's sorted user positions, or INT64_MAX (t must
 * never decrease between calls for the same cursor). */
void remat_sorted_use_positions(int64_t *spos, int64_t *cursor, const int64_t *succ_ptr,
                                const int64_t *succ_idx, const int64_t *pos, int64_t n);
int64_t remat_next_use(const int64_t *spos, int64_t *cursor, const int64_t *succ_ptr, int64_t u, int64_t t);

#endif
