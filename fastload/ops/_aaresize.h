/* Antialiased bilinear resampling (torchvision's resize with antialias=True) of a region of an RGBX image
 * into an RGB one, used by _jpegcrop.c right after decoding. */
#ifndef FASTLOAD_AARESIZE_H
#define FASTLOAD_AARESIZE_H

#include <stddef.h>

/* The taps of one axis: output pixel i reads ``len[i]`` source pixels from ``start[i]`` with weights
 * ``w[i * stride ..]`` (they sum to 1). */
typedef struct {
    int *start;
    int *len;
    float *w;
    int stride;
    int n;
} aa_axis;

/* Plans ``n`` output pixels over the source span [b0, b1) (fractional, in source pixels), reading only
 * source pixels in [lo, hi). Triangle filter widened by the downscale factor, as torch's
 * _upsample_bilinear2d_aa and PIL's BILINEAR. Every output then has ``stride`` taps (the longest window;
 * zero weights pad the shorter ones, which may reach up to ``stride - 1`` pixels past ``hi``).
 * Returns 0, or -1 when out of memory. */
int aa_axis_plan(aa_axis *ax, double b0, double b1, int lo, int hi, int n);
void aa_axis_free(aa_axis *ax);

/* Resamples: ``src`` holds RGBX rows (``src_stride`` bytes apart) whose first row is source row ``row0``
 * and first pixel source column ``col0``, ``ncols`` pixels decoded per row; writes ``ys.n`` rows of
 * ``xs.n`` RGB pixels to ``dst`` (rows ``dst_stride`` bytes apart), mirrored left-right when ``mirror``.
 * ``scratch`` holds at least ``4 * (c1 - c0 + xs.stride)`` floats, [c0, c1) being the columns ``xs``
 * reads; padded taps past the decoded columns read zeros there. */
void aa_resample(const unsigned char *src, size_t src_stride, int row0, int col0, int ncols,
                 const aa_axis *ys, const aa_axis *xs, unsigned char *dst, size_t dst_stride, int mirror,
                 float *scratch);

/* The horizontal pass's code path on this CPU: "avx2" (AVX2 + FMA), "sse2" or "scalar". */
const char *aa_simd(void);

#endif
