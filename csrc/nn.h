/* nn.h: forward/backward kernels of the transformer ops (llm.c style: outputs first, then inputs,
 * then sizes; shapes beside each pointer). Rows are tokens. Every kernel splits its rows (or heads)
 * among OpenMP threads; reductions across rows (dw, db, dwte, the mean loss) use fixed blocks summed
 * in a fixed order, so results do not depend on the thread count. Kernels that need scratch return
 * 0, or -1 when it cannot be allocated (outputs are then unspecified). */
#ifndef SPARSEFT_NN_H
#define SPARSEFT_NN_H

#include <stdint.h>

/* Outputs of at least this many bytes are written with streaming (non-temporal) stores: they do not
 * fit in the caches, and a streaming store skips the read of the line a plain store would do first.
 * The module allocates outputs of this size 64-byte aligned so that the streaming applies (2 MiB-
 * aligned mappings advised for huge pages, bigbuf.h). */
#define NN_STREAM_MIN_BYTES ((int64_t)8 << 20)

/* ---- norms ---- */
void layernorm_forward(float *y /* (N,C) */, float *mean /* (N,) */, float *rstd /* (N,) */,
                       const float *x /* (N,C) */, const float *w /* (C,) */, const float *b /* (C,) */,
                       int64_t N, int64_t C, float eps);
/* dw, db are overwritten with the sums over the rows */
int layernorm_backward(float *dx /* (N,C) */, float *dw /* (C,) */, float *db /* (C,) */,
                       const float *dy /* (N,C) */, const float *x /* (N,C) */, const float *w /* (C,) */,
                       const float *mean /* (N,) */, const float *rstd /* (N,) */, int64_t N, int64_t C);
void rmsnorm_forward(float *y /* (N,C) */, float *rstd /* (N,) */, const float *x /* (N,C) */,
                     const float *w /* (C,) */, int64_t N, int64_t C, float eps);
int rmsnorm_backward(float *dx /* (N,C) */, float *dw /* (C,) */, const float *dy /* (N,C) */,
                     const float *x /* (N,C) */, const float *w /* (C,) */, const float *rstd /* (N,) */,
                     int64_t N, int64_t C);

/* ---- activations (elementwise over n floats) ---- */
void gelu_forward(float *y, const float *x, int64_t n);
void gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
void swiglu_forward(float *y, const float *gate, const float *up, int64_t n);
void swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up,
                     int64_t n);

/* ---- rotary embedding, Hugging Face rotate_half convention; sign = +1 forward, -1 backward ---- */
/* inv_freq: the D/2 inverse frequencies, or NULL for theta^(-2i/D) */
int rope_apply(float *y /* (B,T,H,D) */, const float *x /* (B,T,H,D) */,
               const float *inv_freq /* (D/2,) or NULL */, int64_t B, int64_t T, int64_t H, int64_t D,
               double theta, int64_t offset, int sign);
/* rope_apply in two steps, so that a caller can keep the table across calls (the model's layers all
 * rotate the same positions): rope_table writes the (T, D) table (row t: cos of the D/2 angles of
 * position offset + t, then their sin; -1 when scratch cannot be allocated), rope_rotate applies it */
int rope_table(float *cs /* (T,D) */, const float *inv_freq /* (D/2,) or NULL */, int64_t T, int64_t D,
               double theta, int64_t offset);
void rope_rotate(float *y /* (B,T,H,D) */, const float *x /* (B,T,H,D) */, const float *cs /* (T,D) */,
                 int64_t B, int64_t T, int64_t H, int64_t D, int sign);

/* ---- embedding ---- */
void embedding_forward(float *x /* (N,C) */, const int64_t *ids /* (N,) */, const float *wte /* (V,C) */,
                       int64_t N, int64_t C);
/* dwte is overwritten (zeros where no id occurs) */
void embedding_backward(float *dwte /* (V,C) */, const float *dx /* (N,C) */, const int64_t *ids /* (N,) */,
                        int64_t N, int64_t V, int64_t C);

/* ---- softmax cross-entropy on given logits ---- */
/* returns the mean loss over the rows (0 when N == 0) */
float softmax_xent_forward(float *lse /* (N,) */, const float *logits /* (N,K) */,
                           const int64_t *targets /* (N,) */, int64_t N, int64_t K);
void softmax_xent_backward(float *dlogits /* (N,K) */, const float *logits /* (N,K) */,
                           const int64_t *targets /* (N,) */, const float *lse /* (N,) */, float dloss,
                           int64_t N, int64_t K);

/* ---- LM head fused with softmax cross-entropy: logits x w^T built `chunk` rows at a time ---- */
/* loss (mean) and lse; with dx != NULL also the gradients for dloss = 1 in the same pass
 * (dw != NULL: the head's gradient too, overwritten) */
int lm_head_xent_forward(float *loss /* (1,) */, float *lse /* (N,) */, float *dx /* (N,C) or NULL */,
                         float *dw /* (V,C) or NULL */, const float *x /* (N,C) */,
                         const float *w /* (V,C) */, const int64_t *targets /* (N,) */, int64_t N, int64_t C,
                         int64_t V, int64_t chunk);
/* dx (overwritten) and dw (overwritten, when not NULL) for the loss scaled by dloss, recomputing the logits
 */
int lm_head_xent_backward(float *dx /* (N,C) */, float *dw /* (V,C) or NULL */, const float *x /* (N,C) */,
                          const float *w /* (V,C) */, const int64_t *targets /* (N,) */,
                          const float *lse /* (N,) */, float dloss, int64_t N, int64_t C, int64_t V,
                          int64_t chunk);
/* the same, dw (V,C) ACCUMULATED in place (dw += the head's gradient; no V x C temporary): a trainable
 * head, e.g. tied to the token embedding whose gradient it adds to */
int lm_head_xent_backward_into(float *dx /* (N,C) */, float *dw /* (V,C) */, const float *x /* (N,C) */,
                               const float *w /* (V,C) */, const int64_t *targets /* (N,) */,
                               const float *lse /* (N,) */, float dloss, int64_t N, int64_t C, int64_t V,
                               int64_t chunk);
/* rows per logits block of the LM head when the caller passes chunk <= 0 */
int64_t lm_head_default_chunk(int64_t N, int64_t V);

/* ---- AdamW (torch.optim.AdamW semantics), in place ---- */
void adamw_step(float *param, float *m, float *v, const float *grad, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);

/* ---- attention (flash-style; attention.c) ---- */
/* Element strides of a (B, heads, T, D) operand whose D axis is contiguous (stride 1): element
 * [b, h, t, d] is at p[b*sb + h*sh + t*st + d]. Head-major (B,H,T,D) arrays have st = D; q, k, v
 * read in place from the (B, T, 3C) qkv output have st = 3C, sh = D; any sign. */
typedef struct {
    int64_t sb, sh, st;
} att_strides;
/* o = softmax(scale q k^T [causal]) v per head; query head h reads kv head h / (H / Hkv).
 * o must not overlap q, k, v (nor itself). */
int attention_forward(float *o /* (B,H,T,D) */, att_strides so, float *lse /* (B,H,T) contiguous */,
                      const float *q /* (B,H,T,D) */, att_strides sq, const float *k /* (B,Hkv,T,D) */,
                      att_strides sk, const float *v /* (B,Hkv,T,D) */, att_strides sv, int64_t B, int64_t H,
                      int64_t Hkv, int64_t T, int64_t D, float scale, int causal);
/* dq, dk, dv overwritten (they must overlap no input and no other output); the probabilities are
 * recomputed tile by tile from lse */
int attention_backward(float *dq /* (B,H,T,D) */, att_strides sdq, float *dk /* (B,Hkv,T,D) */,
                       att_strides sdk, float *dv /* (B,Hkv,T,D) */, att_strides sdv,
                       const float *dout /* (B,H,T,D) */, att_strides sdo, const float *q /* (B,H,T,D) */,
                       att_strides sq, const float *k /* (B,Hkv,T,D) */, att_strides sk,
                       const float *v /* (B,Hkv,T,D) */, att_strides sv, const float *o /* (B,H,T,D) */,
                       att_strides so, const float *lse /* (B,H,T) contiguous */, int64_t B, int64_t H,
                       int64_t Hkv, int64_t T, int64_t D, float scale, int causal);
/* most scratch bytes one attention call holds with nthreads threads */
int64_t attention_scratch_bytes(int64_t T, int64_t D, int nthreads);

#endif
