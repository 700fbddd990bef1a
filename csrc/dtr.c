/* dtr.c: Dynamic Tensor Rematerialization (Kirisame et al., ICLR 2021) as a static planner.
 *
 * The nodes are computed once each in `order`. Before a computation, evicted inputs are
 * rematerialized (recursively, from their own inputs). When the output would not fit the budget,
 * the resident output with the lowest h = cost / (memory * s) is evicted, where cost is the node's
 * duration plus that of its evicted neighbourhood (the evicted nodes connected to it through evicted
 * nodes, which rematerializing it or its users would also recompute) and s is its staleness (steps
 * since its last access) or, with lookahead, the distance in `order` to its next first use. Outputs
 * no computation can read again are freed at once; evicting a node whose inputs were freed makes them
 * needed again (they are rematerialized from their own inputs, back to the sources if need be). A
 * node marked once is never evicted, and neither is a node whose rematerialization would need a
 * freed once node.
 * See remat.h for the memory model and the step encoding. No Python, no NumPy. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "remat.h"

/* computations allowed per node (plus a constant): past 8 n + 1024 a run thrashes (evicts what it
 * needs next, over and over) and gives up with REMAT_EBUDGET rather than run for minutes */
#define DTR_COMPUTES_PER_NODE 8
#define DTR_COMPUTES_EXTRA 1024
/* Belady's limit: its steps are cheaper and it reaches tighter budgets with more recomputation */
#define BELADY_COMPUTES_PER_NODE 64
/* exact neighbourhood search limit: past it, the cost found so far is scaled up as a penalty */
#define DTR_NEIGHBOURHOOD_LIMIT 64

/* a Belady eviction candidate: an upper bound of its score from its direct inputs only */
struct belady_cand {
    double ub;
    int64_t x;
    double num; /* memory * span, the score's numerator */
};

typedef struct {
    /* graph */
    const int64_t *mem, *dur;   /* (n,) */
    const int64_t *pptr, *pidx; /* predecessors: (n+1,), (edges,) */
    const int64_t *sptr, *sidx; /* successors: (n+1,), (edges,) */
    const int64_t *order, *pos; /* (n,) the order and each node's position in it */
    const uint8_t *once;        /* (n,) or NULL */
    const uint8_t *keep;        /* (n,) or NULL: checkpoints, evicted only when nothing else can go */
    int64_t n, budget, cap, max_computes;
    double deadline; /* CLOCK_MONOTONIC seconds past which the run gives up (REMAT_ETIME); 0: none */
    int heuristic, lookahead;
    /* per-node state */
    uint8_t *resident, *computed;
    uint8_t *once_anc; /* (n,) a once node is the node itself or one of its ancestors */
    int64_t *lock;     /* (n,) reads held by computations in progress */
    uint8_t *held;     /* (edges,) input edge k held by the frame of its node */
    int64_t *need;     /* (n,) users not yet computed + evicted users that may be rematerialized */
    int64_t *last;     /* (n,) clock of the last access */
    int64_t *spos;     /* (edges,) users' positions in order, sorted per node */
    int64_t *cursor;   /* (n,) first entry of spos past the current position */
    int64_t *uf;       /* (n,) union-find parent over evicted nodes (DTR_EQ) */
    int64_t *ufcost;   /* (n,) duration of a class's evicted members, at its root (DTR_EQ) */
    int64_t *seen;     /* (n,) visit stamps */
    int64_t *stack;    /* (n,) scratch: neighbourhood search, release cascade */
    int64_t *frames;   /* (n,) rematerialization stack: node */
    int64_t *fnext;    /* (n,) rematerialization stack: next input to check */
    int64_t *spin;     /* (n,) frames in progress that read a node (REMAT_DTR_BELADY) */
    int64_t *live;     /* (n,) resident nodes, unordered */
    int64_t *where;    /* (n,) index of a resident node in live */
    int64_t *su_idx; /* (edges,) REMAT_DTR_SU: each node's inputs by from-scratch need - memory, descending */
    struct belady_cand *cand; /* (n,) Belady's eviction candidates of one choice */
    int64_t nlive, stamp, cur, peak, total, clock, t, w, computes;
    int64_t *out; /* (cap,) steps, grown by emit; handed to the caller on success */
} dtr_state;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* one more computation: REMAT_EBUDGET past the computation cap (the run thrashes), REMAT_ETIME
 * past the deadline (checked every 256 computations) */
static int count_compute(dtr_state *s) {
    if (++s->computes > s->max_computes) return REMAT_EBUDGET;
    if (s->deadline > 0.0 && (s->computes & 255) == 0 && now_seconds() > s->deadline) return REMAT_ETIME;
    return REMAT_OK;
}

/* eviction tier of x: checkpoints (keep) go only when no other node can */
static int keep_tier(const dtr_state *s, int64_t x) {
    return s->keep && s->keep[x] ? 1 : 0;
}

/* append one step, doubling the buffer when full (one run, whatever its length: a second run to
 * learn the size would double the time of a long one) */
static int emit(dtr_state *s, int64_t code) {
    if (s->w == s->cap) {
        int64_t cap = s->cap < 1024 ? 1024 : 2 * s->cap;
        int64_t *out = (int64_t *)realloc(s->out, (size_t)cap * sizeof(int64_t));
        if (!out) return REMAT_ENOMEM;
        s->out = out;
        s->cap = cap;
    }
    s->out[s->w++] = code;
    return REMAT_OK;
}

static int64_t uf_find(int64_t *uf, int64_t x) {
    while (uf[x] != x) {
        uf[x] = uf[uf[x]]; /* path halving */
        x = uf[x];
    }
    return x;
}

/* computed, not resident, and still needed: it will be rematerialized */
static int is_evicted(const dtr_state *s, int64_t x) {
    return s->computed[x] && !s->resident[x] && s->need[x] > 0;
}

static void live_add(dtr_state *s, int64_t x) {
    s->where[x] = s->nlive;
    s->live[s->nlive++] = x;
}

static void live_remove(dtr_state *s, int64_t x) {
    int64_t k = s->where[x], y = s->live[--s->nlive];
    s->live[k] = y;
    s->where[y] = k;
}

/* x is no longer needed (need[x] reached 0): free it if resident; if it was evicted, its inputs
 * lose a user that could read them, and those left unneeded follow. */
static int release(dtr_state *s, int64_t x) {
    int64_t sp = 0;
    s->stack[sp++] = x;
    while (sp > 0) {
        int64_t y = s->stack[--sp];
        if (s->resident[y]) {
            int st = emit(s, -1 - y);
            if (st != REMAT_OK) return st;
            s->resident[y] = 0;
            s->cur -= s->mem[y];
            live_remove(s, y);
            continue;
        }
        if (s->heuristic == REMAT_DTR_EQ) s->ufcost[uf_find(s->uf, y)] -= s->dur[y];
        for (int64_t k = s->pptr[y]; k < s->pptr[y + 1]; k++) {
            int64_t u = s->pidx[k];
            if (--s->need[u] == 0) s->stack[sp++] = u;
        }
    }
    return REMAT_OK;
}

/* Projected cost of rematerializing x: its duration plus that of its evicted neighbourhood. */
static double dtr_cost(dtr_state *s, int64_t x) {
    double cost = (double)s->dur[x] + 1.0;
    int64_t stamp = ++s->stamp;
    if (s->heuristic == REMAT_DTR_EQ) {
        /* one term per equivalence class of evicted neighbours */
        for (int pass = 0; pass < 2; pass++) {
            const int64_t *ptr = pass ? s->sptr : s->pptr, *idx = pass ? s->sidx : s->pidx;
            for (int64_t k = ptr[x]; k < ptr[x + 1]; k++) {
                int64_t u = idx[k];
                if (!is_evicted(s, u)) continue;
                int64_t r = uf_find(s->uf, u);
                if (s->seen[r] == stamp) continue;
                s->seen[r] = stamp;
                cost += (double)s->ufcost[r];
            }
        }
        return cost;
    }
    /* exact: depth-first over the evicted nodes connected to x through evicted nodes, both
     * directions; towards the inputs also through freed nodes, which its rematerialization recomputes */
    int64_t sp = 0, visited = 0;
    s->seen[x] = stamp;
    s->stack[sp++] = x;
    while (sp > 0) {
        int64_t y = s->stack[--sp];
        for (int pass = 0; pass < 2; pass++) {
            const int64_t *ptr = pass ? s->sptr : s->pptr, *idx = pass ? s->sidx : s->pidx;
            for (int64_t k = ptr[y]; k < ptr[y + 1]; k++) {
                int64_t u = idx[k];
                if (s->seen[u] == stamp || s->resident[u] || (pass && s->need[u] == 0)) continue;
                s->seen[u] = stamp;
                cost += (double)s->dur[u] + 1.0;
                if (++visited >= DTR_NEIGHBOURHOOD_LIMIT) return cost * 4.0;
                s->stack[sp++] = u;
            }
        }
    }
    return cost;
}

/* x can be rematerialized later: no freed once node among the non-resident ancestors it would need
 * (an evicted ancestor keeps its own inputs needed, so it is rematerializable). */
static int rematerializable(dtr_state *s, int64_t x) {
    if (!s->once_anc[x]) return 1;
    int64_t stamp = ++s->stamp, sp = 0;
    s->stack[sp++] = x;
    while (sp > 0) {
        int64_t y = s->stack[--sp];
        for (int64_t k = s->pptr[y]; k < s->pptr[y + 1]; k++) {
            int64_t u = s->pidx[k];
            if (s->seen[u] == stamp || s->resident[u] || s->need[u] > 0 || !s->once_anc[u]) continue;
            if (s->once[u]) return 0;
            s->seen[u] = stamp;
            s->stack[sp++] = u;
        }
    }
    return 1;
}

/* x can be evicted: resident, not read by a computation in progress, worth memory, allowed to be
 * computed again, and rematerializable. */
static int evictable(dtr_state *s, int64_t x) {
    if (s->lock[x] > 0 || s->mem[x] == 0 || (s->once && s->once[x])) return 0;
    return rematerializable(s, x);
}

/* x (a needed node, now not resident) adds its duration to its class and merges it with its evicted
 * neighbours' classes (DTR_EQ; classes are never split, so a rematerialized node stays a member) */
static void uf_join(dtr_state *s, int64_t x) {
    s->ufcost[uf_find(s->uf, x)] += s->dur[x];
    for (int pass = 0; pass < 2; pass++) {
        const int64_t *ptr = pass ? s->sptr : s->pptr, *idx = pass ? s->sidx : s->pidx;
        for (int64_t k = ptr[x]; k < ptr[x + 1]; k++) {
            int64_t u = idx[k];
            if (u == x || !is_evicted(s, u)) continue;
            int64_t a = uf_find(s->uf, u), b = uf_find(s->uf, x);
            if (a == b) continue;
            s->uf[a] = b;
            s->ufcost[b] += s->ufcost[a];
        }
    }
}

static void evict(dtr_state *s, int64_t x) {
    s->resident[x] = 0;
    s->cur -= s->mem[x];
    live_remove(s, x);
    if (s->heuristic == REMAT_DTR_EQ) uf_join(s, x);
    /* rematerializing x will read its inputs: they stay needed while x is evicted, and freed ones
     * become needed again (with their own inputs) */
    int64_t sp = 0;
    s->stack[sp++] = x;
    while (sp > 0) {
        int64_t y = s->stack[--sp];
        for (int64_t k = s->pptr[y]; k < s->pptr[y + 1]; k++) {
            int64_t u = s->pidx[k];
            if (s->need[u]++ == 0 && !s->resident[u]) {
                if (s->heuristic == REMAT_DTR_EQ) uf_join(s, u);
                s->stack[sp++] = u;
            }
        }
    }
}

/* Evict the lowest-h resident nodes until `bytes` more fit the budget. */
static int make_room(dtr_state *s, int64_t bytes) {
    while (s->cur + bytes > s->budget) {
        int64_t best = -1;
        double best_h = 0.0;
        int best_tier = 2;
        for (int64_t k = 0; k < s->nlive; k++) {
            int64_t x = s->live[k];
            int tier = keep_tier(s, x);
            if (tier > best_tier || !evictable(s, x)) continue;
            double span;
            if (s->lookahead) {
                int64_t nu = remat_next_use(s->spos, s->cursor, s->sptr, x, s->t);
                span = nu == INT64_MAX ? (double)(s->n + 1) : (double)(nu - s->t);
            } else {
                span = (double)(s->clock - s->last[x] + 1);
            }
            double h = dtr_cost(s, x) / ((double)s->mem[x] * span);
            if (best < 0 || tier < best_tier || h < best_h || (h == best_h && x < best)) {
                best = x;
                best_h = h;
                best_tier = tier;
            }
        }
        if (best < 0) return REMAT_EBUDGET;
        int st = emit(s, -1 - best);
        if (st != REMAT_OK) return st;
        evict(s, best);
    }
    return REMAT_OK;
}

/* Compute v (not resident), rematerializing its evicted inputs first, depth-first. A frame makes two
 * passes over its inputs: the first rematerializes the missing ones, holding each (a lock) once it
 * is back, while the inputs resident from the start stay evictable; the second holds the rest,
 * rematerializing any evicted meanwhile. Held inputs are released when the frame's node is computed.
 * Locks thus cover only what a computation in progress needs, and every frame ends. */
static int materialize(dtr_state *s, int64_t v) {
    int64_t sp = 0;
    s->frames[sp] = v;
    s->fnext[sp++] = 0;
    while (sp > 0) {
        int64_t x = s->frames[sp - 1], i = s->fnext[sp - 1], deg = s->pptr[x + 1] - s->pptr[x];
        if (i < 2 * deg) {
            int64_t k = s->pptr[x] + i % deg, u = s->pidx[k];
            if (s->held[k] || (i < deg && s->resident[u])) {
                s->fnext[sp - 1]++; /* held already, or resident and left for the second pass */
            } else if (s->resident[u]) {
                s->lock[u]++;
                s->held[k] = 1;
                s->fnext[sp - 1]++;
            } else {
                s->frames[sp] = u; /* back here with u resident */
                s->fnext[sp++] = 0;
            }
            continue;
        }
        /* every input of x is resident and locked */
        int st = count_compute(s);
        if (st != REMAT_OK) return st;
        st = make_room(s, s->mem[x]);
        if (st != REMAT_OK) return st;
        if ((st = emit(s, x)) != REMAT_OK) return st;
        if (__builtin_add_overflow(s->total, s->dur[x], &s->total)) return REMAT_EOVERFLOW;
        s->resident[x] = 1;
        live_add(s, x);
        s->cur += s->mem[x];
        if (s->cur > s->peak) s->peak = s->cur;
        s->clock++;
        s->last[x] = s->clock;
        int was_evicted = s->computed[x];
        s->computed[x] = 1;
        sp--;
        for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
            int64_t u = s->pidx[k];
            s->lock[u]--;
            s->held[k] = 0;
            s->last[u] = s->clock;
        }
        if (was_evicted) {
            if (s->heuristic == REMAT_DTR_EQ) s->ufcost[uf_find(s->uf, x)] -= s->dur[x];
            /* x no longer holds its inputs needed */
            for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
                int64_t u = s->pidx[k];
                if (--s->need[u] == 0 && (st = release(s, u)) != REMAT_OK) return st;
            }
        }
    }
    return REMAT_OK;
}

/* Belady: cost of recomputing x, its duration plus that of its non-resident ancestors it would
 * recompute (the search stops at resident nodes; past the limit the cost is scaled up). */
static double belady_cost(dtr_state *s, int64_t x) {
    double cost = (double)s->dur[x] + 1.0;
    int64_t stamp = ++s->stamp, sp = 0, visited = 0;
    s->seen[x] = stamp;
    s->stack[sp++] = x;
    while (sp > 0) {
        int64_t y = s->stack[--sp];
        for (int64_t k = s->pptr[y]; k < s->pptr[y + 1]; k++) {
            int64_t u = s->pidx[k];
            if (s->seen[u] == stamp || s->resident[u]) continue;
            s->seen[u] = stamp;
            cost += (double)s->dur[u] + 1.0;
            if (++visited >= DTR_NEIGHBOURHOOD_LIMIT) return cost * 4.0;
            s->stack[sp++] = u;
        }
    }
    return cost;
}

/* x was just computed (Belady, cone, Sethi-Ullman; its inputs are resident and room was made):
 * record the step and make x resident; a rematerialization no longer holds its inputs needed. */
static int store(dtr_state *s, int64_t x) {
    int st = emit(s, x);
    if (st != REMAT_OK) return st;
    if (__builtin_add_overflow(s->total, s->dur[x], &s->total)) return REMAT_EOVERFLOW;
    s->resident[x] = 1;
    live_add(s, x);
    s->cur += s->mem[x];
    if (s->cur > s->peak) s->peak = s->cur;
    int was_evicted = s->computed[x];
    s->computed[x] = 1;
    for (int64_t k = s->pptr[x]; was_evicted && k < s->pptr[x + 1]; k++) {
        int64_t u = s->pidx[k];
        if (--s->need[u] == 0 && (st = release(s, u)) != REMAT_OK) return st;
    }
    return REMAT_OK;
}

/* candidate a goes before b: higher bound, then lower id */
static int cand_before(const struct belady_cand *a, const struct belady_cand *b) {
    return a->ub > b->ub || (a->ub == b->ub && a->x < b->x);
}

/* restore the heap order (the first candidate goes before its children) below slot i of h (nc,) */
static void cand_sift(struct belady_cand *h, int64_t nc, int64_t i) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= nc) return;
        if (c + 1 < nc && cand_before(&h[c + 1], &h[c])) c++;
        if (!cand_before(&h[c], &h[i])) return;
        struct belady_cand t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

/* Belady: evict the resident node with the highest memory * (next first use - t) / cost until
 * `bytes` more fit; inputs of the computation about to run (lock) are never evicted, and inputs
 * held by frames still rematerializing their own inputs (spin) only when nothing else is left. */
static int belady_make_room(dtr_state *s, int64_t bytes) {
    while (s->cur + bytes > s->budget) {
        /* the candidates of the lowest tier present, with an upper bound of their score from a lower
         * bound of the cost (x and its missing direct inputs: the first nodes belady_cost counts) */
        int64_t nc = 0;
        int best_tier = 4;
        for (int64_t k = 0; k < s->nlive; k++) {
            int64_t x = s->live[k];
            /* tiers: free nodes, then checkpoints, then inputs of frames in progress */
            int tier = (s->spin[x] > 0 ? 2 : 0) + keep_tier(s, x);
            if (tier > best_tier || !evictable(s, x)) continue;
            if (tier < best_tier) {
                best_tier = tier;
                nc = 0;
            }
            int64_t nu = remat_next_use(s->spos, s->cursor, s->sptr, x, s->t);
            double span = nu == INT64_MAX ? (double)(s->n + 1 - s->t) : (double)(nu - s->t);
            double lb = (double)s->dur[x] + 1.0;
            int64_t stamp = ++s->stamp;
            for (int64_t j = s->pptr[x]; j < s->pptr[x + 1]; j++) {
                int64_t u = s->pidx[j];
                if (s->resident[u] || s->seen[u] == stamp) continue;
                s->seen[u] = stamp;
                lb += (double)s->dur[u] + 1.0;
            }
            double num = (double)s->mem[x] * span;
            s->cand[nc++] = (struct belady_cand){num / lb, x, num};
        }
        if (nc == 0) return REMAT_EBUDGET;
        /* the highest score (ties: the lowest id), exact costs taken in bound order (a max-heap)
         * only while a bound can still beat the best: the same choice as scoring every candidate */
        struct belady_cand *h = s->cand;
        for (int64_t i = nc / 2 - 1; i >= 0; i--) cand_sift(h, nc, i);
        int64_t best = -1;
        double best_h = 0.0;
        while (nc > 0) {
            struct belady_cand c = h[0];
            if (best >= 0 && (c.ub < best_h || (c.ub == best_h && c.x > best))) break;
            h[0] = h[--nc];
            cand_sift(h, nc, 0);
            double score = c.num / belady_cost(s, c.x);
            if (best < 0 || score > best_h || (score == best_h && c.x < best)) {
                best = c.x;
                best_h = score;
            }
        }
        int st = emit(s, -1 - best);
        if (st != REMAT_OK) return st;
        evict(s, best);
    }
    return REMAT_OK;
}

/* Belady: compute v, first rematerializing its missing inputs depth-first (the first missing one
 * in input order, again until all are resident: one evicted meanwhile is brought back). */
static int belady_materialize(dtr_state *s, int64_t v) {
    int64_t sp = 0;
    s->frames[sp++] = v;
    for (int64_t k = s->pptr[v]; k < s->pptr[v + 1]; k++) s->spin[s->pidx[k]]++;
    while (sp > 0) {
        int64_t x = s->frames[sp - 1], miss = -1;
        double miss_cost = -1.0;
        for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
            int64_t u = s->pidx[k];
            if (s->resident[u]) continue;
            if (s->heuristic != REMAT_DTR_LARGEST) {
                miss = u; /* the first missing input */
                break;
            }
            /* REMAT_DTR_LARGEST: the missing input with the costliest cone first (Sethi-Ullman) */
            double c = belady_cost(s, u);
            if (c > miss_cost) {
                miss_cost = c;
                miss = u;
            }
        }
        if (miss >= 0) {
            s->frames[sp++] = miss;
            for (int64_t k = s->pptr[miss]; k < s->pptr[miss + 1]; k++) s->spin[s->pidx[k]]++;
            continue;
        }
        int st = count_compute(s);
        if (st != REMAT_OK) return st;
        for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) s->lock[s->pidx[k]]++;
        st = belady_make_room(s, s->mem[x]);
        for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
            s->lock[s->pidx[k]]--;
            s->spin[s->pidx[k]]--;
        }
        if (st != REMAT_OK || (st = store(s, x)) != REMAT_OK) return st;
        sp--;
    }
    return REMAT_OK;
}

/* Sethi-Ullman need (REMAT_DTR_SU): P(x), the memory that computing x from nothing takes when a
 * frame rebuilds its inputs one at a time in the order of su_idx, holding each once it is back:
 * P(x) = max(max_i (mem of inputs before i + P(input i)), mem of all inputs + mem(x)), inputs sorted
 * by P - mem descending (the order that minimizes that maximum). A run never holds more than the
 * frames' finished inputs, so it keeps within any budget >= max P whatever it keeps resident
 * (without once nodes); the resident nodes only shorten the rebuilds. */
static int64_t sat_add(int64_t a, int64_t b) {
    int64_t c;
    return __builtin_add_overflow(a, b, &c) ? INT64_MAX : c;
}

/* P (n,) and each node's inputs in rebuild order (su_idx (edges,), a copy of pred_idx sorted per
 * node), in topological `order`. P may count a node once per frame that holds it, so the sums
 * saturate at INT64_MAX rather than overflow. */
static void su_need(int64_t *P, int64_t *su_idx, const int64_t *mem, const int64_t *pptr, const int64_t *pidx,
                    const int64_t *order, int64_t n) {
    memcpy(su_idx, pidx, (size_t)pptr[n] * sizeof(int64_t));
    for (int64_t t = 0; t < n; t++) {
        int64_t x = order[t], *in = su_idx + pptr[x], deg = pptr[x + 1] - pptr[x];
        /* insertion sort by P - mem descending, stable (fan-in is small) */
        for (int64_t i = 1; i < deg; i++) {
            int64_t u = in[i], key = P[u] - mem[u], j = i;
            while (j > 0 && P[in[j - 1]] - mem[in[j - 1]] < key) {
                in[j] = in[j - 1];
                j--;
            }
            in[j] = u;
        }
        int64_t held = 0, best = 0;
        for (int64_t i = 0; i < deg; i++) {
            int64_t need = sat_add(held, P[in[i]]);
            if (need > best) best = need;
            held += mem[in[i]]; /* distinct inputs: below the total memory (< 2^62, checked by the caller) */
        }
        int64_t last = sat_add(held, mem[x]);
        P[x] = best > last ? best : last;
    }
}

static int su_prepare(dtr_state *s) {
    int64_t n = s->n, ne = s->pptr[n];
    int64_t *P = (int64_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    s->su_idx = (int64_t *)malloc((size_t)(ne > 0 ? ne : 1) * sizeof(int64_t));
    if (!P || !s->su_idx) {
        free(P);
        return REMAT_ENOMEM;
    }
    su_need(P, s->su_idx, s->mem, s->pptr, s->pidx, s->order, n);
    free(P);
    return REMAT_OK;
}

int remat_su_need(int64_t *out_need, const int64_t *memory, const int64_t *pred_ptr, const int64_t *pred_idx,
                  const int64_t *order, int64_t n) {
    /* out_need (n,), memory (n,), pred_ptr (n+1,), pred_idx (edges,), order (n,) topological */
    int64_t ne = pred_ptr[n];
    int64_t *scratch = (int64_t *)malloc((size_t)(ne > 0 ? ne : 1) * sizeof(int64_t));
    if (!scratch) return REMAT_ENOMEM;
    su_need(out_need, scratch, memory, pred_ptr, pred_idx, order, n);
    free(scratch);
    return REMAT_OK;
}

/* Sethi-Ullman: compute v, a frame taking its inputs in su_idx order: a resident one is held at
 * once, a missing one rebuilt first (its own frame); held inputs are never evicted, the frame's
 * inputs not reached yet only when nothing else can go (as Belady's frames hold theirs). */
static int su_materialize(dtr_state *s, int64_t v) {
    int64_t sp = 0;
    s->frames[sp] = v;
    s->fnext[sp++] = 0;
    for (int64_t k = s->pptr[v]; k < s->pptr[v + 1]; k++) s->spin[s->pidx[k]]++;
    while (sp > 0) {
        int64_t x = s->frames[sp - 1], i = s->fnext[sp - 1];
        if (i < s->pptr[x + 1] - s->pptr[x]) {
            int64_t u = s->su_idx[s->pptr[x] + i];
            if (s->resident[u]) {
                s->lock[u]++;
                s->fnext[sp - 1]++;
            } else {
                s->frames[sp] = u; /* back here with u resident */
                s->fnext[sp++] = 0;
                for (int64_t k = s->pptr[u]; k < s->pptr[u + 1]; k++) s->spin[s->pidx[k]]++;
            }
            continue;
        }
        /* every input of x is resident and held */
        int st = count_compute(s);
        if (st == REMAT_OK) st = belady_make_room(s, s->mem[x]);
        if (st != REMAT_OK) return st;
        for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
            s->lock[s->pidx[k]]--;
            s->spin[s->pidx[k]]--;
        }
        if ((st = store(s, x)) != REMAT_OK) return st;
        sp--;
    }
    return REMAT_OK;
}

static int cmp_pos(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Cone: compute v after rematerializing all its missing ancestors (the non-resident nodes it
 * reaches through non-resident nodes) in order position, every read of the cone held (evicted
 * only when nothing else can go, as Belady's frames); a cone node is left to Belady's rule after
 * its last read in the cone. If eviction takes away a node the rest of the cone reads, the cone
 * is collected again from what is resident. */
static int cone_materialize(dtr_state *s, int64_t v) {
    int64_t *list = s->frames, *stk = s->fnext; /* (n,) each: the cone, the search stack */
    for (;;) {
        /* the missing ancestors, depth-first through non-resident nodes */
        int64_t nl = 0, sp = 0, stamp = ++s->stamp;
        s->seen[v] = stamp;
        stk[sp++] = v;
        while (sp > 0) {
            int64_t x = stk[--sp];
            if (x != v) list[nl++] = s->pos[x];
            for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
                int64_t u = s->pidx[k];
                if (s->resident[u] || s->seen[u] == stamp) continue;
                s->seen[u] = stamp;
                stk[sp++] = u;
            }
        }
        /* in order position (a topological order), then v */
        qsort(list, (size_t)nl, sizeof(int64_t), cmp_pos);
        for (int64_t i = 0; i < nl; i++) list[i] = s->order[list[i]];
        list[nl++] = v;
        /* hold every read of the cone */
        for (int64_t i = 0; i < nl; i++)
            for (int64_t k = s->pptr[list[i]]; k < s->pptr[list[i] + 1]; k++) s->spin[s->pidx[k]]++;
        int64_t i = 0;
        int st = REMAT_OK, missing = 0;
        for (; i < nl && st == REMAT_OK; i++) {
            int64_t x = list[i];
            for (int64_t k = s->pptr[x]; k < s->pptr[x + 1] && !missing; k++)
                missing = !s->resident[s->pidx[k]];
            if (missing || (st = count_compute(s)) != REMAT_OK) break;
            for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) s->lock[s->pidx[k]]++;
            st = belady_make_room(s, s->mem[x]);
            for (int64_t k = s->pptr[x]; k < s->pptr[x + 1]; k++) {
                s->lock[s->pidx[k]]--;
                s->spin[s->pidx[k]]--;
            }
            if (st != REMAT_OK) {
                i++; /* its reads are released already */
                break;
            }
            if ((st = store(s, x)) != REMAT_OK) {
                i++;
                break;
            }
        }
        /* release the holds of the cone nodes not computed */
        for (int64_t j = i; j < nl; j++)
            for (int64_t k = s->pptr[list[j]]; k < s->pptr[list[j] + 1]; k++) s->spin[s->pidx[k]]--;
        if (st != REMAT_OK) return st;
        if (!missing) return REMAT_OK;
    }
}

int remat_dtr(int64_t **out_steps, int64_t *info, const int64_t *memory, const int64_t *duration,
              const int64_t *pred_ptr, const int64_t *pred_idx, const int64_t *succ_ptr,
              const int64_t *succ_idx, const int64_t *order, const uint8_t *once, const uint8_t *keep,
              int64_t n, int64_t budget, int heuristic, int lookahead, int64_t max_computes,
              double time_limit) {
    /* *out_steps (info[0],) malloc'd (NULL unless REMAT_OK; the caller frees it), info (3,), memory/duration
     * (n,), pred_ptr/succ_ptr (n+1,), pred_idx/succ_idx (edges,), order (n,), once (n,) or NULL, keep (n,) or
     * NULL */
    info[0] = info[1] = info[2] = 0;
    *out_steps = NULL;
    dtr_state s;
    memset(&s, 0, sizeof(s));
    s.mem = memory;
    s.dur = duration;
    s.pptr = pred_ptr;
    s.pidx = pred_idx;
    s.sptr = succ_ptr;
    s.sidx = succ_idx;
    s.once = once;
    s.keep = keep;
    s.n = n;
    s.max_computes =
        max_computes > 0
            ? max_computes
            : (heuristic >= REMAT_DTR_BELADY ? BELADY_COMPUTES_PER_NODE : DTR_COMPUTES_PER_NODE) * n +
                  DTR_COMPUTES_EXTRA;
    s.deadline = time_limit > 0.0 ? now_seconds() + time_limit : 0.0;
    s.budget = budget;
    s.heuristic = heuristic;
    s.lookahead = lookahead;
    size_t nn = (size_t)(n > 0 ? n : 1);
    size_t ne = (size_t)(succ_ptr[n] > 0 ? succ_ptr[n] : 1);
    s.resident = (uint8_t *)calloc(nn, 1);
    s.once_anc = (uint8_t *)calloc(nn, 1);
    s.held = (uint8_t *)calloc(ne, 1);
    s.computed = (uint8_t *)calloc(nn, 1);
    s.lock = (int64_t *)calloc(nn, sizeof(int64_t));
    s.need = (int64_t *)calloc(nn, sizeof(int64_t));
    s.last = (int64_t *)calloc(nn, sizeof(int64_t));
    s.spos = (int64_t *)malloc(ne * sizeof(int64_t));
    s.cursor = (int64_t *)malloc(nn * sizeof(int64_t));
    s.uf = (int64_t *)malloc(nn * sizeof(int64_t));
    s.ufcost = (int64_t *)calloc(nn, sizeof(int64_t));
    s.seen = (int64_t *)calloc(nn, sizeof(int64_t));
    s.stack = (int64_t *)malloc(nn * sizeof(int64_t));
    s.frames = (int64_t *)malloc(nn * sizeof(int64_t));
    s.fnext = (int64_t *)malloc(nn * sizeof(int64_t));
    s.spin = (int64_t *)calloc(nn, sizeof(int64_t));
    s.live = (int64_t *)malloc(nn * sizeof(int64_t));
    s.where = (int64_t *)malloc(nn * sizeof(int64_t));
    s.cand = (struct belady_cand *)malloc(nn * sizeof(struct belady_cand));
    int64_t *pos = (int64_t *)calloc(nn, sizeof(int64_t));
    int status = REMAT_OK;
    if (!s.resident || !s.once_anc || !s.held || !s.computed || !s.lock || !s.need || !s.last || !s.spos ||
        !s.cursor || !s.uf || !s.ufcost || !s.seen || !s.stack || !s.frames || !s.fnext || !s.spin ||
        !s.live || !s.where || !s.cand || !pos) {
        status = REMAT_ENOMEM;
        goto done;
    }
    for (int64_t t = 0; t < n; t++) pos[order[t]] = t;
    s.order = order;
    s.pos = pos;
    /* once ancestry, in topological order */
    for (int64_t t = 0; once && t < n; t++) {
        int64_t v = order[t];
        s.once_anc[v] = once[v] != 0;
        for (int64_t k = pred_ptr[v]; k < pred_ptr[v + 1]; k++) s.once_anc[v] |= s.once_anc[pred_idx[k]];
    }
    remat_sorted_use_positions(s.spos, s.cursor, succ_ptr, succ_idx, pos, n);
    if (heuristic == REMAT_DTR_SU && (status = su_prepare(&s)) != REMAT_OK) goto done;
    for (int64_t v = 0; v < n; v++) {
        s.need[v] = succ_ptr[v + 1] - succ_ptr[v];
        s.uf[v] = v;
    }
    /* first computations in order; each releases the inputs it was the last user of */
    for (int64_t t = 0; t < n && status == REMAT_OK; t++) {
        int64_t v = order[t];
        s.t = t;
        if (s.computed[v]) continue; /* cannot happen for a permutation; kept for safety */
        status = heuristic == REMAT_DTR_BELADY || heuristic == REMAT_DTR_LARGEST ? belady_materialize(&s, v)
                 : heuristic == REMAT_DTR_CONE                                   ? cone_materialize(&s, v)
                 : heuristic == REMAT_DTR_SU                                     ? su_materialize(&s, v)
                                                                                 : materialize(&s, v);
        for (int64_t k = pred_ptr[v]; status == REMAT_OK && k < pred_ptr[v + 1]; k++) {
            int64_t u = pred_idx[k];
            if (--s.need[u] == 0) status = release(&s, u);
        }
        if (status == REMAT_OK && s.need[v] == 0) status = release(&s, v);
    }
    if (status == REMAT_OK) {
        info[0] = s.w;
        info[1] = s.peak;
        info[2] = s.total;
        *out_steps = s.out;
        s.out = NULL;
    }
done:
    free(s.resident);
    free(s.once_anc);
    free(s.held);
    free(s.computed);
    free(s.lock);
    free(s.need);
    free(s.last);
    free(s.spos);
    free(s.cursor);
    free(s.uf);
    free(s.ufcost);
    free(s.seen);
    free(s.stack);
    free(s.frames);
    free(s.fnext);
    free(s.spin);
    free(s.live);
    free(s.where);
    free(s.su_idx);
    free(s.cand);
    free(s.out);
    free(pos);
    return status;
}
