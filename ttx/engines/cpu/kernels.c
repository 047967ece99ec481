/* The float32 CPU kernels of ttx's fused decoder (ttx/engines/fused.py), AVX2 + FMA, OpenMP on
 * the process's runtime (torch's own libgomp). Built and loaded by ttx/engines/kernels.py.
 *
 * Decode attention: one query token per row against its cached K/V, every query head of a K/V
 * head (grouped-query attention) served by one pass over that head's columns:
 * softmax(q K^T scale + mask) V as transformers' eager and sdpa attention compute it; masked
 * columns are skipped (their K/V may hold anything, NaN included). torch's bmm-softmax-bmm runs
 * ~100 tiny products a layer at decode shapes, each dominated by its call's fixed cost.
 *
 * RMSNorm (with the residual add before it), SiLU(gate) * up, and the rotary embedding: each
 * one call instead of two to six torch ops. Between the weight matmuls of a decode step each
 * torch op runs with its dispatcher's code and data evicted by the matmul before it, 3-5x its
 * warm time (bench/decode_attention.py measures both). */
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GROUP 16
#define MASKED (-3.0e38f)

/* e^x for x <= 0: 2^n 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by a degree-6 polynomial
 * (relative error ~2e-7); x below -87 (e^x under float's normal range) gives e^-87 */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax(__m256 a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

/* lane c: the sum of a[c]'s lanes */
static inline __m256 reduce8(const __m256 *a) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

/* scores q.k_j * scale of one query head into s (MASKED where the mask is 0); returns their max.
 * Columns below sh (a multiple of 8) are read from ks, the rest from k. */
static inline __attribute__((always_inline)) float scores(
        const float *q, const float *k, const float *ks, int64_t sh, int64_t k_col,
        const uint8_t *m, int64_t cols, float scale, float *s, const int D) {
    __m256 sc = _mm256_set1_ps(scale), low = _mm256_set1_ps(MASKED), mx = low;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {             /* 8 columns at a time, one reduction */
        __m256 acc[8];
        const float *kb = (j < sh ? ks : k) + j * k_col;
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        for (int i = 0; i < D; i += 8) {
            __m256 qi = _mm256_loadu_ps(q + i);
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(kb + c * k_col + i), acc[c]);
        }
        __m256i real = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(m + j)));
        __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(real, _mm256_setzero_si256()));
        __m256 x = _mm256_blendv_ps(low, _mm256_mul_ps(reduce8(acc), sc), keep);
        _mm256_storeu_ps(s + j, x);
        mx = _mm256_max_ps(mx, x);
    }
    float best = hmax(mx);
    for (; j < cols; j++) {
        float x = MASKED;
        if (m[j]) {
            __m256 a = _mm256_setzero_ps();
            const float *kj = (j < sh ? ks : k) + j * k_col;
            for (int i = 0; i < D; i += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kj + i), a);
            x = hsum(a) * scale;
        }
        s[j] = x;
        best = x > best ? x : best;
    }
    return best;
}

/* s_j = exp(s_j - max) (0 where masked); returns their sum */
static float exponentiate(float *s, int64_t cols, float max) {
    __m256 mv = _mm256_set1_ps(max), low = _mm256_set1_ps(MASKED), tot = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
        __m256 x = _mm256_loadu_ps(s + j);
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, mv)), _mm256_cmp_ps(x, low, _CMP_GT_OQ));
        _mm256_storeu_ps(s + j, e);
        tot = _mm256_add_ps(tot, e);
    }
    float total = hsum(tot);
    for (; j < cols; j++) {
        float e = s[j] > MASKED ? _mm256_cvtss_f32(exp8(_mm256_set1_ps(s[j] - max))) : 0.0f;
        s[j] = e;
        total += e;
    }
    return total;
}

/* out = sum_j p_j v_j / total over real columns (v_j from vs for j < sh) */
static inline __attribute__((always_inline)) void weigh(
        const float *p, const float *v, const float *vs, int64_t sh, int64_t v_col,
        const uint8_t *m, int64_t cols, float total, float *out, const int D) {
    __m256 acc[D / 8];
    for (int i = 0; i < D / 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < cols; j++) {
        if (!m[j]) continue;                    /* 0 x NaN would be NaN */
        __m256 pj = _mm256_set1_ps(p[j]);
        const float *vj = (j < sh ? vs : v) + j * v_col;
        for (int i = 0; i < D / 8; i++)
            acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * i), acc[i]);
    }
    __m256 w = _mm256_set1_ps(total > 0 ? 1.0f / total : 0.0f);
    for (int i = 0; i < D / 8; i++) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], w));
}

static inline __attribute__((always_inline)) void head(
        const float *q, int64_t q_head, const float *k, const float *ks, int64_t k_col,
        const float *v, const float *vs, int64_t v_col, int64_t sh, const uint8_t *m, float *out,
        int64_t group, int64_t cols, float scale, float *s, const int D) {
    float total[MAX_GROUP];
    for (int64_t g = 0; g < group; g++) {
        float *sg = s + g * cols;
        total[g] = exponentiate(sg, cols,
                                scores(q + g * q_head, k, ks, sh, k_col, m, cols, scale, sg, D));
    }
    for (int64_t g = 0; g < group; g++)        /* K/V's columns stay in L2 between heads */
        weigh(s + g * cols, v, vs, sh, v_col, m, cols, total[g], out + g * D, D);
}

/* q [rows, kv * group, dim] (strides q_row, q_head), k/v [rows, kv, cols, dim] (strides
 * *_row, *_head, *_col), mask [rows, cols] bytes (stride mask_row; 0: not attended), out
 * [rows, kv * group, dim] contiguous. The last dimension of each is contiguous. With k_new and
 * v_new ([rows, kv, dim], strides *_row, *_head) not NULL, they are first written into column
 * cols - 1 of k and v: the decoded token's K/V, stored while its rows' pages are being read
 * anyway (a separate copy misses cache and TLB on every one of the rows x kv strips). With
 * src and shared not NULL, row r reads its first shared[r] columns (rounded down to a multiple
 * of 8, below cols - 1) from row src[r]: the traces of a prompt hold equal copies of its K/V,
 * and reading one copy for all keeps it in cache (cascade attention; the same sums in the same
 * order, so the same result to the bit). Returns
 * 0, or -1 for shapes it does not serve (dim other than 64 or 128, group above 16) or no
 * memory. */
int ttx_decode_attention(const float *q, int64_t q_row, int64_t q_head,
                         float *k, int64_t k_row, int64_t k_head, int64_t k_col,
                         float *v, int64_t v_row, int64_t v_head, int64_t v_col,
                         const float *k_new, int64_t kn_row, int64_t kn_head,
                         const float *v_new, int64_t vn_row, int64_t vn_head,
                         const uint8_t *mask, int64_t mask_row,
                         const int64_t *src, const int64_t *shared, float *out,
                         int64_t rows, int64_t kv, int64_t group, int64_t dim, int64_t cols,
                         float scale) {
    if ((dim != 64 && dim != 128) || group < 1 || group > MAX_GROUP) return -1;
    int failed = 0;
    #pragma omp parallel
    {
        float *s = malloc(sizeof(float) * group * (cols > 0 ? cols : 1));
        if (s == NULL) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < rows * kv; t++) {
            if (s == NULL) continue;
            int64_t r = t / kv, h = t % kv;
            const float *qt = q + r * q_row + h * group * q_head;
            float *kt = k + r * k_row + h * k_head, *vt = v + r * v_row + h * v_head;
            const float *ks = kt, *vs = vt;
            int64_t sh = 0;
            if (src != NULL && src[r] >= 0 && src[r] < rows) {   /* else: its own columns */
                sh = shared[r] < cols - 1 ? shared[r] : cols - 1;
                sh = sh > 0 ? sh & ~(int64_t)7 : 0;
                ks = k + src[r] * k_row + h * k_head;
                vs = v + src[r] * v_row + h * v_head;
            }
            const uint8_t *m = mask + r * mask_row;
            if (k_new != NULL && cols > 0) {
                memcpy(kt + (cols - 1) * k_col, k_new + r * kn_row + h * kn_head, sizeof(float) * dim);
                memcpy(vt + (cols - 1) * v_col, v_new + r * vn_row + h * vn_head, sizeof(float) * dim);
            }
            float *ot = out + t * group * dim;
            if (dim == 64)
                head(qt, q_head, kt, ks, k_col, vt, vs, v_col, sh, m, ot, group, cols, scale, s, 64);
            else
                head(qt, q_head, kt, ks, k_col, vt, vs, v_col, sh, m, ot, group, cols, scale, s,
                     128);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* h += delta (delta may be NULL); out = weight * h / sqrt(mean(h^2) + eps), per row of n
 * (transformers' LlamaRMSNorm in float32, after the residual add) */
void ttx_add_rms_norm(float *h, const float *delta, const float *weight, float eps,
                      float *out, int64_t rows, int64_t n) {
    #pragma omp parallel for schedule(static) if (rows * n >= (1 << 17))
    for (int64_t r = 0; r < rows; r++) {
        float *x = h + r * n, *o = out + r * n;
        const float *dr = delta ? delta + r * n : NULL;
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            if (dr) {
                v = _mm256_add_ps(v, _mm256_loadu_ps(dr + i));
                _mm256_storeu_ps(x + i, v);
            }
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        float sum = hsum(acc);
        for (; i < n; i++) {
            if (dr) x[i] += dr[i];
            sum += x[i] * x[i];
        }
        float inv = 1.0f / sqrtf(sum / (float)n + eps);
        __m256 w = _mm256_set1_ps(inv);
        for (i = 0; i + 8 <= n; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i),
                                                  _mm256_mul_ps(_mm256_loadu_ps(x + i), w)));
        for (; i < n; i++) o[i] = weight[i] * (x[i] * inv);
    }
}

/* silu(g) = g / (1 + e^-g), from e = e^-|g| <= 1: g / (1 + e) for g >= 0, g e / (1 + e) below */
static inline __m256 silu8(__m256 g) {
    __m256 absg = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), g);
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), absg));
    __m256 num = _mm256_blendv_ps(_mm256_mul_ps(g, e), g, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ));
    return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* out[r] = silu(gate_up[r, :inter]) * gate_up[r, inter:], rows of 2 inter */
void ttx_silu_mul(const float *gate_up, float *out, int64_t rows, int64_t inter) {
    #pragma omp parallel for schedule(static) if (rows * inter >= (1 << 17))
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * inter, *u = g + inter;
        float *o = out + r * inter;
        int64_t i = 0;
        for (; i + 8 <= inter; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
        for (; i < inter; i++) {
            float buf[8] = {g[i]}, res[8];
            _mm256_storeu_ps(res, silu8(_mm256_loadu_ps(buf)));
            o[i] = res[0] * u[i];
        }
    }
}

/* In place, the first `heads` heads of each token's [heads, dim] block (token stride `stride`):
 * x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1), with that sign already on sin's first
 * half (`sin` as ttx.engines.fused builds it); cos, sin [tokens, dim] contiguous */
void ttx_rotary(float *x, int64_t tokens, int64_t stride, int64_t heads, int64_t dim,
                const float *cos, const float *sin) {
    int64_t half = dim / 2;
    #pragma omp parallel for schedule(static) if (tokens * heads * dim >= (1 << 17))
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * dim, *s = sin + t * dim;
        for (int64_t h = 0; h < heads; h++) {
            float *a = x + t * stride + h * dim, *b = a + half;
            int64_t i = 0;
            for (; i + 8 <= half; i += 8) {
                __m256 x1 = _mm256_loadu_ps(a + i), x2 = _mm256_loadu_ps(b + i);
                __m256 lo = _mm256_add_ps(_mm256_mul_ps(x2, _mm256_loadu_ps(s + i)),
                                          _mm256_mul_ps(x1, _mm256_loadu_ps(c + i)));
                __m256 hi = _mm256_add_ps(_mm256_mul_ps(x1, _mm256_loadu_ps(s + half + i)),
                                          _mm256_mul_ps(x2, _mm256_loadu_ps(c + half + i)));
                _mm256_storeu_ps(a + i, lo);
                _mm256_storeu_ps(b + i, hi);
            }
            for (; i < half; i++) {
                float x1 = a[i], x2 = b[i];
                a[i] = x2 * s[i] + x1 * c[i];
                b[i] = x1 * s[half + i] + x2 * c[half + i];
            }
        }
    }
}
