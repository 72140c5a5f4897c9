/* Antialiased bilinear resampling of an RGBX region into RGB (see _aaresize.h).
 *
 * One output row at a time: the vertical pass blends the rows it needs into one row of floats (the loop
 * over bytes vectorises; built for AVX2 as well where the compiler can pick at run time), then the
 * horizontal pass blends 4 floats per tap with SSE (AVX2 + FMA when the CPU has them; FASTLOAD_NO_AVX2=1
 * turns that off), rounds, and writes 3 bytes per pixel. Working in float with one
 * rounding at the end keeps the result within 0.5 levels of the exact filter (torch's uint8 kernel and PIL
 * round to 8 bits between the passes).
 */
#include "_aaresize.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define AA_SSE2 1
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AA_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define AA_MULTIVERSION
#endif

static float triangle(float x) {
    x = fabsf(x);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

int aa_axis_plan(aa_axis *ax, double b0, double b1, int lo, int hi, int n) {
    double scale = (b1 - b0) / n;
    double support = scale >= 1.0 ? scale : 1.0;
    double inv = scale >= 1.0 ? 1.0 / scale : 1.0;
    int stride = (int)ceil(support) * 2 + 2;
    memset(ax, 0, sizeof(*ax));
    ax->start = (int *)malloc(sizeof(int) * (size_t)n);
    ax->len = (int *)malloc(sizeof(int) * (size_t)n);
    ax->w = (float *)malloc(sizeof(float) * (size_t)n * (size_t)stride);
    if (ax->start == NULL || ax->len == NULL || ax->w == NULL) {
        aa_axis_free(ax);
        return -1;
    }
    ax->stride = stride;
    ax->n = n;
    for (int i = 0; i < n; i++) {
        double center = b0 + (i + 0.5) * scale;
        int x0 = (int)floor(center - support + 0.5), x1 = (int)floor(center + support + 0.5);
        if (x0 < lo) x0 = lo;
        if (x1 > hi) x1 = hi;
        if (x1 - x0 > stride) x1 = x0 + stride;
        if (x1 <= x0) {             /* a span narrower than a pixel at the edge: take the nearest pixel */
            x0 = center < lo ? lo : (center >= hi ? hi - 1 : (int)center);
            x1 = x0 + 1;
        }
        float *w = ax->w + (size_t)i * stride;
        double total = 0.0;
        for (int j = x0; j < x1; j++) {
            w[j - x0] = triangle((float)((j - center + 0.5) * inv));
            total += w[j - x0];
        }
        if (total <= 0.0) {
            for (int j = x0; j < x1; j++) w[j - x0] = 1.0f / (float)(x1 - x0);
        } else {
            for (int j = x0; j < x1; j++) w[j - x0] = (float)(w[j - x0] / total);
        }
        for (int j = x1 - x0; j < stride; j++) w[j] = 0.0f;
        ax->start[i] = x0;
        ax->len[i] = x1 - x0;
    }
    int longest = 1;        /* every output gets exactly ``longest`` taps from here on, zeros padding */
    for (int i = 0; i < n; i++)
        if (ax->len[i] > longest) longest = ax->len[i];
    for (int i = 1; i < n; i++)
        memmove(ax->w + (size_t)i * longest, ax->w + (size_t)i * stride, sizeof(float) * (size_t)longest);
    ax->stride = longest;
    return 0;
}

void aa_axis_free(aa_axis *ax) {
    free(ax->start);
    free(ax->len);
    free(ax->w);
    memset(ax, 0, sizeof(*ax));
}

/* out[x] = sum_k w[k] * rows[k][x] for x < n; rows are ``stride`` bytes apart. */
AA_MULTIVERSION
static void blend_rows(const unsigned char *src, size_t stride, const float *w, int len, int n, float *out) {
    int k = 0;
    if (len >= 2) {
        const unsigned char *a = src, *b = src + stride;
        float wa = w[0], wb = w[1];
        for (int x = 0; x < n; x++) out[x] = wa * a[x] + wb * b[x];
        k = 2;
    } else {
        float wa = w[0];
        for (int x = 0; x < n; x++) out[x] = wa * src[x];
        k = 1;
    }
    for (; k + 1 < len; k += 2) {
        const unsigned char *a = src + (size_t)k * stride, *b = a + stride;
        float wa = w[k], wb = w[k + 1];
        for (int x = 0; x < n; x++) out[x] += wa * a[x] + wb * b[x];
    }
    if (k < len) {
        const unsigned char *a = src + (size_t)k * stride;
        float wa = w[k];
        for (int x = 0; x < n; x++) out[x] += wa * a[x];
    }
}

/* The horizontal pass, fused with rounding and storing: output pixel o of the row (source-order pixel
 * j = o, or n - 1 - o when mirrored) = sum_k w[k] * row[start[j] + k], 4 floats per pixel; every output has
 * exactly K taps (zero weights pad the short ones), so with K a constant the loop over k unrolls. Four
 * pixels at a time are rounded, packed to RGBX bytes and stored as 12 RGB bytes. */
#ifdef AA_SSE2
#include <tmmintrin.h>

#define PIXEL_ACC(K, j)                                                                                      \
    ({                                                                                                       \
        const float *src_ = row + (size_t)(xs->start[j] - cmin) * 4;                                        \
        const float *w_ = xs->w + (size_t)(j) * (K);                                                         \
        __m128 a_ = _mm_mul_ps(_mm_set1_ps(w_[0]), _mm_loadu_ps(src_));                                      \
        for (int k_ = 1; k_ < (K); k_++)                                                                     \
            a_ = _mm_add_ps(a_, _mm_mul_ps(_mm_set1_ps(w_[k_]), _mm_loadu_ps(src_ + 4 * k_)));               \
        a_;                                                                                                  \
    })

#define STORE_ONE(acc, px)                                                                                   \
    do {                                                                                                     \
        __m128i v_ = _mm_cvtps_epi32(acc);                                                                   \
        v_ = _mm_packus_epi16(_mm_packs_epi32(v_, v_), v_);                                                  \
        unsigned int b_ = (unsigned int)_mm_cvtsi128_si32(v_);                                               \
        (px)[0] = (unsigned char)b_, (px)[1] = (unsigned char)(b_ >> 8), (px)[2] = (unsigned char)(b_ >> 16); \
    } while (0)

#define DEFINE_HSTORE(K, SUFFIX, ATTR, PACK12)                                                               \
    ATTR static void hstore_##K##SUFFIX(const float *row, const aa_axis *xs, int cmin, int mirror,          \
                                          unsigned char *dst) {                                             \
        int n = xs->n, o = 0;                                                                                \
        for (; o + 4 <= n; o += 4) {                                                                         \
            int j0 = mirror ? n - 1 - o : o, d = mirror ? -1 : 1;                                            \
            __m128 a0 = PIXEL_ACC(K, j0), a1 = PIXEL_ACC(K, j0 + d);                                         \
            __m128 a2 = PIXEL_ACC(K, j0 + 2 * d), a3 = PIXEL_ACC(K, j0 + 3 * d);                             \
            __m128i p = _mm_packus_epi16(_mm_packs_epi32(_mm_cvtps_epi32(a0), _mm_cvtps_epi32(a1)),          \
                                         _mm_packs_epi32(_mm_cvtps_epi32(a2), _mm_cvtps_epi32(a3)));         \
            PACK12(p, dst + 3 * o);                                                                          \
        }                                                                                                    \
        for (; o < n; o++) {                                                                                 \
            int j = mirror ? n - 1 - o : o;                                                                  \
            STORE_ONE(PIXEL_ACC(K, j), dst + 3 * o);                                                          \
        }                                                                                                    \
    }

#define PACK12_SSE2(p, out)                                                                                  \
    do {                                                                                                     \
        unsigned char t_[16];                                                                                \
        _mm_storeu_si128((__m128i *)t_, p);                                                                  \
        unsigned char *o_ = (out);                                                                           \
        o_[0] = t_[0], o_[1] = t_[1], o_[2] = t_[2], o_[3] = t_[4], o_[4] = t_[5], o_[5] = t_[6];            \
        o_[6] = t_[8], o_[7] = t_[9], o_[8] = t_[10], o_[9] = t_[12], o_[10] = t_[13], o_[11] = t_[14];      \
    } while (0)

#define PACK12_SSSE3(p, out)                                                                                 \
    do {                                                                                                     \
        __m128i q_ = _mm_shuffle_epi8(p, _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1)); \
        _mm_storel_epi64((__m128i *)(out), q_);                                                              \
        unsigned int hi_ = (unsigned int)_mm_cvtsi128_si32(_mm_srli_si128(q_, 8));                           \
        memcpy((out) + 8, &hi_, 4);                                                                          \
    } while (0)

#define DEFINE_HSTORES(SUFFIX, ATTR, PACK12)                                                                 \
    DEFINE_HSTORE(2, SUFFIX, ATTR, PACK12)                                                                   \
    DEFINE_HSTORE(3, SUFFIX, ATTR, PACK12)                                                                   \
    DEFINE_HSTORE(4, SUFFIX, ATTR, PACK12)                                                                   \
    DEFINE_HSTORE(5, SUFFIX, ATTR, PACK12)                                                                   \
    DEFINE_HSTORE(6, SUFFIX, ATTR, PACK12)                                                                   \
    DEFINE_HSTORE(8, SUFFIX, ATTR, PACK12)                                                                   \
    ATTR static int hstore_fixed##SUFFIX(const float *row, const aa_axis *xs, int cmin, int mirror,          \
                                         unsigned char *dst) {                                              \
        switch (xs->stride) {                                                                                \
        case 2: hstore_2##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        case 3: hstore_3##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        case 4: hstore_4##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        case 5: hstore_5##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        case 6: hstore_6##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        case 8: hstore_8##SUFFIX(row, xs, cmin, mirror, dst); return 1;                                      \
        }                                                                                                    \
        return 0;                                                                                            \
    }

DEFINE_HSTORES(_sse2, , PACK12_SSE2)
#if defined(__GNUC__) && defined(__x86_64__)
#define AA_HAVE_AVX2_PATH 1
DEFINE_HSTORES(_avx2, __attribute__((target("avx2,fma"))), PACK12_SSSE3)
#endif
#endif

/* Any number of taps, any CPU. */
static void hstore_any(const float *row, const aa_axis *xs, int cmin, int mirror, unsigned char *dst) {
    for (int o = 0; o < xs->n; o++) {
        int j = mirror ? xs->n - 1 - o : o;
        const float *src = row + (size_t)(xs->start[j] - cmin) * 4;
        const float *w = xs->w + (size_t)j * xs->stride;
        for (int c = 0; c < 3; c++) {
            float acc = 0.0f;
            for (int k = 0; k < xs->stride; k++) acc += w[k] * src[4 * k + c];
            long v = lrintf(acc);
            dst[3 * o + c] = (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
}

#ifdef AA_HAVE_AVX2_PATH
static int avx2 = 0;
static pthread_once_t avx2_once = PTHREAD_ONCE_INIT;

static void detect_avx2(void) {     /* FASTLOAD_NO_AVX2=1 tests the baseline path on a machine with AVX2 */
    const char *off = getenv("FASTLOAD_NO_AVX2");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !(off && *off && *off != '0');
}
#endif

const char *aa_simd(void) {
#ifdef AA_HAVE_AVX2_PATH
    pthread_once(&avx2_once, detect_avx2);
    if (avx2) return "avx2";
#endif
#ifdef AA_SSE2
    return "sse2";
#else
    return "scalar";
#endif
}

static void hstore(const float *row, const aa_axis *xs, int cmin, int mirror, unsigned char *dst, int avx2) {
#ifdef AA_HAVE_AVX2_PATH
    if (avx2 && hstore_fixed_avx2(row, xs, cmin, mirror, dst))
        return;
#endif
#ifdef AA_SSE2
    if (hstore_fixed_sse2(row, xs, cmin, mirror, dst))
        return;
#endif
    (void)avx2;
    hstore_any(row, xs, cmin, mirror, dst);
}

void aa_resample(const unsigned char *src, size_t src_stride, int row0, int col0, int ncols,
                 const aa_axis *ys, const aa_axis *xs, unsigned char *dst, size_t dst_stride, int mirror,
                 float *scratch) {
    int cmin = xs->start[0], cmax = 0;
    for (int j = 0; j < xs->n; j++) {
        if (xs->start[j] < cmin) cmin = xs->start[j];
        if (xs->start[j] + xs->stride > cmax) cmax = xs->start[j] + xs->stride;
    }
    /* the padded taps of the last outputs may reach past the decoded columns: blend what is there (their
       weights are zero) but never read past the rows */
    int have = col0 + ncols;
    int nbytes = ((cmax < have ? cmax : have) - cmin) * 4;
    float *row = scratch;
    memset(row + nbytes, 0, (size_t)((cmax - cmin) * 4 - nbytes) * sizeof(float));
    const unsigned char *first = src + (size_t)(cmin - col0) * 4;
#ifdef AA_HAVE_AVX2_PATH
    pthread_once(&avx2_once, detect_avx2);
#else
    int avx2 = 0;
#endif
    for (int i = 0; i < ys->n; i++) {
        blend_rows(first + (size_t)(ys->start[i] - row0) * src_stride, src_stride,
                   ys->w + (size_t)i * ys->stride, ys->len[i], nbytes, row);
        hstore(row, xs, cmin, mirror, dst + (size_t)i * dst_stride, avx2);
    }
}
