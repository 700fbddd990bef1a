/* remat.c: rematerialization schedule simulator and fast heuristic planners.
 * See remat.h for the memory model and the step encoding. No Python, no NumPy. */
#include "remat.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* input checks */

int remat_check_csr(const int64_t *ptr, const int64_t *idx, int64_t n, int64_t nidx) {
    /* ptr (n+1,), idx (nidx,) */
    if (ptr[0] != 0 || ptr[n] != nidx) return 0;
    /* offsets never decrease */
    for (int64_t v = 0; v < n; v++) {
        if (ptr[v + 1] < ptr[v]) return 0;
    }
    /* every index names a node */
    for (int64_t k = 0; k < nidx; k++) {
        if (idx[k] < 0 || idx[k] >= n) return 0;
    }
    return 1;
}

int remat_check_perm(const int64_t *perm, int64_t n) {
    /* perm (n,) */
    uint8_t *seen = (uint8_t *)calloc((size_t)(n > 0 ? n : 1), 1);
    if (!seen) return 0;
    int ok = 1;
    /* each value in range and seen once */
    for (int64_t i = 0; i < n && ok; i++) {
        if (perm[i] < 0 || perm[i] >= n || seen[perm[i]])
            ok = 0;
        else
            seen[perm[i]] = 1;
    }
    free(seen);
    return ok;
}

/* ------------------------------------------------------------------------- */
/* simulator */

int remat_simulate(int64_t *result, int64_t *profile, const int64_t *steps, const int64_t *memory,
                   const int64_t *duration, const int64_t *pred_ptr, const int64_t *pred_idx, int64_t n,
                   int64_t nsteps) {
    /* result (4,), profile (nsteps,) or NULL, steps (nsteps,), memory (n,), duration (n,),
     * pred_ptr (n+1,), pred_idx (pred_ptr[n],) */
    result[0] = 0;
    result[1] = 0;
    result[2] = -1;
    result[3] = -1;
    uint8_t *resident = (uint8_t *)calloc((size_t)(n > 0 ? n : 1), 1);
    uint8_t *computed = (uint8_t *)calloc((size_t)(n > 0 ? n : 1), 1);
    if (!resident || !computed) {
        free(resident);
        free(computed);
        return REMAT_ENOMEM;
    }
    int64_t cur = 0, peak = 0, dur = 0;
    int status = REMAT_OK;
    /* walk the steps in order, tracking the resident set and its total size */
    for (int64_t s = 0; s < nsteps; s++) {
        int64_t st = steps[s];
        int64_t v = st >= 0 ? st : -1 - st;
        if (v >= n) {
            result[2] = s;
            result[3] = v;
            status = REMAT_EBADNODE;
            break;
        }
        if (st >= 0) {
            if (resident[v]) {
                result[2] = s;
                result[3] = v;
                status = REMAT_ERESIDENT;
                break;
            }
            /* every input of v must be resident */
            for (int64_t k = pred_ptr[v]; k < pred_ptr[v + 1]; k++) {
                if (!resident[pred_idx[k]]) {
                    result[2] = s;
                    result[3] = pred_idx[k];
                    status = REMAT_EMISSING;
                    break;
                }
            }
            if (status != REMAT_OK) break;
            if (__builtin_add_overflow(dur, duration[v], &dur)) {
                result[2] = s;
                result[3] = v;
                status = REMAT_EOVERFLOW;
                break;
            }
            resident[v] = 1;
            computed[v] = 1;
            cur += memory[v];
            if (cur > peak) peak = cur;
        } else {
            if (!resident[v]) {
                result[2] = s;
                result[3] = v;
                status = REMAT_ENOTRESIDENT;
                break;
            }
            resident[v] = 0;
            cur -= memory[v];
        }
        if (profile) profile[s] = cur;
    }
    /* every node must be computed at least once */
    for (int64_t v = 0; status == REMAT_OK && v < n; v++) {
        if (!computed[v]) {
            result[3] = v;
            status = REMAT_ENEVER;
        }
    }
    if (status == REMAT_OK) {
        result[0] = peak;
        result[1] = dur;
    }
    free(resident);
    free(computed);
    return status;
}

/* ------------------------------------------------------------------------- */
/* eager-free rewrite */

int remat_compact(int64_t *out_steps, int64_t *out_n, const int64_t *steps, const int64_t *pred_ptr,
                  const int64_t *pred_idx, int64_t n, int64_t nsteps, int64_t cap) {
    /* out_steps (cap,), out_n (1,), steps (nsteps,), pred_ptr (n+1,), pred_idx (pred_ptr[n],) */
    *out_n = 0;
    size_t nn = (size_t)(n > 0 ? n : 1), ns = (size_t)(nsteps > 0 ? nsteps : 1);
    uint8_t *first = (uint8_t *)calloc(ns, 1);
    uint8_t *seen = (uint8_t *)calloc(nn, 1);
    uint8_t *useful = (uint8_t *)calloc(ns, 1);
    int64_t *last_use = (int64_t *)malloc(ns * sizeof(int64_t));
    int64_t *need = (int64_t *)malloc(nn * sizeof(int64_t));
    int64_t *copy_last = (int64_t *)malloc(nn * sizeof(int64_t));
    int status = REMAT_OK;
    if (!first || !seen || !useful || !last_use || !need || !copy_last) {
        status = REMAT_ENOMEM;
        goto done;
    }
    /* every step must name a node */
    for (int64_t s = 0; s < nsteps; s++) {
        int64_t v = steps[s] >= 0 ? steps[s] : -1 - steps[s];
        if (v >= n) {
            status = REMAT_EBADNODE;
            goto done;
        }
    }
    /* mark the first compute of every node */
    for (int64_t s = 0; s < nsteps; s++) {
        if (steps[s] >= 0 && !seen[steps[s]]) {
            seen[steps[s]] = 1;
            first[s] = 1;
        }
    }
    /* backward: a copy is useful if it is a first compute or a later useful compute reads it;
     * its last use is the latest such read */
    for (int64_t v = 0; v < n; v++) need[v] = -1;
    for (int64_t s = nsteps - 1; s >= 0; s--) {
        int64_t v = steps[s];
        if (v < 0) continue;
        useful[s] = first[s] || need[v] >= 0;
        last_use[s] = need[v] >= 0 ? need[v] : s;
        need[v] = -1;
        if (!useful[s]) continue;
        /* the inputs' resident copies are read here */
        for (int64_t k = pred_ptr[v]; k < pred_ptr[v + 1]; k++) {
            if (need[pred_idx[k]] < 0) need[pred_idx[k]] = s;
        }
    }
    /* forward: emit useful computes, each copy freed right after its last use */
    int64_t w = 0;
    for (int64_t v = 0; v < n; v++) copy_last[v] = -1;
    for (int64_t s = 0; s < nsteps; s++) {
        int64_t v = steps[s];
        if (v < 0 || !useful[s]) continue;
        if (w >= cap) {
            status = REMAT_ECAPACITY;
            goto done;
        }
        out_steps[w++] = v;
        copy_last[v] = last_use[s];
        /* free the inputs whose last use was this step */
        for (int64_t k = pred_ptr[v]; k < pred_ptr[v + 1]; k++) {
            int64_t p = pred_idx[k];
            if (copy_last[p] == s) {
                if (w >= cap) {
                    status = REMAT_ECAPACITY;
                    goto done;
                }
                out_steps[w++] = -1 - p;
                copy_last[p] = -1;
            }
        }
        /* a copy nobody reads is freed at once */
        if (copy_last[v] == s) {
            if (w >= cap) {
                status = REMAT_ECAPACITY;
                goto done;
            }
            out_steps[w++] = -1 - v;
            copy_last[v] = -1;
        }
    }
    *out_n = w;
done:
    free(first);
    free(seen);
    free(useful);
    free(last_use);
    free(need);
    free(copy_last);
    return status;
}

/* ------------------------------------------------------------------------- */
/* stage-based heuristic planner */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void remat_sorted_use_positions(int64_t *spos, int64_t *cursor, const int64_t *succ_ptr,
                                const int64_t *succ_idx, const int64_t *pos, int64_t n) {
    /* spos (succ_ptr[n],), cursor (n,), succ_ptr (n+1,), succ_idx (succ_ptr[n],), pos (n,) */
    for (int64_t u = 0; u < n; u++) {
        for (int64_t k = succ_ptr[u]; k < succ_ptr[u + 1]; k++) spos[k] = pos[succ_idx[k]];
        qsort(spos + succ_ptr[u], (size_t)(succ_ptr[u + 1] - succ_ptr[u]), sizeof(int64_t), cmp_i64);
        cursor[u] = succ_ptr[u];
    }
}

int64_t remat_next_use(const int64_t *spos, int64_t *cursor, const int64_t *succ_ptr, int64_t u, int64_t t) {
    int64_t end = succ_ptr[u + 1];
    /* advance past uses at or before stage t (t only grows, so this is amortized O(1)) */
    while (cursor[u] < end && spos[cursor[u]] <= t) cursor[u]++;
    return cursor[u] < end ? spos[cursor[u]] : INT64_MAX;
}

/* Cost of recomputing u from what is resident: u's duration plus those of the non-resident
 * ancestors it would need (each once). The search stops after `limit` nodes; the cost found
 * so far is then scaled up as a penalty. seen (n,) holds visit stamps, stack (n,) is scratch. */
static double recompute_cost(int64_t *seen, int64_t *stack, int64_t stamp, const uint8_t *resident,
                             const int64_t *duration, const int64_t *pred_ptr, const int64_t *pred_idx,
                             int64_t u, int64_t limit) {
    double cost = 0.0;
    int64_t sp = 0, visited = 0;
    seen[u] = stamp;
    stack[sp++] = u;
    /* depth-first over the missing ancestors */
    while (sp > 0) {
        int64_t x = stack[--sp];
        cost += (double)duration[x] + 1.0;
        if (++visited >= limit) return cost * 4.0;
        /* push x's inputs that are neither resident nor visited */
        for (int64_t k = pred_ptr[x]; k < pred_ptr[x + 1]; k++) {
            int64_t p = pred_idx[k];
            if (!resident[p] && seen[p] != stamp) {
                seen[p] = stamp;
                stack[sp++] = p;
            }
        }
    }
    return cost;
}

int remat_plan_stages(int64_t *out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
                      const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
                      const int64_t *succ_idx, const int64_t *order, const int64_t *seg_end, int64_t n,
                      int64_t budget, double mem_exp, double dist_exp, int64_t cap) {
    /* out_steps (cap,), info (3,), memory/duration (n,), pred_ptr/succ_ptr (n+1,),
     * pred_idx/succ_idx (edges,), order (n,), seg_end (n,) or NULL */
    info[0] = info[1] = info[2] = 0;
    size_t nn = (size_t)(n > 0 ? n : 1);
    size_t ne = (size_t)(succ_ptr[n] > 0 ? succ_ptr[n] : 1);
    int64_t *pos = (int64_t *)calloc(nn, sizeof(int64_t));
    int64_t *spos = (int64_t *)malloc(ne * sizeof(int64_t));
    int64_t *cursor = (int64_t *)malloc(nn * sizeof(int64_t));
    int64_t *cnt = (int64_t *)calloc(nn, sizeof(int64_t));
    int64_t *mark = (int64_t *)malloc(nn * sizeof(int64_t));
    int64_t *list = (int64_t *)malloc((nn + 1) * sizeof(int64_t));
    int64_t *stack = (int64_t *)malloc(nn * sizeof(int64_t));
    int64_t *seen = (int64_t *)malloc(nn * sizeof(int64_t));
    int64_t *stack2 = (int64_t *)malloc(nn * sizeof(int64_t));
    uint8_t *resident = (uint8_t *)calloc(nn, 1);
    uint8_t *primary = (uint8_t *)calloc(nn, 1);
    int status = REMAT_OK;
    if (!pos || !spos || !cursor || !cnt || !mark || !list || !stack || !seen || !stack2 || !resident ||
        !primary) {
        status = REMAT_ENOMEM;
        goto done;
    }
    /* position of every node in the order */
    for (int64_t t = 0; t < n; t++) pos[order[t]] = t;
    /* successor positions, sorted per node, for next-use queries */
    remat_sorted_use_positions(spos, cursor, succ_ptr, succ_idx, pos, n);
    for (int64_t u = 0; u < n; u++) {
        mark[u] = -1;
        seen[u] = -1;
    }
    int64_t stamp = 0;
    int64_t cur = 0, peak = 0, dur = 0, w = 0;
#define EMIT(x)                       \
    do {                              \
        if (w >= cap) {               \
            status = REMAT_ECAPACITY; \
            goto done;                \
        }                             \
        out_steps[w++] = (x);         \
    } while (0)
    /* one stage per position: recompute the missing inputs, then the node itself */
    for (int64_t t = 0; t < n; t++) {
        int64_t v = order[t];
        /* collect the non-resident ancestors needed (depth-first through missing nodes) */
        int64_t nl = 0, sp = 0;
        for (int64_t k = pred_ptr[v]; k < pred_ptr[v + 1]; k++) {
            int64_t p = pred_idx[k];
            if (!resident[p] && mark[p] != t) {
                mark[p] = t;
                stack[sp++] = p;
            }
        }
        while (sp > 0) {
            int64_t x = stack[--sp];
            list[nl++] = pos[x];
            /* visit x's missing inputs */
            for (int64_t k = pred_ptr[x]; k < pred_ptr[x + 1]; k++) {
                int64_t p = pred_idx[k];
                if (!resident[p] && mark[p] != t) {
                    mark[p] = t;
                    stack[sp++] = p;
                }
            }
        }
        /* recompute in order position, so every input comes before its user */
        qsort(list, (size_t)nl, sizeof(int64_t), cmp_i64);
        for (int64_t i = 0; i < nl; i++) list[i] = order[list[i]];
        list[nl++] = v;
        /* count the reads of each node in this stage; a node with reads left is pinned */
        for (int64_t i = 0; i < nl; i++) {
            int64_t x = list[i];
            for (int64_t k = pred_ptr[x]; k < pred_ptr[x + 1]; k++) cnt[pred_idx[k]]++;
        }
        /* compute the stage's nodes one by one */
        for (int64_t i = 0; i < nl; i++) {
            int64_t x = list[i];
            /* evict until x fits */
            while (cur + memory[x] > budget) {
                int64_t best = -1;
                double best_score = -1.0;
                /* scan resident, unpinned nodes for the largest score */
                for (int64_t u = 0; u < n; u++) {
                    if (!resident[u] || cnt[u] > 0) continue;
                    int64_t nu = remat_next_use(spos, cursor, succ_ptr, u, t);
                    double dist = nu == INT64_MAX ? (double)(n + 1) : (double)(nu - t);
                    double cost =
                        recompute_cost(seen, stack2, stamp++, resident, duration, pred_ptr, pred_idx, u, 256);
                    double score = pow((double)memory[u] + 1.0, mem_exp) * pow(dist, dist_exp) / cost;
                    if (score > best_score) {
                        best_score = score;
                        best = u;
                    }
                }
                if (best < 0) {
                    status = REMAT_EBUDGET;
                    goto done;
                }
                EMIT(-1 - best);
                resident[best] = 0;
                primary[best] = 0;
                cur -= memory[best];
            }
            EMIT(x);
            resident[x] = 1;
            primary[x] = (x == v);
            cur += memory[x];
            if (__builtin_add_overflow(dur, duration[x], &dur)) {
                status = REMAT_EOVERFLOW;
                goto done;
            }
            if (cur > peak) peak = cur;
            /* free inputs with no read left in this stage and no use in a later stage */
            for (int64_t k = pred_ptr[x]; k < pred_ptr[x + 1]; k++) {
                int64_t p = pred_idx[k];
                cnt[p]--;
                if (cnt[p] == 0 && resident[p] && remat_next_use(spos, cursor, succ_ptr, p, t) == INT64_MAX) {
                    EMIT(-1 - p);
                    resident[p] = 0;
                    cur -= memory[p];
                }
            }
            /* a node with no use left at all (e.g. a sink) is freed at once */
            if (cnt[x] == 0 && remat_next_use(spos, cursor, succ_ptr, x, t) == INT64_MAX) {
                EMIT(-1 - x);
                resident[x] = 0;
                cur -= memory[x];
            }
        }
        /* checkpointing policy: drop first-computation copies whose segment ends here */
        if (seg_end) {
            for (int64_t u = 0; u < n; u++) {
                if (resident[u] && primary[u] && seg_end[u] == t) {
                    EMIT(-1 - u);
                    resident[u] = 0;
                    primary[u] = 0;
                    cur -= memory[u];
                }
            }
        }
    }
#undef EMIT
    info[0] = w;
    info[1] = peak;
    info[2] = dur;
done:
    free(pos);
    free(spos);
    free(cursor);
    free(cnt);
    free(mark);
    free(list);
    free(stack);
    free(seen);
    free(stack2);
    free(resident);
    free(primary);
    return status;
}

int remat_greedy(int64_t *out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
                 const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
                 const int64_t *succ_idx, const int64_t *order, int64_t n, int64_t budget, int64_t cap) {
    /* out_steps (cap,), info (3,); other arguments as remat_plan_stages */
    static const double exps[][2] = {{1.0, 1.0}, {1.0, 2.0}, {1.0, 0.5}, {0.0, 1.0},
                                     {1.0, 0.0}, {2.0, 1.0}, {0.5, 1.0}, {1.0, 4.0}};
    const int nexp = (int)(sizeof(exps) / sizeof(exps[0]));
    int64_t *tmp = (int64_t *)malloc((size_t)(cap > 0 ? cap : 1) * sizeof(int64_t));
    if (!tmp) return REMAT_ENOMEM;
    int status = REMAT_EBUDGET;
    int64_t tinfo[3];
    info[0] = info[1] = info[2] = 0;
    /* try each eviction score, keep the cheapest schedule (ties: the lower peak) */
    for (int e = 0; e < nexp; e++) {
        int st = remat_plan_stages(tmp, tinfo, memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx,
                                   order, NULL, n, budget, exps[e][0], exps[e][1], cap);
        if (st == REMAT_ECAPACITY || st == REMAT_ENOMEM || st == REMAT_EOVERFLOW) {
            status = st;
            break;
        }
        if (st != REMAT_OK) continue;
        if (status != REMAT_OK || tinfo[2] < info[2] || (tinfo[2] == info[2] && tinfo[1] < info[1])) {
            memcpy(out_steps, tmp, (size_t)tinfo[0] * sizeof(int64_t));
            info[0] = tinfo[0];
            info[1] = tinfo[1];
            info[2] = tinfo[2];
            status = REMAT_OK;
        }
    }
    free(tmp);
    return status;
}
