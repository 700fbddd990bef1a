/* module.c: the sparseft._core extension. The ONLY file that includes Python.h / NumPy.
 * Every wrapper: parse arguments, validate them with the arg_* helpers below (errors name the
 * argument, what was expected and what came), allocate outputs, release the GIL, call a kernel.
 * No arithmetic happens here. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>

#include "common.h"
#include "gemm.h"

/* ---- argument helpers ---------------------------------------------------------------------- */

/* The shape of a as a Python tuple string such as "(3, 4)"; never NULL-dereferenced. */
static PyObject *shape_tuple(PyArrayObject *a) {
    int nd = PyArray_NDIM(a);
    PyObject *t = PyTuple_New(nd);
    if (t == NULL) return NULL;
    for (int i = 0; i < nd; i++) PyTuple_SET_ITEM(t, i, PyLong_FromSsize_t(PyArray_DIM(a, i)));
    return t;
}

/* Checks that obj is a C-contiguous, aligned ndarray of dtype typenum with ndim dimensions
 * (ndim < 0: any). Returns obj as an array (borrowed) or NULL with TypeError/ValueError set. */
static PyArrayObject *arg_array(PyObject *obj, const char *name, int typenum, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %S, got %S", name, (PyObject *)want,
                     (PyObject *)PyArray_DESCR(a));
        Py_XDECREF(want);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyObject *shape = shape_tuple(a);
        if (shape != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got shape %R", name, ndim, shape);
        Py_XDECREF(shape);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected a C-contiguous aligned array, got a strided view "
                     "(pass numpy.ascontiguousarray(%s))",
                     name, name);
        return NULL;
    }
    return a;
}

/* Checks a float32 array as arg_array does. */
static PyArrayObject *arg_f32(PyObject *obj, const char *name, int ndim) {
    return arg_array(obj, name, NPY_FLOAT32, ndim);
}

/* Checks that axis `axis` of a has length `expected`; `what` says where the number comes from. */
static int arg_dim(PyArrayObject *a, const char *name, int axis, npy_intp expected, const char *what) {
    if (PyArray_DIM(a, axis) == expected) return 0;
    PyObject *shape = shape_tuple(a);
    if (shape != NULL)
        PyErr_Format(PyExc_ValueError, "%s: expected axis %d of length %zd (%s), got shape %R", name, axis,
                     (Py_ssize_t)expected, what, shape);
    Py_XDECREF(shape);
    return -1;
}

/* Checks that a float32 array holds no NaN or infinity. */
static inline int arg_finite(PyArrayObject *a, const char *name) {
    int64_t bad;
    const float *p = (const float *)PyArray_DATA(a);
    int64_t n = (int64_t)PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS bad = sft_count_nonfinite(p, n);
    Py_END_ALLOW_THREADS if (bad) {
        PyErr_Format(PyExc_ValueError, "%s: contains NaN or infinity", name);
        return -1;
    }
    return 0;
}

/* A new uninitialised float32 array of the given shape. */
static PyArrayObject *new_f32(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_EMPTY(nd, (npy_intp *)dims, NPY_FLOAT32, 0);
}

static PyObject *scratch_error(void) {
    return PyErr_NoMemory();
}

/* ---- runtime: build info, threads, SIMD path, scratch ------------------------------------- */

static const char *simd_name(int path) {
    return path == SFT_SIMD_AVX2 ? "avx2" : "portable";
}

static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
#if defined(__clang__)
    const char *compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
    const char *compiler = "gcc " __VERSION__;
#else
    const char *compiler = "unknown";
#endif
    PyObject *compiled = sft_simd_avx2_compiled() ? Py_BuildValue("[ss]", "portable", "avx2")
                                                  : Py_BuildValue("[s]", "portable");
    if (compiled == NULL) return NULL;
    return Py_BuildValue("{s:s,s:O,s:N,s:s,s:O,s:i}", "compiler", compiler, "openmp",
                         sft_openmp_enabled() ? Py_True : Py_False, "simd_compiled", compiled, "simd",
                         simd_name(sft_simd_path), "avx2_supported",
                         sft_simd_avx2_supported() ? Py_True : Py_False, "num_threads",
                         sft_get_num_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "n: expected a thread count >= 1, got %d", n);
        return NULL;
    }
    sft_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyLong_FromLong(sft_get_num_threads());
}

static PyObject *py_set_simd(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_simd", &name)) return NULL;
    int path;
    if (strcmp(name, "portable") == 0)
        path = SFT_SIMD_PORTABLE;
    else if (strcmp(name, "avx2") == 0)
        path = SFT_SIMD_AVX2;
    else if (strcmp(name, "auto") == 0) {
        sft_simd_init();
        Py_RETURN_NONE;
    } else {
        PyErr_Format(PyExc_ValueError, "path: expected 'avx2', 'portable' or 'auto', got '%s'", name);
        return NULL;
    }
    if (sft_simd_set(path) != 0) {
        PyErr_Format(PyExc_ValueError, "path: '%s' is not available on this CPU or build", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_scratch_stats(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return Py_BuildValue("{s:L,s:L}", "current", (long long)sft_scratch_current(), "peak",
                         (long long)sft_scratch_peak());
}

static PyObject *py_reset_scratch_peak(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    sft_scratch_reset_peak();
    Py_RETURN_NONE;
}

/* ---- gemm ---------------------------------------------------------------------------------- */

/* The GEMM core's whole contract, for tests: c[:, :N] = beta * c[:, :N] + alpha * op(a) @ op(b)
 * in place, c of shape (M, L >= N) (so ldc = L > N), op(B) through the pack-B callback when
 * packb, sgemm_naive when naive (alpha 1 only). */
static PyObject *py_gemm_into(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"c", "a", "b", "trans_a", "trans_b", "alpha", "beta", "packb", "naive", NULL};
    PyObject *co, *ao, *bo;
    int ta = 0, tb = 0, packb = 0, naive = 0;
    float alpha = 1.0f, beta = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|ppffpp:gemm_into", kwlist, &co, &ao, &bo, &ta, &tb,
                                     &alpha, &beta, &packb, &naive))
        return NULL;
    PyArrayObject *c = arg_f32(co, "c", 2), *a = c ? arg_f32(ao, "a", 2) : NULL;
    PyArrayObject *b = a ? arg_f32(bo, "b", 2) : NULL;
    if (b == NULL) return NULL;
    npy_intp M = PyArray_DIM(a, ta ? 1 : 0), K = PyArray_DIM(a, ta ? 0 : 1);
    npy_intp N = PyArray_DIM(b, tb ? 0 : 1);
    if (arg_dim(b, "b", tb ? 1 : 0, K, "the inner dimension of op(a)") < 0) return NULL;
    if (arg_dim(c, "c", 0, M, "the rows of op(a)") < 0) return NULL;
    if (PyArray_DIM(c, 1) < N) {
        PyErr_Format(PyExc_ValueError, "c: expected at least %zd columns (the columns of op(b)), got %zd",
                     (Py_ssize_t)N, (Py_ssize_t)PyArray_DIM(c, 1));
        return NULL;
    }
    if (naive && alpha != 1.0f) {
        PyErr_SetString(PyExc_ValueError, "alpha: the naive GEMM supports alpha == 1 only");
        return NULL;
    }
    const float *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    float *C = (float *)PyArray_DATA(c);
    int64_t lda = PyArray_DIM(a, 1), ldb = PyArray_DIM(b, 1), ldc = PyArray_DIM(c, 1);
    int64_t rsa = ta ? 1 : lda, csa = ta ? lda : 1, rsb = tb ? 1 : ldb, csb = tb ? ldb : 1;
    gemm_strided_b sb = {B, rsb, csb};
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) sgemm_naive(C, ldc, A, rsa, csa, B, rsb, csb, M, N, K, beta);
    else if (packb) rc = sgemm_packb_ab(C, ldc, A, rsa, csa, gemm_pack_b_strided, &sb, M, N, K, alpha, beta);
    else rc = sgemm_ab(C, ldc, A, rsa, csa, B, rsb, csb, M, N, K, alpha, beta);
    Py_END_ALLOW_THREADS if (rc != 0) return scratch_error();
    Py_RETURN_NONE;
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", "trans_a", "trans_b", NULL};
    PyObject *ao, *bo;
    int ta = 0, tb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|pp:matmul", kwlist, &ao, &bo, &ta, &tb)) return NULL;
    PyArrayObject *a = arg_f32(ao, "a", 2), *b = a ? arg_f32(bo, "b", 2) : NULL;
    if (b == NULL) return NULL;
    npy_intp M = PyArray_DIM(a, ta ? 1 : 0), K = PyArray_DIM(a, ta ? 0 : 1);
    npy_intp N = PyArray_DIM(b, tb ? 0 : 1);
    if (arg_dim(b, "b", tb ? 1 : 0, K, "the inner dimension of op(a)") < 0) return NULL;
    npy_intp dims[2] = {M, N};
    PyArrayObject *c = new_f32(2, dims);
    if (c == NULL) return NULL;
    const float *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    float *C = (float *)PyArray_DATA(c);
    int64_t lda = PyArray_DIM(a, 1), ldb = PyArray_DIM(b, 1);
    int rc;
    // a (M, K) row-major -> rsa = lda, csa = 1; transposed: rsa = 1, csa = lda (same for b)
    Py_BEGIN_ALLOW_THREADS rc =
        sgemm(C, N, A, ta ? 1 : lda, ta ? lda : 1, B, tb ? 1 : ldb, tb ? ldb : 1, M, N, K, 0.0f);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(c);
        return scratch_error();
    }
    return (PyObject *)c;
}

/* ---- module -------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"build_info", py_build_info, METH_NOARGS,
     "build_info() -> dict\n\nCompiler, OpenMP, SIMD paths compiled, SIMD path selected, threads."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n) -> None\n\nThreads for the kernels."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"set_simd", py_set_simd, METH_VARARGS,
     "set_simd(path) -> None\n\nSelect the 'avx2' or 'portable' kernels, or 'auto' (CPU and SPARSEFT_SIMD)."},
    {"scratch_stats", py_scratch_stats, METH_NOARGS,
     "scratch_stats() -> dict\n\nCurrent and peak bytes of kernel scratch memory."},
    {"reset_scratch_peak", py_reset_scratch_peak, METH_NOARGS, "reset_scratch_peak() -> None"},
    {"gemm_into", (PyCFunction)(void (*)(void))py_gemm_into, METH_VARARGS | METH_KEYWORDS,
     "gemm_into(c, a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, packb=False, naive=False) -> "
     "None\n\n"
     "c[:, :N] = beta * c[:, :N] + alpha * op(a) @ op(b) in place (the GEMM core's contract, for tests)."},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(a, b, trans_a=False, trans_b=False) -> ndarray\n\nop(a) @ op(b) for float32 C-contiguous 2-D "
     "arrays with the packed SIMD GEMM core."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "_core",
    "sparseft C kernels (see sparseft/_core.pyi).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    if (PyArray_ImportNumPyAPI() < 0) return NULL;
    sft_simd_init();
    return PyModule_Create(&moduledef);
}
