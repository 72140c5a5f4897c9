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
 * and any libjpeg warning (damaged data, as TurboJPEG's TJFLAG_STOPONWARNING) raise ValueError. libjpeg's
 * default error_exit calls exit(): errors longjmp back here instead. The GIL is released while decoding.
 * Decoder settings are libjpeg's defaults, as TurboJPEG's (and so simplejpeg's) without flags: JDCT_ISLOW,
 * fancy upsampling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#if !defined(JCS_EXTENSIONS) || !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 1005000
#error "fastload.ops._jpegcrop needs libjpeg-turbo >= 1.5 (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

#define MIN_CROP_WIDTH 8     /* columns given to jpeg_crop_scanline() at least (see run_job) */

typedef struct {
    struct jpeg_error_mgr pub;
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

typedef struct {
    const unsigned char *data;
    size_t size;
    unsigned char *out;
    JDIMENSION x, y, w, h;
    int scale, channels, frame;
    size_t out_len;
    char message[JMSG_LENGTH_MAX + 64];
} job;

/* Returns 0 on success, else -1 with job->message set. Runs without the GIL. */
static int run_job(job *jb) {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    unsigned char *volatile row = NULL;

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.emit_message = on_emit_message;
    err.pub.output_message = on_output_message;
    err.message[0] = '\0';
    if (setjmp(err.jump)) {
        snprintf(jb->message, sizeof(jb->message), "libjpeg: %s", err.message);
        free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, jb->data, (unsigned long)jb->size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.num_components != 3 || cinfo.jpeg_color_space != JCS_YCbCr) {
        snprintf(jb->message, sizeof(jb->message), "not a 3-component YCbCr JPEG (%d components, colour space %d)",
                 cinfo.num_components, (int)cinfo.jpeg_color_space);
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

static PyMethodDef methods[] = {
    {"decode_crop", (PyCFunction)(void (*)(void))decode_crop, METH_VARARGS | METH_KEYWORDS,
     "decode_crop(data, x, y, w, h, scale_denom, out, channels=3, frame=False) -> None\n\n"
     "Decode the region [x, x+w) x [y, y+h) of a 3-component YCbCr JPEG, DCT-scaled by 1/scale_denom\n"
     "(coordinates in the scaled image), RGB or RGBX, into out: C-contiguous, h*w*channels bytes, or with\n"
     "frame=True the whole scaled image's size (the region lands at its place, other bytes unspecified).\n"
     "Raises ValueError on any libjpeg error or warning."},
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
