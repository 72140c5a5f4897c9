/* Partial JPEG decoding with libjpeg-turbo's libjpeg API (optional extension of fastload.ops).
 *
 * decode_crop(data, x, y, w, h, scale_denom, out, channels=3, frame=False) -> None
 *
 * Decodes the region [x, x + w) x [y, y + h) of the image DCT-scaled by 1/scale_denom (coordinates in the
 * scaled image, whose size is ceil(width / scale_denom) x ceil(height / scale_denom)), RGB (channels=3) or
 * RGBX (channels=4), into ``out``, a writable C-contiguous buffer of either exactly h * w * channels bytes
 * (frame=False: the region alone), or the whole scaled image (frame=True: the region lands at its place;
 * bytes outside it are unspecified, some may be overwritten).
 *
 * Only what the region needs is transformed: jpeg_skip_scanlines() skips the rows above it (entropy
 * decoding only: no IDCT, upsampling or colour conversion), jpeg_crop_scanline() restricts IDCT and colour
 * conversion to the iMCU columns that hold it, and decoding stops after its last row (jpeg_abort_decompress;
 * the entropy-coded data below it is never read, so damage there goes unnoticed).
 *
 * Pixels at the region's left / right edge may differ from a full decode when the JPEG has subsampled
 * chroma: libjpeg's fancy upsampling treats the cropped columns' edges as image edges. A caller that needs
 * exact pixels asks for one more column on each side. Rows are exact. Regions narrower than 8 columns are
 * widened (internally) to 8, as libjpeg would not interpolate chroma at all in a crop that narrow.
 *
 * Only 3-component YCbCr JPEGs are accepted (baseline or progressive); anything else, any libjpeg error
 * and any libjpeg warning (damaged data, as TurboJPEG's TJFLAG_STOPONWARNING), and more than 500 progressive
 * scans (as TJFLAG_LIMITSCANS) raise ValueError. libjpeg's
 * default error_exit calls exit(): errors longjmp back here instead. The GIL is released while decoding.
 * Decoder settings are libjpeg's defaults, as TurboJPEG's (and so simplejpeg's) without flags: JDCT_ISLOW,
 * fancy upsampling.
 *
 * decode_resized_crop(data, left, top, width, height, out, mirror=False, src_w=0, src_h=0, min_ratio=1.0,
 *                     fine=True, clip=True) -> M
 *
 * The same partial decoding (one column margin, so pixels are exact) of only what torchvision's antialiased
 * bilinear resize of the box reads, DCT-scaled by M/8, then that resize (_aaresize.c) into ``out``, in one
 * call without the GIL: the work of DecodeRandomResizedCrop (clip=True: crop, then resize) and
 * DecodeCenterCrop (clip=False: resize, then crop) for YCbCr JPEGs. Same errors as decode_crop, plus the
 * stored size (src_w, src_h) checked against the header.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "_aaresize.h"

#if !defined(JCS_EXTENSIONS) || !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 1005000
#error "fastload.ops._jpegcrop needs libjpeg-turbo >= 1.5 (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

#define MIN_CROP_WIDTH 8     /* columns given to jpeg_crop_scanline() at least (see run_job) */

#define MAX_SCANS 500       /* a progressive JPEG with more scans is refused (TurboJPEG's TJFLAG_LIMITSCANS) */

typedef struct {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr progress;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_mgr;

static void on_error_exit(j_common_ptr cinfo) {
    error_mgr *err = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_emit_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level < 0) {    /* a warning: corrupt data that libjpeg would paper over; treat as an error */
        error_mgr *err = (error_mgr *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->jump, 1);
    }
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; }   /* never print */

/* A crafted progressive file can hold thousands of scans, each a pass over the whole image: stop it. */
static void on_progress(j_common_ptr cinfo) {
    if (cinfo->is_decompressor && ((j_decompress_ptr)cinfo)->input_scan_number > MAX_SCANS) {
        error_mgr *err = (error_mgr *)cinfo->err;
        snprintf(err->message, sizeof(err->message), "more than %d progressive scans", MAX_SCANS);
        longjmp(err->jump, 1);
    }
}

typedef struct {
    const unsigned char *data;
    size_t size;
    unsigned char *out;
    JDIMENSION x, y, w, h;
    int scale, channels, frame;
    size_t out_len;
    char message[JMSG_LENGTH_MAX + 64];
} job;

/* A decompressor whose errors and warnings longjmp to err->jump (the caller's setjmp) with the message. */
static void setup_decompressor(struct jpeg_decompress_struct *cinfo, error_mgr *err) {
    memset(cinfo, 0, sizeof(*cinfo));
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error_exit;
    err->pub.emit_message = on_emit_message;
    err->pub.output_message = on_output_message;
    err->message[0] = '\0';
    memset(&err->progress, 0, sizeof(err->progress));
    err->progress.progress_monitor = on_progress;
}

/* Reads the header of data (after the caller's setjmp); -1 with message set when it is not a 3-component
 * YCbCr JPEG. */
static int read_ycbcr_header(struct jpeg_decompress_struct *cinfo, const unsigned char *data, size_t size,
                             char *message, size_t message_len) {
    jpeg_create_decompress(cinfo);
    cinfo->progress = &((error_mgr *)cinfo->err)->progress;      /* (jpeg_create_decompress zeroed it) */
    jpeg_mem_src(cinfo, data, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);
    if (cinfo->num_components != 3 || cinfo->jpeg_color_space != JCS_YCbCr) {
        snprintf(message, message_len, "not a 3-component YCbCr JPEG (%d components, colour space %d)",
                 cinfo->num_components, (int)cinfo->jpeg_color_space);
        return -1;
    }
    return 0;
}

/* Returns 0 on success, else -1 with job->message set. Runs without the GIL. */
static int run_job(job *jb) {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    unsigned char *volatile row = NULL;

    setup_decompressor(&cinfo, &err);
    if (setjmp(err.jump)) {
        snprintf(jb->message, sizeof(jb->message), "libjpeg: %s", err.message);
        free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    if (read_ycbcr_header(&cinfo, jb->data, jb->size, jb->message, sizeof(jb->message))) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    cinfo.out_color_space = jb->channels == 4 ? JCS_EXT_RGBX : JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)jb->scale;
    jpeg_calc_output_dimensions(&cinfo);
    if (jb->x + jb->w > cinfo.output_width || jb->y + jb->h > cinfo.output_height) {
        snprintf(jb->message, sizeof(jb->message),
                 "region %ux%u+%u+%u outside the %ux%u image (scale 1/%d)", jb->w, jb->h, jb->x, jb->y,
                 cinfo.output_width, cinfo.output_height, jb->scale);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    size_t need = jb->frame ? (size_t)cinfo.output_width * cinfo.output_height * jb->channels
                            : (size_t)jb->w * jb->h * jb->channels;
    if (jb->out_len != need) {
        snprintf(jb->message, sizeof(jb->message), "out has %zu bytes, needs %zu", jb->out_len, need);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_start_decompress(&cinfo);

    JDIMENSION xoff = jb->x, cw = jb->w, full_width = cinfo.output_width;
    if (cw < MIN_CROP_WIDTH && full_width > cw) {
        /* libjpeg upsamples chroma without "fancy" interpolation when a row holds <= 2 chroma samples: a
           crop that narrow would change every pixel, not only the edge columns; widen it (right, then left) */
        JDIMENSION end = xoff + MIN_CROP_WIDTH < full_width ? xoff + MIN_CROP_WIDTH : full_width;
        xoff = end > MIN_CROP_WIDTH ? end - MIN_CROP_WIDTH : 0;
        cw = end - xoff;
    }
    if (xoff != 0 || cw != cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &cw);       /* xoff aligned down to the iMCU, cw widened to match */
    size_t ch = (size_t)jb->channels;
    /* frame: libjpeg writes the widened columns straight into the frame row; else through a row buffer */
    size_t stride = jb->frame ? (size_t)full_width * ch : (size_t)jb->w * ch;
    int direct = jb->frame || (xoff == jb->x && cw == jb->w);
    if (!direct) {
        row = (unsigned char *)malloc((size_t)cw * ch);
        if (row == NULL) {
            snprintf(err.message, sizeof(err.message), "out of memory");
            longjmp(err.jump, 1);
        }
    }
    if (jb->y > 0) {
        JDIMENSION skipped = jpeg_skip_scanlines(&cinfo, jb->y);
        if (skipped != jb->y) {
            snprintf(err.message, sizeof(err.message), "skipped %u of %u rows", skipped, jb->y);
            longjmp(err.jump, 1);
        }
    }
    for (JDIMENSION i = 0; i < jb->h; i++) {
        unsigned char *dst = jb->frame ? jb->out + (size_t)(jb->y + i) * stride + xoff * ch
                                       : jb->out + (size_t)i * stride;
        JSAMPROW rows[1] = {direct ? dst : row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            snprintf(err.message, sizeof(err.message), "short read at row %u", jb->y + i);
            longjmp(err.jump, 1);
        }
        if (!direct)
            memcpy(dst, row + (size_t)(jb->x - xoff) * ch, stride);
    }
    jpeg_abort_decompress(&cinfo);
    free(row);
    row = NULL;
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode_crop(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "x", "y", "w", "h", "scale_denom", "out", "channels", "frame", NULL};
    Py_buffer data, out;
    Py_ssize_t x, y, w, h;
    int scale, channels = 3, frame = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nnnniw*|ip", kwlist, &data, &x, &y, &w, &h, &scale, &out,
                                     &channels, &frame))
        return NULL;
    PyObject *result = NULL;
    if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
        PyErr_Format(PyExc_ValueError, "scale_denom must be 1, 2, 4 or 8, got %d", scale);
    } else if (channels != 3 && channels != 4) {
        PyErr_Format(PyExc_ValueError, "channels must be 3 or 4, got %d", channels);
    } else if (x < 0 || y < 0 || w <= 0 || h <= 0 || x > 65535 || y > 65535 || w > 65535 || h > 65535) {
        PyErr_Format(PyExc_ValueError, "bad region %zdx%zd+%zd+%zd", w, h, x, y);
    } else if (!PyBuffer_IsContiguous(&out, 'C')) {
        PyErr_SetString(PyExc_ValueError, "out must be a C-contiguous buffer");
    } else if (data.len < 4) {
        PyErr_SetString(PyExc_ValueError, "not a JPEG (too short)");
    } else {
        job jb;
        jb.data = (const unsigned char *)data.buf;
        jb.size = (size_t)data.len;
        jb.out = (unsigned char *)out.buf;
        jb.x = (JDIMENSION)x, jb.y = (JDIMENSION)y, jb.w = (JDIMENSION)w, jb.h = (JDIMENSION)h;
        jb.scale = scale, jb.channels = channels, jb.frame = frame;
        jb.out_len = (size_t)out.len;
        jb.message[0] = '\0';
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = run_job(&jb);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            Py_INCREF(Py_None);
            result = Py_None;
        } else {
            PyErr_SetString(PyExc_ValueError, jb.message);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* ---------------------------------------------------------------- decode + antialiased resize in one call */

typedef struct {
    const unsigned char *data;
    size_t size;
    int src_w, src_h;                   /* the size the record claims (0: not checked) */
    double left, top, width, height;    /* the box, source pixels (fractional for a resize-then-crop) */
    int clip;                           /* the filter reads only inside the box (a crop, then a resize) */
    unsigned char *out;
    size_t out_stride;                  /* bytes between output rows */
    int oh, ow, mirror;
    double min_ratio;                   /* the DCT-scaled box stays >= min_ratio x the output on both axes */
    int fine;                           /* any scale M/8 (else 1/8, 2/8, 4/8, 8/8 only) */
    int scale_num;                      /* result: the DCT scale used, M in M/8 */
    aa_axis xs, ys;                     /* the filter's taps (here, not on run_resize_job's stack: setjmp) */
    char message[JMSG_LENGTH_MAX + 64];
} resize_job;

/* Each thread's decode buffers, kept between calls (fresh large mallocs would page-fault on every image) and
 * freed when the thread exits; a buffer grown past KEEP_BYTES by one huge image is dropped after that call. */
#define KEEP_BYTES ((size_t)32 << 20)

typedef struct {
    unsigned char *pixels;
    size_t pixels_cap;
    float *row;
    size_t row_cap;
} buffers;

static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;
static int buffers_key_ok = 0;

static void free_buffers(void *p) {
    buffers *b = (buffers *)p;
    if (b == NULL) return;
    free(b->pixels);
    free(b->row);
    free(b);
}

static void make_buffers_key(void) { buffers_key_ok = pthread_key_create(&buffers_key, free_buffers) == 0; }

static buffers *thread_buffers(size_t pixels, size_t row_floats) {
    pthread_once(&buffers_once, make_buffers_key);
    if (!buffers_key_ok) return NULL;
    buffers *b = (buffers *)pthread_getspecific(buffers_key);
    if (b == NULL) {
        b = (buffers *)calloc(1, sizeof(buffers));
        if (b == NULL || pthread_setspecific(buffers_key, b) != 0) {
            free(b);
            return NULL;
        }
    }
    if (pixels > b->pixels_cap) {
        unsigned char *p = (unsigned char *)realloc(b->pixels, pixels);
        if (p == NULL) return NULL;
        b->pixels = p, b->pixels_cap = pixels;
    }
    if (row_floats > b->row_cap) {
        float *r = (float *)realloc(b->row, row_floats * sizeof(float));
        if (r == NULL) return NULL;
        b->row = r, b->row_cap = row_floats;
    }
    return b;
}

static void trim_buffers(buffers *b) {
    if (b->pixels_cap > KEEP_BYTES) {
        free(b->pixels);
        b->pixels = NULL, b->pixels_cap = 0;
    }
}

static int pick_scale(const resize_job *jb) {
    for (int m = 1; m < 8; m++) {
        if (!jb->fine && m != 1 && m != 2 && m != 4) continue;
        if (jb->width * m >= 8.0 * jb->min_ratio * jb->ow && jb->height * m >= 8.0 * jb->min_ratio * jb->oh)
            return m;
    }
    return 8;
}

static int run_resize_job(resize_job *jb) {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    aa_axis *xs = &jb->xs, *ys = &jb->ys;
    buffers *volatile buf = NULL;

    memset(xs, 0, sizeof(*xs));
    memset(ys, 0, sizeof(*ys));
    setup_decompressor(&cinfo, &err);
    if (setjmp(err.jump)) {
        snprintf(jb->message, sizeof(jb->message), "libjpeg: %s", err.message);
        aa_axis_free(xs);
        aa_axis_free(ys);
        if (buf != NULL) trim_buffers(buf);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    if (read_ycbcr_header(&cinfo, jb->data, jb->size, jb->message, sizeof(jb->message)))
        goto fail;
    if (jb->src_w > 0 && ((int)cinfo.image_width != jb->src_w || (int)cinfo.image_height != jb->src_h)) {
        snprintf(jb->message, sizeof(jb->message), "image is %ux%u but its record says %dx%d", cinfo.image_width,
                 cinfo.image_height, jb->src_w, jb->src_h);
        goto fail;
    }
    if (jb->left + jb->width > cinfo.image_width + 1e-6 || jb->top + jb->height > cinfo.image_height + 1e-6 ||
        jb->left >= cinfo.image_width || jb->top >= cinfo.image_height) {
        snprintf(jb->message, sizeof(jb->message), "box %gx%g+%g+%g outside the %ux%u image", jb->width,
                 jb->height, jb->left, jb->top, cinfo.image_width, cinfo.image_height);
        goto fail;
    }
    int m = pick_scale(jb);
    cinfo.out_color_space = JCS_EXT_RGBX;
    cinfo.scale_num = (unsigned int)m;
    cinfo.scale_denom = 8;
    jpeg_calc_output_dimensions(&cinfo);
    int sw = (int)cinfo.output_width, sh = (int)cinfo.output_height;
    /* the box in the scaled image: scaled pixel j covers source pixels [8j/m, 8(j+1)/m) */
    double bx0 = jb->left * m / 8.0, bx1 = (jb->left + jb->width) * m / 8.0;
    double by0 = jb->top * m / 8.0, by1 = (jb->top + jb->height) * m / 8.0;
    int lox = 0, hix = sw, loy = 0, hiy = sh;
    if (jb->clip) {
        lox = (int)floor(bx0), hix = (int)ceil(bx1 - 1e-9), loy = (int)floor(by0), hiy = (int)ceil(by1 - 1e-9);
        if (hix > sw) hix = sw;
        if (hiy > sh) hiy = sh;
    }
    if (hix <= lox) hix = lox + 1;
    if (hiy <= loy) hiy = loy + 1;
    if (aa_axis_plan(xs, bx0, bx1, lox, hix, jb->ow) || aa_axis_plan(ys, by0, by1, loy, hiy, jb->oh)) {
        snprintf(err.message, sizeof(err.message), "out of memory");
        longjmp(err.jump, 1);
    }
    int r0 = ys->start[0], r1 = 0, c0 = xs->start[0], c1 = 0;
    for (int i = 0; i < ys->n; i++) {
        if (ys->start[i] < r0) r0 = ys->start[i];
        if (ys->start[i] + ys->len[i] > r1) r1 = ys->start[i] + ys->len[i];
    }
    for (int i = 0; i < xs->n; i++) {
        if (xs->start[i] < c0) c0 = xs->start[i];
        if (xs->start[i] + xs->len[i] > c1) c1 = xs->start[i] + xs->len[i];
    }
    /* one more column each side: libjpeg's fancy upsampling treats the cropped columns' edges as image edges */
    JDIMENSION xoff = (JDIMENSION)(c0 > 0 ? c0 - 1 : 0);
    JDIMENSION end = (JDIMENSION)(c1 + 1 < sw ? c1 + 1 : sw);
    if (end - xoff < MIN_CROP_WIDTH && (JDIMENSION)sw > end - xoff) {
        end = xoff + MIN_CROP_WIDTH < (JDIMENSION)sw ? xoff + MIN_CROP_WIDTH : (JDIMENSION)sw;
        xoff = end > MIN_CROP_WIDTH ? end - MIN_CROP_WIDTH : 0;
    }
    JDIMENSION cw = end - xoff;
    jpeg_start_decompress(&cinfo);
    if (xoff != 0 || cw != cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &cw);
    size_t stride = (size_t)cw * 4;
    buf = thread_buffers(stride * (size_t)(r1 - r0), ((size_t)(c1 - c0) + (size_t)xs->stride + (size_t)jb->ow) * 4);
    if (buf == NULL) {
        snprintf(err.message, sizeof(err.message), "out of memory");
        longjmp(err.jump, 1);
    }
    if (r0 > 0) {
        JDIMENSION skipped = jpeg_skip_scanlines(&cinfo, (JDIMENSION)r0);
        if (skipped != (JDIMENSION)r0) {
            snprintf(err.message, sizeof(err.message), "skipped %u of %d rows", skipped, r0);
            longjmp(err.jump, 1);
        }
    }
    for (int r = r0; r < r1;) {
        JSAMPROW rows[4];
        int n = r1 - r < 4 ? r1 - r : 4;
        for (int k = 0; k < n; k++) rows[k] = buf->pixels + (size_t)(r - r0 + k) * stride;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
        if (got == 0) {
            snprintf(err.message, sizeof(err.message), "short read at row %d", r);
            longjmp(err.jump, 1);
        }
        r += (int)got;
    }
    jpeg_abort_decompress(&cinfo);
    aa_resample(buf->pixels, stride, r0, (int)xoff, (int)cw, ys, xs, jb->out, jb->out_stride, jb->mirror,
                buf->row);
    trim_buffers(buf);
    jb->scale_num = m;
    aa_axis_free(xs);
    aa_axis_free(ys);
    jpeg_destroy_decompress(&cinfo);
    return 0;
fail:
    aa_axis_free(xs);
    aa_axis_free(ys);
    jpeg_destroy_decompress(&cinfo);
    return -1;
}

static PyObject *decode_resized_crop(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "left", "top", "width", "height", "out", "mirror", "src_w", "src_h",
                             "min_ratio", "fine", "clip", NULL};
    Py_buffer data, out;
    Py_ssize_t src_w = 0, src_h = 0;
    double left, top, width, height;
    PyObject *out_obj;
    int mirror = 0, fine = 1, clip = 1;
    double min_ratio = 1.0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*ddddO|pnndpp", kwlist, &data, &left, &top, &width, &height,
                                     &out_obj, &mirror, &src_w, &src_h, &min_ratio, &fine, &clip))
        return NULL;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_STRIDES | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *result = NULL;
    if (out.ndim != 3 || out.shape[2] != 3 || out.itemsize != 1 || out.shape[0] <= 0 || out.shape[1] <= 0 ||
        out.shape[0] > 65535 || out.shape[1] > 65535 || (out.format != NULL && strcmp(out.format, "B") != 0) ||
        out.strides[2] != 1 || out.strides[1] != 3 || out.strides[0] < 3 * out.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "out must be an (h, w, 3) uint8 array with contiguous rows");
    } else if (!(left >= 0 && top >= 0 && width > 0 && height > 0 && left + width <= 65535 &&
                 top + height <= 65535)) {
        char msg[160];      /* PyErr_Format has no %g */
        snprintf(msg, sizeof(msg), "bad box %gx%g+%g+%g", width, height, left, top);
        PyErr_SetString(PyExc_ValueError, msg);
    } else if (src_w < 0 || src_h < 0 || src_w > 65535 || src_h > 65535) {
        PyErr_Format(PyExc_ValueError, "bad stored size %zdx%zd", src_w, src_h);
    } else if (!(min_ratio > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "min_ratio must be positive");
    } else if (data.len < 4) {
        PyErr_SetString(PyExc_ValueError, "not a JPEG (too short)");
    } else {
        resize_job jb;
        jb.data = (const unsigned char *)data.buf;
        jb.size = (size_t)data.len;
        jb.src_w = (int)src_w, jb.src_h = (int)src_h;
        jb.left = left, jb.top = top, jb.width = width, jb.height = height, jb.clip = clip;
        jb.out = (unsigned char *)out.buf;
        jb.out_stride = (size_t)out.strides[0];
        jb.oh = (int)out.shape[0], jb.ow = (int)out.shape[1], jb.mirror = mirror;
        jb.min_ratio = min_ratio, jb.fine = fine, jb.scale_num = 8;
        jb.message[0] = '\0';
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = run_resize_job(&jb);
        Py_END_ALLOW_THREADS
        if (rc == 0)
            result = PyLong_FromLong(jb.scale_num);
        else
            PyErr_SetString(PyExc_ValueError, jb.message);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *resize_simd(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyUnicode_FromString(aa_simd());
}

static PyMethodDef methods[] = {
    {"decode_crop", (PyCFunction)(void (*)(void))decode_crop, METH_VARARGS | METH_KEYWORDS,
     "decode_crop(data, x, y, w, h, scale_denom, out, channels=3, frame=False) -> None\n\n"
     "Decode the region [x, x+w) x [y, y+h) of a 3-component YCbCr JPEG, DCT-scaled by 1/scale_denom\n"
     "(coordinates in the scaled image), RGB or RGBX, into out: C-contiguous, h*w*channels bytes, or with\n"
     "frame=True the whole scaled image's size (the region lands at its place, other bytes unspecified).\n"
     "Raises ValueError on any libjpeg error or warning."},
    {"decode_resized_crop", (PyCFunction)(void (*)(void))decode_resized_crop, METH_VARARGS | METH_KEYWORDS,
     "decode_resized_crop(data, left, top, width, height, out, mirror=False, src_w=0, src_h=0, min_ratio=1.0,\n"
     "                    fine=True, clip=True) -> int\n\n"
     "Decode the box [left, left+width) x [top, top+height) (source pixels, may be fractional) of a\n"
     "3-component YCbCr JPEG and resize it with torchvision's antialiased bilinear filter into out ((h, w, 3)\n"
     "uint8, rows contiguous, any row stride), mirrored when asked. clip=True: the filter reads only the box\n"
     "(crop, then resize); False: the whole image (resize, then crop). The JPEG is DCT-scaled by M/8 (M\n"
     "returned), the smallest M that keeps the scaled box >= min_ratio x the output on both axes (fine=False:\n"
     "M in 1, 2, 4, 8 only). src_w/src_h: the size the record claims, checked. Raises ValueError on any\n"
     "libjpeg error or warning."},
    {"resize_simd", resize_simd, METH_NOARGS,
     "resize_simd() -> str\n\nThe resize's code path on this CPU: 'avx2' (AVX2 + FMA), 'sse2' or 'scalar'\n"
     "(FASTLOAD_NO_AVX2=1, read at first use, rules out 'avx2')."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "Partial JPEG decoding (libjpeg-turbo jpeg_crop_scanline / jpeg_skip_scanlines).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL)
        PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER", LIBJPEG_TURBO_VERSION_NUMBER);
    return m;
}
