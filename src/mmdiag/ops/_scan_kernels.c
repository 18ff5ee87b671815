/* Fused CPU selective scan: the forward recurrence and its reverse-time adjoint (mmdiag.ops, impl="fused").
 *
 * Built at first use by mmdiag/ops/_scan_cpu.py with the system C compiler (-O3 -march=native -fopenmp), with
 * -DSCAN_DOUBLE=0 (float32) or -DSCAN_DOUBLE=1 (float64) when first needed. docs/scan.md explains the layout and the
 * measured costs; in short:
 *
 * - A vector ("vec", 64 bytes: 16 floats or 8 doubles, GCC/Clang vector extensions) holds one value for each of
 *   VL consecutive channels. A task is (batch, group, block of VL channels); the channels of a block share B_t and
 *   C_t, so the recurrence h[k] <- exp(dt A[k]) h[k] + dt u B[k]_t, y_t = sum_k C[k]_t h[k] is plain vertical
 *   vector arithmetic with no cross-lane work.
 * - Time runs in chunks of VL steps. A chunk's (channel, time) tile of u, delta, z (and dy) is read into VL
 *   time-major vectors: with channels contiguous (token-major maps, as SS2D keeps them) one vector load per step;
 *   with time contiguous (mamba_ssm's (b, d, l)) VL row loads transposed in registers (log2 VL shuffle stages).
 *   Outputs go back the same way. Nothing is transposed in memory.
 * - Every (b, d, l)-like tensor comes with its strides (a ``layout``), and time step t of group gi may read the
 *   position pos[gi l + t] instead of t: SS2D's four scan directions read one feature map in four orders, and
 *   write four maps that the caller sums, with no unfolded copies.
 * - exp is 2^x with x = dt * (A log2 e): a degree-6 polynomial on [-1/2, 1/2] (max relative error 1e-7) of x minus
 *   x rounded to nearest, scaled by 2^round(x): with AVX-512 by vrndscaleps/vscalefps (0 below 2^-149), else by
 *   the 1.5 * 2^23 rounding trick and an integer add to the exponent bits (0 below 2^-125, no denormals); inf at
 *   2^128. float64 uses libm's exp2.
 * - With keep != 0 the forward stores the state at each chunk start. A backward task takes the channel blocks of a
 *   (batch, group), or a part of them, and walks the chunks in reverse with all its blocks in step: per block it
 *   recomputes the chunk's states and decays into small buffers and runs the adjoint recurrence backwards through
 *   them; the blocks' dB/dC terms are accumulated per lane and summed over the lanes once per chunk (a shuffle
 *   reduction of VL vectors at once).
 * - With a rank R (SS2D), delta holds the step sizes' low-rank factors and the kernels form each block's step sizes
 *   from them and its R weight vectors; the backward returns the factors' and the weights' gradients instead.
 * - A chunk's decays are computed before its recurrence (they do not depend on the state), and the chunk code is
 *   inlined and, for n = 16 with contiguous B/C rows (SS2D), compiled with those constants (WITH_FIXED_SHAPE).
 * - Tasks run on the OpenMP threads of the runtime torch loaded (see scan_run).
 */
#include <math.h>
#if defined(__AVX512F__) && !SCAN_DOUBLE
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>

#if SCAN_DOUBLE
typedef double real;
typedef int64_t ireal;
#define VL 8
#else
typedef float real;
typedef int32_t ireal;
#define VL 16
#endif
typedef real vec __attribute__((vector_size(64)));
typedef ireal ivec __attribute__((vector_size(64)));
typedef real uvec __attribute__((vector_size(64), aligned(sizeof(real)))); /* unaligned loads and stores */

#define LOG2E ((real)1.4426950408889634)

/* Strides (in elements) of a (b, g, r, l) view: batch, group, channel within the group (or state index k for
 * B, C, dB, dC; for dB/dC "group" is the task row g * nparts), and time position. */
typedef struct {
    int64_t sb, sg, sc, sl;
} layout;

typedef struct {
    int64_t b, d, l, n, g, nblk, per, softplus, has_z, keep; /* per: channel blocks per task */
    int64_t merge; /* y and du are shared by the groups (their sg = 0): a task runs all groups in turn and adds */
    const real *u, *delta, *bias, *A, *B, *C, *D, *z; /* bias, D, z: NULL if not given */
    real *y, *const *ckpt, *last; /* ckpt[bi]: (nchunk, n, d) chunk-start states of batch element bi */
    const real *dy, *dlast;
    real *du, *ddelta, *dz, *dA, *dD, *dbias, *dB, *dC;
    const int64_t *pos; /* (g, l) time step -> position, or NULL for the identity */
    /* rank R > 0: delta holds the low-rank factors of the step sizes, (b, g, R, l) with R in place of the channels,
     * and the step size of channel c is sum_j dtw[c R + j] * factor j; ddelta then receives the factors' gradient
     * as rows (b, g * nparts, R, l) like dB, and ddtw (b, d, R) the weights' gradient per batch element. */
    int64_t rank;
    const real *dtw;
    real *ddtw;
    layout lu, ldelta, lz, ly, ldy, ldu, lddelta, ldz, lB, lC, ldB, ldC;
} scan_args;

int scan_lanes(void) { return VL; }

/* Per-chunk helpers are inlined into their callers: as calls, their by-value views and tile arrays go through
 * memory, which cost about 13% of a scan (measured). */
#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------------------------- */
/* Lane-wise helpers */

static inline vec vsplat(real x) { return (vec){0} + x; } /* (-0 becomes +0) */
static inline vec vselect(ivec m, vec a, vec b) { return (vec)(((ivec)a & m) | ((ivec)b & ~m)); }
static inline vec vmin(vec a, vec b) { return vselect(a < b, a, b); }
static inline vec vmax(vec a, vec b) { return vselect(a > b, a, b); }

#if SCAN_DOUBLE
static inline vec vexp2(vec x) {
    for (int j = 0; j < VL; ++j) x[j] = exp2(x[j]);
    return x;
}
static inline vec vsoftplus(vec x) { /* torch's softplus: x above 20 passes through */
    for (int j = 0; j < VL; ++j) x[j] = x[j] > 20 ? x[j] : log1p(exp(x[j]));
    return x;
}
#else
/* 2^x: x = k + f with k = round(x), f in [-1/2, 1/2]; 2^f by a degree-6 polynomial. */
static inline vec vexp2_poly(vec f) {
    vec p = vsplat(1.5345812e-4f);
    p = p * f + 1.3399931e-3f;
    p = p * f + 9.6184890e-3f;
    p = p * f + 5.5503288e-2f;
    p = p * f + 2.4022647e-1f;
    p = p * f + 6.9314721e-1f;
    return p * f + 1.0f;
}
#ifdef __AVX512F__
/* AVX-512: round and scale by 2^k in one instruction each (vrndscaleps, vscalefps); 0 below 2^-149, inf at 2^128. */
static inline vec vexp2(vec x) {
    __m512 v = _mm512_min_ps(_mm512_max_ps((__m512)x, _mm512_set1_ps(-150.0f)), _mm512_set1_ps(128.0f));
    __m512 k = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vec)_mm512_scalef_ps((__m512)vexp2_poly((vec)_mm512_sub_ps(v, k)), k);
}
#else
static inline vec vexp2(vec x) {
    const vec magic = vsplat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer in the low bits */
    x = vmax(vmin(x, vsplat(128.0f)), vsplat(-127.0f));
    vec t = x + magic;
    vec p = vexp2_poly(x - (t - magic)); /* of f in [-1/2, 1/2] */
    ivec bits = (ivec)p + ((ivec)t << 23); /* the low bits of t hold k: add k to the exponent */
    return (vec)(bits & ~(ivec)(x < -125.0f));
}
#endif
static inline vec vsoftplus(vec x) {
    /* max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3, to s^13 */
    vec e = vexp2((vec)((ivec)x | INT32_MIN) * LOG2E); /* sets the sign bit: -|x| */
    vec s = e / (2.0f + e), s2 = s * s;
    vec p = vsplat(1.0f / 13);
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    return vmax(x, vsplat(0.0f)) + 2.0f * s * p;
}
#endif

static inline vec vsigmoid(vec x) { return 1 / (1 + vexp2(-x * LOG2E)); }

/* Shuffle masks that split pairs of vectors into lanes with (p & h) == 0 ("lo") and the rest ("hi"). */
#define LO(h, p) ((((p) & (h)) == 0) ? (p) : VL + (p) - (h))
#define HI(h, p) ((((p) & (h)) == 0) ? (p) + (h) : VL + (p))
#if SCAN_DOUBLE
#define MASK(F, h) ((ivec){F(h, 0), F(h, 1), F(h, 2), F(h, 3), F(h, 4), F(h, 5), F(h, 6), F(h, 7)})
#else
#define MASK(F, h)                                                                                                 \
    ((ivec){F(h, 0), F(h, 1), F(h, 2), F(h, 3), F(h, 4), F(h, 5), F(h, 6), F(h, 7), F(h, 8), F(h, 9), F(h, 10),  \
            F(h, 11), F(h, 12), F(h, 13), F(h, 14), F(h, 15)})
#endif

#define TRANSPOSE_STAGE(r, h)                                                                                      \
    for (int i = 0; i < VL; ++i)                                                                                   \
        if (!(i & (h))) {                                                                                          \
            vec a_ = r[i], b_ = r[i + (h)];                                                                        \
            r[i] = __builtin_shuffle(a_, b_, MASK(LO, h));                                                         \
            r[i + (h)] = __builtin_shuffle(a_, b_, MASK(HI, h));                                                   \
        }
#define ROWSUM_STAGE(r, h)                                                                                         \
    for (int i = 0; i < (h); ++i)                                                                                  \
        r[i] = __builtin_shuffle(r[i], r[i + (h)], MASK(LO, h)) + __builtin_shuffle(r[i], r[i + (h)], MASK(HI, h));

/* In-place transpose of a VL x VL tile held as VL vectors. */
static inline void transpose(vec *r) {
#if !SCAN_DOUBLE
    TRANSPOSE_STAGE(r, 8)
#endif
    TRANSPOSE_STAGE(r, 4)
    TRANSPOSE_STAGE(r, 2)
    TRANSPOSE_STAGE(r, 1)
}

/* Lane t of the result = the sum of r[t]'s lanes (r is overwritten). */
static inline vec rowsums(vec *r) {
#if !SCAN_DOUBLE
    ROWSUM_STAGE(r, 8)
#endif
    ROWSUM_STAGE(r, 4)
    ROWSUM_STAGE(r, 2)
    ROWSUM_STAGE(r, 1)
    return r[0];
}

/* Lanes from nv values at src with stride ``stride`` (zero in lanes >= nv), and the inverse. */
static inline vec load_lanes(const real *src, int64_t stride, int nv) {
    if (stride == 1 && nv == VL) return *(const uvec *)src;
    vec v = vsplat(0);
    for (int j = 0; j < nv; ++j) v[j] = src[j * stride];
    return v;
}
static inline void store_lanes(real *dst, int64_t stride, int nv, vec v) {
    if (stride == 1 && nv == VL) {
        *(uvec *)dst = v;
        return;
    }
    for (int j = 0; j < nv; ++j) dst[j * stride] = v[j];
}

/* Position of time step t: pos is the group's row of the position table, or NULL for the identity. */
static inline int64_t P(const int64_t *pos, int64_t t) { return pos ? pos[t] : t; }

/* A block's (or a group's) window on a tensor: element (channel or state index j, step t) at p[j sc + P(t) sl]. */
typedef struct {
    real *p;
    int64_t sc, sl;
    const int64_t *pos;
} view;

/* out[t] lane j = element (j, t0 + t) for j < nv, t < tn (zero elsewhere): a (channel, time) tile, time-major. */
INLINE void load_tile(view v, int64_t t0, int nv, int tn, vec *restrict out) {
    if (v.sc == 1) { /* channels contiguous: one vector per step */
        for (int t = 0; t < VL; ++t) out[t] = t < tn ? load_lanes(v.p + P(v.pos, t0 + t) * v.sl, 1, nv) : vsplat(0);
        return;
    }
    if (!v.pos && v.sl == 1 && nv == VL && tn == VL) { /* time contiguous: rows, transposed in registers */
        for (int j = 0; j < VL; ++j) out[j] = *(const uvec *)(v.p + j * v.sc + t0);
    } else {
        for (int j = 0; j < VL; ++j) {
            out[j] = vsplat(0);
            if (j < nv)
                for (int t = 0; t < tn; ++t) out[j][t] = v.p[j * v.sc + P(v.pos, t0 + t) * v.sl];
        }
    }
    transpose(out);
}

/* The inverse of load_tile for the first nv channels and tn steps, or with ``add`` an addition to what is there;
 * ``in`` may be overwritten. */
INLINE void store_tile(vec *restrict in, view v, int64_t t0, int nv, int tn, int add) {
    if (v.sc == 1) {
        for (int t = 0; t < tn; ++t) {
            real *p = v.p + P(v.pos, t0 + t) * v.sl;
            store_lanes(p, 1, nv, add ? in[t] + load_lanes(p, 1, nv) : in[t]);
        }
        return;
    }
    transpose(in);
    for (int j = 0; j < nv; ++j) {
        if (tn == VL && !v.pos && v.sl == 1)
            *(uvec *)(v.p + j * v.sc + t0) = add ? in[j] + *(uvec *)(v.p + j * v.sc + t0) : in[j];
        else
            for (int t = 0; t < tn; ++t) {
                real *p = v.p + j * v.sc + P(v.pos, t0 + t) * v.sl;
                *p = add ? *p + in[j][t] : in[j][t];
            }
    }
}

static inline void prefetch(const real *p, int for_write) {
    if (for_write)
        __builtin_prefetch(p, 1, 2);
    else
        __builtin_prefetch(p, 0, 2);
}

/* Asks for the cache lines of the tile at steps [t0, t0 + VL) (t0 < l): with time contiguous its rows are separate
 * streams, too many for the hardware prefetchers at large batch sizes; with channels contiguous the positions of a
 * permuted scan direction jump. */
INLINE void prefetch_tile(view v, int64_t t0, int64_t l, int nv, int for_write) {
    if (v.sc == 1) {
        for (int64_t t = t0; t < t0 + VL && t < l; ++t) prefetch(v.p + P(v.pos, t) * v.sl, for_write);
    } else if (!v.pos && v.sl == 1) {
        for (int j = 0; j < nv; ++j) prefetch(v.p + j * v.sc + t0, for_write);
    }
}

/* Pointers to the rows B_t (or C_t) of the chunk's steps: element k of step t0 + t at rows[t][k * v.sc]. */
INLINE void chunk_rows(view v, int64_t t0, int tn, const real **rows) {
    for (int t = 0; t < tn; ++t) rows[t] = v.p + P(v.pos, t0 + t) * v.sl;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Tasks */

typedef struct {
    int64_t bi, gi, c0; /* batch, group, first channel */
    int nv;             /* channels in this block (< VL for a ragged last block) */
} task_t;

/* Block ``blk`` of group ``gi`` in batch ``bi``. */
static task_t block_of(const scan_args *a, int64_t bi, int64_t gi, int64_t blk) {
    task_t t;
    const int64_t r = a->d / a->g;
    t.bi = bi;
    t.gi = gi;
    t.c0 = gi * r + blk * VL;
    t.nv = (int)(r - blk * VL < VL ? r - blk * VL : VL);
    return t;
}

/* The group's row of the position table (NULL: identity). */
static inline const int64_t *group_pos(const scan_args *a, int64_t gi) { return a->pos ? a->pos + gi * a->l : NULL; }

/* The block's window on a (b, g, r, l) tensor with layout L. */
static view block_view(const scan_args *a, const real *base, const layout *L, const task_t *tk) {
    const int64_t r = a->d / a->g;
    view v = {(real *)base + tk->bi * L->sb + tk->gi * L->sg + (tk->c0 - tk->gi * r) * L->sc, L->sc, L->sl,
              group_pos(a, tk->gi)};
    return v;
}

/* Row ``row`` of batch element bi of a (b, rows, n, l) tensor (B, C, dB, dC), time positions of group gi. */
static view row_view(const scan_args *a, const real *base, const layout *L, int64_t bi, int64_t row, int64_t gi) {
    view v = {(real *)base + bi * L->sb + row * L->sg, L->sc, L->sl, group_pos(a, gi)};
    return v;
}

/* A per-channel parameter (delta_bias, D) for the block's lanes; NULL means zero. */
static inline vec channel_lanes(const real *p, const task_t *tk) {
    return p ? load_lanes(p + tk->c0, 1, tk->nv) : vsplat(0);
}

/* Where a block's step sizes (before bias) come from: its tile of delta, or with rank R > 0 its R weight vectors W
 * (lanes = the block's channels) times the factors of each step, element j of step t at
 * factors.p[j * factors.sc + P(t) * factors.sl]. */
typedef struct {
    view tile;
    int64_t rank;
    const vec *W;
    view factors;
} delta_source;

/* A chunk's step sizes before bias, time-major (zero past tn); Ft receives the factor rows of its steps. */
INLINE void chunk_deltas(const delta_source *src, const task_t *tk, int64_t t0, int tn, const real **Ft,
                         vec *restrict xt) {
    if (!src->rank) {
        load_tile(src->tile, t0, tk->nv, tn, xt);
        return;
    }
    chunk_rows(src->factors, t0, tn, Ft);
    for (int t = 0; t < VL; ++t) {
        vec x = vsplat(0);
        for (int64_t j = 0; t < tn && j < src->rank; ++j) x += src->W[j] * Ft[t][j * src->factors.sc];
        xt[t] = x;
    }
}

/* dt and dt * u of a chunk, time-major; x = delta + bias is kept for the softplus derivative. */
INLINE void chunk_inputs(int softplus, view u, const delta_source *delta, const task_t *tk, int64_t t0, int tn,
                         vec bias, const real **Ft, vec *restrict ut, vec *restrict xt, vec *restrict dt,
                         vec *restrict dut) {
    load_tile(u, t0, tk->nv, tn, ut);
    chunk_deltas(delta, tk, t0, tn, Ft, xt);
    for (int t = 0; t < VL; ++t) {
        xt[t] += bias;
        dt[t] = softplus ? vsoftplus(xt[t]) : xt[t];
        dut[t] = dt[t] * ut[t];
    }
}

/* Calls f(n, bs, cs, ...) with n, bs, cs as the constants 16, 1, 1 when they have those values (SS2D's B and C:
 * 16 states, rows contiguous), else as given: with constants the compiler unrolls the state loops and frees
 * registers (the forward takes about 15% less time). */
#define WITH_FIXED_SHAPE(f, n, bs, cs, ...)                                                                        \
    ((n) == 16 && (bs) == 1 && (cs) == 1 ? f(16, 1, 1, __VA_ARGS__) : f(n, bs, cs, __VA_ARGS__))

/* The decays exp(dt_t A_k) of a chunk's steps, As[t n + k]. They do not depend on the state, so they are computed
 * apart from the recurrence, where they would lengthen its dependency chains (a sixth of the forward's time). */
INLINE void chunk_decays(int64_t n, int tn, const vec *restrict A2, const vec *restrict dt, vec *restrict As) {
    for (int t = 0; t < tn; ++t)
        for (int64_t k = 0; k < n; ++k) As[t * n + k] = vexp2(dt[t] * A2[k]);
}

/* Runs the recurrence over the tn steps of a chunk from the state h (updated); ys[t] = sum_k C h. B_t[k] is
 * Bt[t][k * bs], C_t[k] is Ct[t][k * cs]; As is work space for the decays. The read-out sums even and odd k apart
 * (two shorter chains). */
INLINE void scan_chunk(int64_t n, int64_t bs, int64_t cs, int tn, const real *const *Bt, const real *const *Ct,
                       const vec *restrict A2, const vec *restrict dt, const vec *restrict dut, vec *restrict h,
                       vec *restrict As, vec *restrict ys) {
    chunk_decays(n, tn, A2, dt, As);
    for (int t = 0; t < tn; ++t) {
        const real *restrict Bp = Bt[t], *restrict Cp = Ct[t];
        vec y[2] = {vsplat(0), vsplat(0)};
        for (int64_t k = 0; k < n; ++k) {
            vec hk = As[t * n + k] * h[k] + dut[t] * Bp[k * bs];
            h[k] = hk;
            y[k & 1] += Cp[k * cs] * hk;
        }
        ys[t] = y[0] + y[1];
    }
    for (int t = tn; t < VL; ++t) ys[t] = vsplat(0);
}

/* The same from the state Hs[0..n), keeping the states (Hs[(t + 1) n + k] after step t) and the decays
 * (As[t n + k]) for the adjoint; ys (the output, needed for the gate's gradient) only if ys != NULL. */
INLINE void recompute_chunk(int64_t n, int64_t bs, int64_t cs, int tn, const real *const *Bt, const real *const *Ct,
                            const vec *restrict A2, const vec *restrict dt, const vec *restrict dut,
                            vec *restrict Hs, vec *restrict As, vec *restrict ys) {
    chunk_decays(n, tn, A2, dt, As);
    for (int t = 0; t < tn; ++t) {
        const real *restrict Bp = Bt[t], *restrict Cp = Ct[t];
        vec y = vsplat(0);
        for (int64_t k = 0; k < n; ++k) {
            vec hk = As[t * n + k] * Hs[t * n + k] + dut[t] * Bp[k * bs];
            Hs[(t + 1) * n + k] = hk;
            if (ys) y += Cp[k * cs] * hk;
        }
        if (ys) ys[t] = y;
    }
}

/* Reverse-time adjoint through one chunk. G[k] enters as exp(dt_{t+1} A) G_{t+1} of the step after the chunk and
 * leaves as the same for the chunk start; dA accumulates. Per step: ddt[t] = d/d(dt) (before the softplus),
 * ddu[t] = d/du; Pb[k VL + t] and Pc[k VL + t] accumulate the per-lane terms of dB[k, t] and dC[k, t] (summed over
 * the lanes later, once for all blocks of a task). gt[t] is the gradient of the scan output. */
INLINE void adjoint_chunk(int64_t n, int64_t bs, int64_t cs, int tn, const real *const *Bt, const real *const *Ct,
                          const vec *restrict Av, const vec *restrict dt, const vec *restrict dut,
                          const vec *restrict ut, const vec *restrict gt, vec D, const vec *restrict Hs,
                          const vec *restrict As, vec *restrict G, vec *restrict dA, vec *restrict Pb,
                          vec *restrict Pc, vec *restrict ddt, vec *restrict ddu) {
    for (int t = VL - 1; t >= tn; --t) ddt[t] = ddu[t] = vsplat(0);
    for (int t = tn - 1; t >= 0; --t) {
        const real *restrict Bp = Bt[t], *restrict Cp = Ct[t];
        const vec g = gt[t], dtt = dt[t], dutt = dut[t];
        vec vddt = vsplat(0), vddu = vsplat(0);
        for (int64_t k = 0; k < n; ++k) {
            const vec gk = G[k] + Cp[k * cs] * g;
            const vec gprev = As[t * n + k] * gk; /* G for the step before */
            const vec q = gprev * Hs[t * n + k];  /* = gk d(h_t)/d(log decay) */
            Pb[k * VL + t] += gk * dutt;
            Pc[k * VL + t] += g * Hs[(t + 1) * n + k];
            vddu += gk * Bp[k * bs];
            dA[k] += q * dtt;
            vddt += q * Av[k];
            G[k] = gprev;
        }
        ddt[t] = vddt + vddu * ut[t];
        ddu[t] = vddu * dtt + g * D;
    }
}

/* Lane t of v to step t0 + t (t < tn) of row 0 of a window. */
static void store_steps(vec v, view dst, int64_t t0, int tn) {
    if (!dst.pos && dst.sl == 1 && tn == VL)
        *(uvec *)(dst.p + t0) = v;
    else
        for (int t = 0; t < tn; ++t) dst.p[P(dst.pos, t0 + t) * dst.sl] = v[t];
}

/* dst[k, t0 + t] for k < rows, t < tn: the sum over lanes of P[k VL + t] (overwritten); for dB, dC and the
 * step-size factors' gradient. */
static void store_lane_sums(int64_t rows, int64_t t0, int tn, vec *restrict P, view dst) {
    for (int64_t k = 0; k < rows; ++k)
        store_steps(rowsums(P + k * VL), (view){dst.p + k * dst.sc, dst.sc, dst.sl, dst.pos}, t0, tn);
}

/* The block's R weight vectors of the step sizes (lanes = channels) into W. */
static void load_delta_weights(const scan_args *a, const task_t *tk, vec *W) {
    for (int64_t j = 0; j < a->rank; ++j) W[j] = load_lanes(a->dtw + tk->c0 * a->rank + j, a->rank, tk->nv);
}

/* Number of tasks per (batch, group): parts of ``per`` channel blocks, the last one possibly shorter. */
static int64_t nparts(const scan_args *a) { return (a->nblk + a->per - 1) / a->per; }

/* What a task covers: batch element bi, groups [g0, g0 + ng) in turn (all of them with ``merge``, else one), and
 * the channel blocks [blk0, blk0 + nb) of part ``part`` of each. */
typedef struct {
    int64_t bi, g0, ng, part, blk0, nb;
} task_range;

static int64_t ntasks(const scan_args *a) { return a->b * (a->merge ? 1 : a->g) * nparts(a); }

static task_range task_range_of(const scan_args *a, int64_t task) {
    const int64_t np = nparts(a);
    task_range r;
    r.bi = task / ((a->merge ? 1 : a->g) * np);
    r.part = task % np;
    r.g0 = a->merge ? 0 : task / np % a->g;
    r.ng = a->merge ? a->g : 1;
    r.blk0 = r.part * a->per;
    r.nb = r.blk0 + a->per < a->nblk ? a->per : a->nblk - r.blk0; /* >= 1 */
    return r;
}

/* The block's source of step sizes (see delta_source); with a rank, its weight vectors are loaded into W. */
static delta_source delta_source_of(const scan_args *a, const task_t *tk, vec *W) {
    delta_source src = {{0}, a->rank, W, {0}};
    if (a->rank) {
        load_delta_weights(a, tk, W);
        src.factors = row_view(a, a->delta, &a->ldelta, tk->bi, tk->gi, tk->gi);
    } else {
        src.tile = block_view(a, a->delta, &a->ldelta, tk);
    }
    return src;
}

/* Per-block state of a forward task. */
typedef struct {
    task_t tk;
    vec *A2, *h; /* n vectors each */
    vec bias, D;
    view u, z, y; /* the block's windows (z: u when there is no gate) */
    delta_source delta;
} fwd_block;

/* Forward of the channel blocks [blk0, blk0 + nb) of group gi in batch element bi, all blocks advancing chunk by
 * chunk, so that each step's channels are read and written together (whole rows of a token-major map); ``add``:
 * y is added to (the groups share it). */
static int fwd_group(const scan_args *a, int64_t bi, int64_t gi, int64_t blk0, int64_t nb, int add) {
    const int64_t n = a->n, l = a->l, d = a->d;
    const int64_t R = a->rank;
    vec *ws = aligned_alloc(64, sizeof(vec) * (2 * nb * n + 5 * VL + VL * n + nb * R));
    fwd_block *fb = aligned_alloc(64, sizeof(fwd_block) * nb); /* holds vectors: 64-byte aligned */
    if (!ws || !fb) {
        free(ws);
        free(fb);
        return -1;
    }
    vec *ut = ws + 2 * nb * n, *xt = ut + VL, *dt = xt + VL, *dut = dt + VL, *yt = dut + VL, *As = yt + VL;
    vec *weights = As + VL * n; /* per block: R step-size weight vectors */
    const view Bv = row_view(a, a->B, &a->lB, bi, gi, gi), Cv = row_view(a, a->C, &a->lC, bi, gi, gi);
    const real *Bt[VL], *Ct[VL], *Ft[VL];
    for (int64_t i = 0; i < nb; ++i) {
        fwd_block *f = &fb[i];
        f->tk = block_of(a, bi, gi, blk0 + i);
        f->A2 = ws + 2 * i * n, f->h = f->A2 + n;
        f->bias = channel_lanes(a->bias, &f->tk);
        f->D = channel_lanes(a->D, &f->tk);
        f->u = block_view(a, a->u, &a->lu, &f->tk);
        f->delta = delta_source_of(a, &f->tk, weights + i * R);
        f->z = a->has_z ? block_view(a, a->z, &a->lz, &f->tk) : f->u;
        f->y = block_view(a, a->y, &a->ly, &f->tk);
        for (int64_t k = 0; k < n; ++k) {
            f->A2[k] = load_lanes(a->A + f->tk.c0 * n + k, n, f->tk.nv) * LOG2E;
            f->h[k] = vsplat(0);
        }
    }
    for (int64_t t0 = 0; t0 < l; t0 += VL) {
        const int tn = (int)(l - t0 < VL ? l - t0 : VL);
        chunk_rows(Bv, t0, tn, Bt);
        chunk_rows(Cv, t0, tn, Ct);
        for (int64_t i = 0; i < nb; ++i) {
            fwd_block *f = &fb[i];
            const task_t *tk = &f->tk;
            if (a->keep)
                for (int64_t k = 0; k < n; ++k)
                    store_lanes(a->ckpt[bi] + (t0 / VL * n + k) * d + tk->c0, 1, tk->nv, f->h[k]);
            if (t0 + VL < l) {
                prefetch_tile(f->u, t0 + VL, l, tk->nv, 0);
                if (!R) prefetch_tile(f->delta.tile, t0 + VL, l, tk->nv, 0);
                if (a->has_z) prefetch_tile(f->z, t0 + VL, l, tk->nv, 0);
                prefetch_tile(f->y, t0 + VL, l, tk->nv, 1);
            }
            chunk_inputs((int)a->softplus, f->u, &f->delta, tk, t0, tn, f->bias, Ft, ut, xt, dt, dut);
            WITH_FIXED_SHAPE(scan_chunk, n, Bv.sc, Cv.sc, tn, Bt, Ct, f->A2, dt, dut, f->h, As, yt);
            for (int t = 0; t < VL; ++t) yt[t] += f->D * ut[t];
            if (a->has_z) {
                load_tile(f->z, t0, tk->nv, tn, xt);
                for (int t = 0; t < VL; ++t) yt[t] *= xt[t] * vsigmoid(xt[t]);
            }
            store_tile(yt, f->y, t0, tk->nv, tn, add);
        }
    }
    for (int64_t i = 0; i < nb; ++i) {
        const task_t *tk = &fb[i].tk;
        for (int64_t k = 0; k < n; ++k) store_lanes(a->last + (tk->bi * d + tk->c0) * n + k, n, tk->nv, fb[i].h[k]);
    }
    free(ws);
    free(fb);
    return 0;
}

/* Forward task: its groups in turn (see task_range). */
static int fwd_task(const scan_args *a, int64_t task) {
    const task_range r = task_range_of(a, task);
    int err = 0;
    for (int64_t gi = r.g0; gi < r.g0 + r.ng && !err; ++gi) err = fwd_group(a, r.bi, gi, r.blk0, r.nb, gi > r.g0);
    return err;
}

/* Per-block state of a backward task, kept across its chunks. */
typedef struct {
    task_t tk;
    vec *A2, *Av, *G, *dA; /* n vectors each */
    vec *dW;               /* rank vectors: the gradient of the step-size weights (delta.W) */
    vec bias, D, dD, dbias;
    view u, z, dy, du, ddelta, dz; /* the block's windows (z, dz: u when there is no gate; ddelta: unused with a rank) */
    delta_source delta;
} block_state;

/* Chunk work space shared by the blocks of a backward task. */
typedef struct {
    vec *Hs, *As, *Pb, *Pc, *Pf;                        /* (VL + 1) n, VL n, n VL, n VL, rank VL vectors */
    vec *ut, *xt, *dt, *dut, *gt, *ys, *zt, *ddt, *ddu; /* VL vectors each */
    view B, C;                                          /* the task's (batch, group) rows of B and C */
} chunk_space;

/* Backward of one block through chunk ci: recompute, output gate, adjoint; du, ddelta, dz stored, dB/dC terms
 * added to cs->Pb, cs->Pc. */
static void bwd_chunk(const scan_args *a, block_state *bs, int64_t ci, const chunk_space *cs, int add) {
    const task_t *tk = &bs->tk;
    const int64_t n = a->n, l = a->l, d = a->d, t0 = ci * VL;
    const int tn = (int)(l - t0 < VL ? l - t0 : VL);
    vec *ut = cs->ut, *xt = cs->xt, *dt = cs->dt, *dut = cs->dut, *gt = cs->gt, *ys = cs->ys, *zt = cs->zt;
    const real *Bt[VL], *Ct[VL], *Ft[VL];
    if (ci > 0) {
        const view in[] = {bs->u, bs->dy, bs->z, bs->delta.tile}, out[] = {bs->du, bs->ddelta};
        for (int i = 0; i < (a->rank ? 3 : 4); ++i) prefetch_tile(in[i], t0 - VL, l, tk->nv, 0);
        for (int i = 0; i < (a->rank ? 1 : 2); ++i) prefetch_tile(out[i], t0 - VL, l, tk->nv, 1);
        for (int64_t k = 0; k < n; ++k) prefetch(a->ckpt[tk->bi] + ((ci - 1) * n + k) * d + tk->c0, 0);
    }
    for (int64_t k = 0; k < n; ++k) cs->Hs[k] = load_lanes(a->ckpt[tk->bi] + (ci * n + k) * d + tk->c0, 1, tk->nv);
    chunk_inputs((int)a->softplus, bs->u, &bs->delta, tk, t0, tn, bs->bias, Ft, ut, xt, dt, dut);
    chunk_rows(cs->B, t0, tn, Bt);
    chunk_rows(cs->C, t0, tn, Ct);
    WITH_FIXED_SHAPE(recompute_chunk, n, cs->B.sc, cs->C.sc, tn, Bt, Ct, bs->A2, dt, dut, cs->Hs, cs->As,
                     a->has_z ? ys : NULL);
    /* Output gate: dy -> gradient of the scan output (gt), dz; then dD. */
    load_tile(bs->dy, t0, tk->nv, tn, gt);
    if (a->has_z) {
        load_tile(bs->z, t0, tk->nv, tn, zt);
        for (int t = 0; t < VL; ++t) {
            vec sig = vsigmoid(zt[t]);
            vec gz = gt[t] * (ys[t] + bs->D * ut[t]) * sig * (1 + zt[t] * (1 - sig));
            gt[t] *= zt[t] * sig;
            zt[t] = gz;
        }
        store_tile(zt, bs->dz, t0, tk->nv, tn, 0);
    }
    for (int t = 0; t < VL; ++t) bs->dD += gt[t] * ut[t];
    WITH_FIXED_SHAPE(adjoint_chunk, n, cs->B.sc, cs->C.sc, tn, Bt, Ct, bs->Av, dt, dut, ut, gt, bs->D, cs->Hs,
                     cs->As, bs->G, bs->dA, cs->Pb, cs->Pc, cs->ddt, cs->ddu);
    for (int t = 0; t < VL; ++t) {
        if (a->softplus) cs->ddt[t] *= vsigmoid(xt[t]);
        bs->dbias += cs->ddt[t];
    }
    store_tile(cs->ddu, bs->du, t0, tk->nv, tn, add);
    if (!a->rank) {
        store_tile(cs->ddt, bs->ddelta, t0, tk->nv, tn, 0);
        return;
    }
    for (int t = 0; t < tn; ++t) /* factors: per-lane terms, summed over the lanes per chunk; weights: per lane */
        for (int64_t j = 0; j < a->rank; ++j) {
            cs->Pf[j * VL + t] += bs->delta.W[j] * cs->ddt[t];
            bs->dW[j] += cs->ddt[t] * Ft[t][j * bs->delta.factors.sc];
        }
}

/* Backward of the channel blocks [blk0, blk0 + nb) of part ``part`` of group gi in batch element bi, all blocks
 * advancing chunk by chunk so that their dB/dC terms are summed over lanes once per chunk; dB/dC rows are
 * (b, g * nparts, n, l). ``add``: du is added to (the groups share it). */
static int bwd_group(const scan_args *a, int64_t bi, int64_t gi, int64_t part, int64_t blk0, int64_t nb, int add) {
    const int64_t n = a->n, l = a->l, d = a->d, nchunk = (l + VL - 1) / VL, row = gi * nparts(a) + part;
    const view dB = row_view(a, a->dB, &a->ldB, bi, row, gi), dC = row_view(a, a->dC, &a->ldC, bi, row, gi);
    const int64_t R = a->rank;
    vec *ws = aligned_alloc(64, sizeof(vec) * (4 * nb * n + (VL + 1) * n + (3 * n + R) * VL + 9 * VL + 2 * nb * R));
    block_state *bs = aligned_alloc(64, sizeof(block_state) * nb); /* holds vectors: 64-byte aligned */
    if (!ws || !bs) {
        free(ws);
        free(bs);
        return -1;
    }
    chunk_space cs;
    cs.Hs = ws + 4 * nb * n;
    cs.As = cs.Hs + (VL + 1) * n;
    cs.Pb = cs.As + VL * n;
    cs.Pc = cs.Pb + VL * n;
    cs.Pf = cs.Pc + VL * n;
    cs.ut = cs.Pf + VL * R;
    cs.xt = cs.ut + VL, cs.dt = cs.xt + VL, cs.dut = cs.dt + VL, cs.gt = cs.dut + VL, cs.ys = cs.gt + VL;
    cs.zt = cs.ys + VL, cs.ddt = cs.zt + VL, cs.ddu = cs.ddt + VL;
    vec *weights = cs.ddu + VL; /* per block: R step-size weight vectors, then their R gradient vectors */
    cs.B = row_view(a, a->B, &a->lB, bi, gi, gi);
    cs.C = row_view(a, a->C, &a->lC, bi, gi, gi);
    for (int64_t i = 0; i < nb; ++i) {
        block_state *b = &bs[i];
        b->tk = block_of(a, bi, gi, blk0 + i);
        b->A2 = ws + 4 * i * n, b->Av = b->A2 + n, b->G = b->Av + n, b->dA = b->G + n;
        b->bias = channel_lanes(a->bias, &b->tk);
        b->D = channel_lanes(a->D, &b->tk);
        b->dD = b->dbias = vsplat(0);
        b->u = block_view(a, a->u, &a->lu, &b->tk);
        b->delta = delta_source_of(a, &b->tk, weights + 2 * i * R);
        b->dW = weights + (2 * i + 1) * R;
        for (int64_t j = 0; j < R; ++j) b->dW[j] = vsplat(0);
        b->dy = block_view(a, a->dy, &a->ldy, &b->tk);
        b->du = block_view(a, a->du, &a->ldu, &b->tk);
        b->ddelta = R ? b->u : block_view(a, a->ddelta, &a->lddelta, &b->tk);
        b->z = a->has_z ? block_view(a, a->z, &a->lz, &b->tk) : b->u;
        b->dz = a->has_z ? block_view(a, a->dz, &a->ldz, &b->tk) : b->u;
        for (int64_t k = 0; k < n; ++k) {
            b->Av[k] = load_lanes(a->A + b->tk.c0 * n + k, n, b->tk.nv);
            b->A2[k] = b->Av[k] * LOG2E;
            b->G[k] = load_lanes(a->dlast + (b->tk.bi * d + b->tk.c0) * n + k, n, b->tk.nv);
            b->dA[k] = vsplat(0);
        }
    }
    for (int64_t ci = nchunk - 1; ci >= 0; --ci) {
        const int64_t t0 = ci * VL;
        const int tn = (int)(l - t0 < VL ? l - t0 : VL);
        for (int64_t i = 0; i < (2 * n + R) * VL; ++i) cs.Pb[i] = vsplat(0); /* Pb, Pc and Pf */
        for (int64_t i = 0; i < nb; ++i) bwd_chunk(a, &bs[i], ci, &cs, add);
        store_lane_sums(n, t0, tn, cs.Pb, dB);
        store_lane_sums(n, t0, tn, cs.Pc, dC);
        if (R) store_lane_sums(R, t0, tn, cs.Pf, row_view(a, a->ddelta, &a->lddelta, bi, row, gi));
    }
    for (int64_t i = 0; i < nb; ++i) {
        const task_t *tk = &bs[i].tk;
        for (int64_t k = 0; k < n; ++k) store_lanes(a->dA + (tk->bi * d + tk->c0) * n + k, n, tk->nv, bs[i].dA[k]);
        store_lanes(a->dD + tk->bi * d + tk->c0, 1, tk->nv, bs[i].dD);
        store_lanes(a->dbias + tk->bi * d + tk->c0, 1, tk->nv, bs[i].dbias);
        for (int64_t j = 0; j < R; ++j) store_lanes(a->ddtw + (tk->bi * d + tk->c0) * R + j, R, tk->nv, bs[i].dW[j]);
    }
    free(ws);
    free(bs);
    return 0;
}

/* Backward task: its groups in turn (see task_range). */
static int bwd_task(const scan_args *a, int64_t task) {
    const task_range r = task_range_of(a, task);
    int err = 0;
    for (int64_t gi = r.g0; gi < r.g0 + r.ng && !err; ++gi)
        err = bwd_group(a, r.bi, gi, r.part, r.blk0, r.nb, gi > r.g0);
    return err;
}

/* Entry point: runs every task of the forward (backward = 0) or the backward. Built with OpenMP, the tasks are
 * shared by ``nthreads`` threads of the OpenMP runtime, which is torch's own when torch loaded a libgomp.so.1 (the
 * loader resolves our dependency to the library already loaded), so no second pool competes for the cores. Built
 * without it, each caller thread runs tasks first, first + step, ... (the caller releases the GIL). Returns 0, or
 * -1 if a work buffer could not be allocated. */
int scan_run(const scan_args *a, int backward, int64_t first, int64_t step, int nthreads) {
    const int64_t ntask = ntasks(a);
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) reduction(| : err)
#endif
    for (int64_t task = first; task < ntask; task += step) err |= backward ? bwd_task(a, task) : fwd_task(a, task);
    (void)nthreads;
    return err ? -1 : 0;
}

int scan_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
