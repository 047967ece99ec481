/* Decode attention on CPU (AVX2 + FMA): one query token per row against its cached K/V, every
 * query head of a K/V head (grouped-query attention) served by one pass over that head's
 * columns. softmax(q K^T scale + mask) V, as transformers' eager and sdpa attention compute it,
 * in float32; masked columns are skipped (their K/V may hold anything, NaN included).
 *
 * torch's bmm-softmax-bmm runs ~100 tiny products a layer at decode shapes, each dominated by
 * its call's fixed cost; this reads each column's K and V once from memory for all query heads
 * of its K/V head and runs at the machine's memory bandwidth (bench/tts_engine.py).
 * Built and loaded by ttx/engines/attention.py; parallel over (row, K/V head) with OpenMP (the
 * process's runtime: torch's own libgomp). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

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

/* scores q.k_j * scale of one query head into s (MASKED where the mask is 0); returns their max */
static inline __attribute__((always_inline)) float scores(
        const float *q, const float *k, int64_t k_col, const uint8_t *m, int64_t cols,
        float scale, float *s, const int D) {
    __m256 sc = _mm256_set1_ps(scale), low = _mm256_set1_ps(MASKED), mx = low;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {             /* 8 columns at a time, one reduction */
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        for (int i = 0; i < D; i += 8) {
            __m256 qi = _mm256_loadu_ps(q + i);
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + (j + c) * k_col + i), acc[c]);
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
            for (int i = 0; i < D; i += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + j * k_col + i), a);
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

/* out = sum_j p_j v_j / total over real columns */
static inline __attribute__((always_inline)) void weigh(
        const float *p, const float *v, int64_t v_col, const uint8_t *m, int64_t cols,
        float total, float *out, const int D) {
    __m256 acc[D / 8];
    for (int i = 0; i < D / 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < cols; j++) {
        if (!m[j]) continue;                    /* 0 x NaN would be NaN */
        __m256 pj = _mm256_set1_ps(p[j]);
        for (int i = 0; i < D / 8; i++)
            acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * v_col + 8 * i), acc[i]);
    }
    __m256 w = _mm256_set1_ps(total > 0 ? 1.0f / total : 0.0f);
    for (int i = 0; i < D / 8; i++) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], w));
}

static inline __attribute__((always_inline)) void head(
        const float *q, int64_t q_head, const float *k, int64_t k_col, const float *v,
        int64_t v_col, const uint8_t *m, float *out, int64_t group, int64_t cols, float scale,
        float *s, const int D) {
    float total[MAX_GROUP];
    for (int64_t g = 0; g < group; g++) {
        float *sg = s + g * cols;
        total[g] = exponentiate(sg, cols, scores(q + g * q_head, k, k_col, m, cols, scale, sg, D));
    }
    for (int64_t g = 0; g < group; g++)        /* K/V's columns stay in L2 between heads */
        weigh(s + g * cols, v, v_col, m, cols, total[g], out + g * D, D);
}

/* q [rows, kv * group, dim] (strides q_row, q_head), k/v [rows, kv, cols, dim] (strides
 * *_row, *_head, *_col), mask [rows, cols] bytes (stride mask_row; 0: not attended), out
 * [rows, kv * group, dim] contiguous. The last dimension of each is contiguous. Returns 0, or
 * -1 for shapes it does not serve (dim other than 64 or 128, group above 16) or no memory. */
int ttx_decode_attention(const float *q, int64_t q_row, int64_t q_head,
                         const float *k, int64_t k_row, int64_t k_head, int64_t k_col,
                         const float *v, int64_t v_row, int64_t v_head, int64_t v_col,
                         const uint8_t *mask, int64_t mask_row, float *out,
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
            const float *kt = k + r * k_row + h * k_head, *vt = v + r * v_row + h * v_head;
            const uint8_t *m = mask + r * mask_row;
            float *ot = out + t * group * dim;
            if (dim == 64)
                head(qt, q_head, kt, k_col, vt, v_col, m, ot, group, cols, scale, s, 64);
            else
                head(qt, q_head, kt, k_col, vt, v_col, m, ot, group, cols, scale, s, 128);
        }
        free(s);
    }
    return failed ? -1 : 0;
}
