/* Antialiased bilinear resampling of an RGBX region into RGB (see _aaresize.h).
 *
 * One output row at a time: the vertical pass blends the rows it needs into one row of floats (the loop
 * over bytes vectorises; built for AVX2 as well where the compiler can pick at run time), then the
 * horizontal pass blends 4 floats per tap with SSE and writes 3 bytes per pixel. Working in float with one
 * rounding at the end keeps the result within 0.5 levels of the exact filter (torch's uint8 kernel and PIL
 * round to 8 bits between the passes).
 */
#include "_aaresize.h"

#include <math.h>
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

/* outrow[o] (4 floats) = sum_k w[k] * row[start + k] for each output pixel j, o = j or n - 1 - j; every
 * output has exactly K taps (zero weights pad the short ones), so the loop over k unrolls. */
#define DEFINE_HPASS(K)                                                                                      \
    static inline void hpass_##K(const float *row, const aa_axis *xs, int cmin, int mirror, float *outrow) { \
        for (int j = 0; j < xs->n; j++) {                                                                  \
            const float *src = row + (size_t)(xs->start[j] - cmin) * 4;                                    \
            const float *w = xs->w + (size_t)j * xs->stride;                                               \
            float *dst = outrow + (size_t)(mirror ? xs->n - 1 - j : j) * 4;                                \
            HPASS_BODY(K)                                                                                  \
        }                                                                                                  \
    }

#ifdef AA_SSE2
#define HPASS_BODY(K)                                                                                        \
    __m128 acc = _mm_mul_ps(_mm_set1_ps(w[0]), _mm_loadu_ps(src));                                         \
    for (int k = 1; k < K; k++)                                                                            \
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(w[k]), _mm_loadu_ps(src + 4 * k)));                   \
    _mm_storeu_ps(dst, acc);
#else
#define HPASS_BODY(K)                                                                                        \
    for (int c = 0; c < 4; c++) {                                                                          \
        float acc = 0.0f;                                                                                  \
        for (int k = 0; k < K; k++) acc += w[k] * src[4 * k + c];                                          \
        dst[c] = acc;                                                                                      \
    }
#endif

DEFINE_HPASS(2)
DEFINE_HPASS(3)
DEFINE_HPASS(4)
DEFINE_HPASS(5)
DEFINE_HPASS(6)
DEFINE_HPASS(8)

static void hpass_any(const float *row, const aa_axis *xs, int cmin, int mirror, float *outrow) {
    for (int j = 0; j < xs->n; j++) {
        const float *src = row + (size_t)(xs->start[j] - cmin) * 4;
        const float *w = xs->w + (size_t)j * xs->stride;
        float *dst = outrow + (size_t)(mirror ? xs->n - 1 - j : j) * 4;
        for (int c = 0; c < 4; c++) {
            float acc = 0.0f;
            for (int k = 0; k < xs->stride; k++) acc += w[k] * src[4 * k + c];
            dst[c] = acc;
        }
    }
}

AA_MULTIVERSION
static void hpass(const float *row, const aa_axis *xs, int cmin, int mirror, float *outrow) {
    switch (xs->stride) {
    case 2: hpass_2(row, xs, cmin, mirror, outrow); break;
    case 3: hpass_3(row, xs, cmin, mirror, outrow); break;
    case 4: hpass_4(row, xs, cmin, mirror, outrow); break;
    case 5: hpass_5(row, xs, cmin, mirror, outrow); break;
    case 6: hpass_6(row, xs, cmin, mirror, outrow); break;
    case 8: hpass_8(row, xs, cmin, mirror, outrow); break;
    default: hpass_any(row, xs, cmin, mirror, outrow);
    }
}

/* n RGBX float pixels -> n RGB bytes, rounded and clamped to 0..255. */
static void store_rgb(const float *src, int n, unsigned char *dst) {
    int j = 0;
#ifdef AA_SSE2
    unsigned char tmp[16];
    for (; j + 4 <= n; j += 4) {
        __m128i a = _mm_cvtps_epi32(_mm_loadu_ps(src + 4 * j)), b = _mm_cvtps_epi32(_mm_loadu_ps(src + 4 * j + 4));
        __m128i c = _mm_cvtps_epi32(_mm_loadu_ps(src + 4 * j + 8)), d = _mm_cvtps_epi32(_mm_loadu_ps(src + 4 * j + 12));
        _mm_storeu_si128((__m128i *)tmp, _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d)));
        unsigned char *o = dst + 3 * j;
        o[0] = tmp[0], o[1] = tmp[1], o[2] = tmp[2], o[3] = tmp[4], o[4] = tmp[5], o[5] = tmp[6];
        o[6] = tmp[8], o[7] = tmp[9], o[8] = tmp[10], o[9] = tmp[12], o[10] = tmp[13], o[11] = tmp[14];
    }
#endif
    for (; j < n; j++) {
        for (int c = 0; c < 3; c++) {
            long v = lrintf(src[4 * j + c]);
            dst[3 * j + c] = (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
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
    float *row = scratch, *outrow = scratch + (size_t)(cmax - cmin) * 4;
    memset(row + nbytes, 0, (size_t)((cmax - cmin) * 4 - nbytes) * sizeof(float));
    const unsigned char *first = src + (size_t)(cmin - col0) * 4;
    for (int i = 0; i < ys->n; i++) {
        blend_rows(first + (size_t)(ys->start[i] - row0) * src_stride, src_stride,
                   ys->w + (size_t)i * ys->stride, ys->len[i], nbytes, row);
        hpass(row, xs, cmin, mirror, outrow);
        store_rgb(outrow, xs->n, dst + (size_t)i * dst_stride);
    }
}
