/* fastload.formats._sigbus: turn SIGBUS inside a watched file mapping into a flag instead of a dead process.
 *
 * Reading a page of a memory-mapped file that was truncated after it was mapped raises SIGBUS, whose default
 * action kills the process with no message (a num_workers=0 loader dies with exit status 135). Readers
 * register their mappings with watch(); the SIGBUS handler, for a fault inside a watched range, maps an
 * anonymous zero page over the faulting page (so the faulting instruction can complete), counts the fault
 * and marks the range. Python checks faults() after each read and raises a FormatError naming the file, so
 * the zeros are never handed on as data. A fault outside every watched range restores the previous
 * handler and returns: the fault repeats and gets the behaviour it always had.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_RANGES 4096

typedef struct {
    volatile uintptr_t start;
    volatile uintptr_t end;       /* 0: slot free */
    volatile int faulted;
} Range;

static Range ranges[MAX_RANGES];
static volatile long fault_count = 0;
static struct sigaction previous;
static int installed = 0;
static uintptr_t page_size = 4096;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    int hit = 0;
    for (int k = 0; k < MAX_RANGES; k++) {
        uintptr_t end = ranges[k].end;
        if (end && ranges[k].start <= addr && addr < end) {
            ranges[k].faulted = 1;     /* every range that covers it (a stale one may overlap a new one) */
            hit = 1;
        }
    }
    if (hit) {
        void *page = (void *)(addr & ~(page_size - 1));
        if (mmap(page, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
            __atomic_add_fetch(&fault_count, 1, __ATOMIC_SEQ_CST);
            return;
        }
    }
    (void)sig; (void)context;
    sigaction(SIGBUS, &previous, NULL);    /* not ours: the fault repeats under the previous disposition */
}

/* Install the handler, or install it again if another one (faulthandler, a library) replaced it since;
 * the one found is what faults outside the watched ranges go to. */
static int install(void) {
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) != 0) return -1;
    if (installed && (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0) return -1;
    installed = 1;
    return 0;
}

static PyObject *py_watch(PyObject *self, PyObject *args) {
    unsigned long long start, length;
    if (!PyArg_ParseTuple(args, "KK", &start, &length)) return NULL;
    if (install() != 0) return PyErr_SetFromErrno(PyExc_OSError);
    for (int k = 0; k < MAX_RANGES; k++) {
        if (ranges[k].end == 0) {
            ranges[k].faulted = 0;
            ranges[k].start = (uintptr_t)start;
            ranges[k].end = (uintptr_t)(start + (length ? length : 1));
            return PyLong_FromLong(k);
        }
    }
    Py_RETURN_NONE;    /* full: the mapping is simply not watched */
}

static PyObject *py_unwatch(PyObject *self, PyObject *args) {
    int k;
    if (!PyArg_ParseTuple(args, "i", &k)) return NULL;
    if (k >= 0 && k < MAX_RANGES) {
        ranges[k].end = 0;
        ranges[k].start = 0;
        ranges[k].faulted = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *py_faults(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(__atomic_load_n(&fault_count, __ATOMIC_SEQ_CST));
}

static PyObject *py_faulted(PyObject *self, PyObject *args) {
    int k;
    if (!PyArg_ParseTuple(args, "i", &k)) return NULL;
    return PyBool_FromLong(k >= 0 && k < MAX_RANGES && ranges[k].end && ranges[k].faulted);
}

static PyObject *py_address(PyObject *self, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) != 0) return NULL;
    PyObject *r = PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)view.buf);
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef methods[] = {
    {"address", py_address, METH_O, "address(buffer) -> address of its first byte."},
    {"watch", py_watch, METH_VARARGS, "watch(start, length) -> slot or None: guard a mapping's address range."},
    {"unwatch", py_unwatch, METH_VARARGS, "unwatch(slot): stop guarding (before the mapping is closed)."},
    {"faults", py_faults, METH_NOARGS, "faults() -> number of SIGBUS faults absorbed so far in this process."},
    {"faulted", py_faulted, METH_VARARGS, "faulted(slot) -> whether a fault hit that range."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sigbus", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sigbus(void) {
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > 0) page_size = (uintptr_t)ps;
    return PyModule_Create(&module);
}
