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
#include "sparse.h"

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

/* ---- sparse ---- */

/* Parses base = (kind, out, in, n, m, values, indices, rowptr) into W (pointers borrowed from the
 * tuple's arrays) and checks dtypes, shapes and the index structure. */
static int parse_sparse_base(PyObject *base, sparse_base *W) {
    const char *kind;
    Py_ssize_t out, in, n, m;
    PyObject *vo, *io, *ro;
    if (!PyTuple_Check(base)) {
        PyErr_Format(PyExc_TypeError,
                     "base: expected a tuple (kind, out, in, n, m, values, indices, rowptr), got %s",
                     Py_TYPE(base)->tp_name);
        return -1;
    }
    if (!PyArg_ParseTuple(base, "snnnnOOO;base: expected (kind, out, in, n, m, values, indices, rowptr)",
                          &kind, &out, &in, &n, &m, &vo, &io, &ro))
        return -1;
    if (out < 0 || in < 0) {
        PyErr_Format(PyExc_ValueError, "base: expected out, in >= 0, got (%zd, %zd)", out, in);
        return -1;
    }
    memset(W, 0, sizeof *W);
    W->out = out, W->in = in, W->n = n, W->m = m;
    int64_t nnz;
    if (strcmp(kind, "csr") == 0) {
        PyArrayObject *v = arg_f32(vo, "values", 1);
        PyArrayObject *c = v ? arg_array(io, "indices", NPY_INT32, 1) : NULL;
        PyArrayObject *rp = c ? arg_array(ro, "rowptr", NPY_INT64, 1) : NULL;
        if (rp == NULL) return -1;
        nnz = PyArray_DIM(v, 0);
        if (arg_dim(c, "indices", 0, nnz, "one column index per stored value") < 0) return -1;
        if (arg_dim(rp, "rowptr", 0, out + 1, "out + 1") < 0) return -1;
        W->kind = SPARSE_CSR;
        W->values = (const float *)PyArray_DATA(v);
        W->colidx = (const int32_t *)PyArray_DATA(c);
        W->rowptr = (const int64_t *)PyArray_DATA(rp);
        if (arg_finite(v, "values") < 0) return -1;
    } else if (strcmp(kind, "nm") == 0) {
        if (m < 1 || m > 256 || n < 0 || n > m || in % m != 0) {
            PyErr_Format(PyExc_ValueError,
                         "base: expected 0 <= n <= m <= 256 and in %% m == 0, got n=%zd, m=%zd, in=%zd", n, m,
                         in);
            return -1;
        }
        PyArrayObject *v = arg_f32(vo, "values", 2);
        PyArrayObject *c = v ? arg_array(io, "indices", NPY_UINT8, 2) : NULL;
        if (c == NULL) return -1;
        if (arg_dim(v, "values", 0, out, "out") < 0 ||
            arg_dim(v, "values", 1, in / m * n, "in / m * n") < 0 ||
            arg_dim(c, "indices", 0, out, "out") < 0 ||
            arg_dim(c, "indices", 1, in / m * n, "in / m * n") < 0)
            return -1;
        W->kind = SPARSE_NM;
        W->values = (const float *)PyArray_DATA(v);
        W->idx = (const uint8_t *)PyArray_DATA(c);
        nnz = (int64_t)out * (in / m * n);
        if (arg_finite(v, "values") < 0) return -1;
    } else {
        PyErr_Format(PyExc_ValueError, "base: expected kind 'csr' or 'nm', got '%s'", kind);
        return -1;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS bad = sparse_check(W, nnz);
    Py_END_ALLOW_THREADS if (bad) {
        static const char *why[] = {"", "rowptr: expected 0, nondecreasing, ending at the number of values",
                                    "indices: expected increasing column indices in [0, in) within each row",
                                    "indices: expected increasing positions in [0, m) within each group",
                                    "base: expected in to be a multiple of m and n <= m"};
        PyErr_SetString(PyExc_ValueError, why[bad]);
        return -1;
    }
    return 0;
}

/* Checks the adapter A (r, in), B (out, r) against W; returns r or -1. */
static npy_intp parse_adapter(PyObject *ao, PyObject *bo, const sparse_base *W, PyArrayObject **a,
                              PyArrayObject **b) {
    *a = arg_f32(ao, "A", 2);
    *b = *a ? arg_f32(bo, "B", 2) : NULL;
    if (*b == NULL) return -1;
    npy_intp r = PyArray_DIM(*a, 0);
    if (arg_dim(*a, "A", 1, W->in, "in") < 0 || arg_dim(*b, "B", 0, W->out, "out") < 0 ||
        arg_dim(*b, "B", 1, r, "r, the rows of A") < 0 || arg_finite(*a, "A") < 0 || arg_finite(*b, "B") < 0)
        return -1;
    return r;
}

static int check_scale(double scale) {
    if (isfinite(scale)) return 0;
    PyErr_Format(PyExc_ValueError, "scale: expected a finite number, got %s", isnan(scale) ? "nan" : "inf");
    return -1;
}

static PyObject *py_sparse_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"base", "x", "A", "B", "scale", "naive", NULL};
    PyObject *baseo, *xo, *ao, *bo;
    double scale;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd|p:sparse_forward", kwlist, &baseo, &xo, &ao, &bo,
                                     &scale, &naive))
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W) < 0 || check_scale(scale) < 0) return NULL;
    PyArrayObject *x = arg_f32(xo, "x", 2), *a, *b;
    if (x == NULL || arg_dim(x, "x", 1, W.in, "in") < 0 || arg_finite(x, "x") < 0) return NULL;
    npy_intp r = parse_adapter(ao, bo, &W, &a, &b);
    if (r < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0);
    npy_intp dims[2] = {N, (npy_intp)W.out};
    PyArrayObject *y = new_f32(2, dims);
    if (y == NULL) return NULL;
    float *Y = (float *)PyArray_DATA(y);
    const float *X = (const float *)PyArray_DATA(x), *A = (const float *)PyArray_DATA(a),
                *B = (const float *)PyArray_DATA(b);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) sparse_forward_naive(Y, &W, X, A, B, (float)scale, N, r);
    else rc = sparse_forward(Y, &W, X, A, B, (float)scale, N, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(y);
        return scratch_error();
    }
    return (PyObject *)y;
}

static PyObject *py_sparse_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"base",  "gy",         "x",           "A",     "B",
                             "scale", "input_grad", "weight_grad", "naive", NULL};
    PyObject *baseo, *gyo, *xo, *ao, *bo;
    double scale;
    int want_gx = 1, want_g = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|ppp:sparse_backward", kwlist, &baseo, &gyo, &xo,
                                     &ao, &bo, &scale, &want_gx, &want_g, &naive))
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W) < 0 || check_scale(scale) < 0) return NULL;
    PyArrayObject *gy = arg_f32(gyo, "gy", 2), *x = NULL, *a, *b;
    if (gy == NULL || arg_dim(gy, "gy", 1, W.out, "out") < 0 || arg_finite(gy, "gy") < 0) return NULL;
    npy_intp N = PyArray_DIM(gy, 0);
    if (want_g) {
        x = arg_f32(xo, "x", 2);
        if (x == NULL || arg_dim(x, "x", 0, N, "tokens, the rows of gy") < 0 ||
            arg_dim(x, "x", 1, W.in, "in") < 0 || arg_finite(x, "x") < 0)
            return NULL;
    }
    npy_intp r = parse_adapter(ao, bo, &W, &a, &b);
    if (r < 0) return NULL;
    npy_intp gdims[2] = {N, (npy_intp)W.in}, adims[2] = {r, (npy_intp)W.in}, bdims[2] = {(npy_intp)W.out, r};
    PyArrayObject *gx = want_gx ? new_f32(2, gdims) : NULL;
    PyArrayObject *da = want_g ? new_f32(2, adims) : NULL;
    PyArrayObject *db = want_g ? new_f32(2, bdims) : NULL;
    if ((want_gx && gx == NULL) || (want_g && (da == NULL || db == NULL))) {
        Py_XDECREF(gx), Py_XDECREF(da), Py_XDECREF(db);
        return NULL;
    }
    float *GX = gx ? (float *)PyArray_DATA(gx) : NULL, *DA = da ? (float *)PyArray_DATA(da) : NULL,
          *DB = db ? (float *)PyArray_DATA(db) : NULL;
    const float *GY = (const float *)PyArray_DATA(gy), *X = x ? (const float *)PyArray_DATA(x) : NULL,
                *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) sparse_backward_naive(GX, DA, DB, &W, GY, X, A, B, (float)scale, N, r);
    else rc = sparse_backward(GX, DA, DB, &W, GY, X, A, B, (float)scale, N, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_XDECREF(gx), Py_XDECREF(da), Py_XDECREF(db);
        return scratch_error();
    }
    PyObject *none = Py_None;
    return Py_BuildValue("(NNN)", gx ? (PyObject *)gx : (Py_INCREF(none), none),
                         da ? (PyObject *)da : (Py_INCREF(none), none),
                         db ? (PyObject *)db : (Py_INCREF(none), none));
}

static PyObject *py_sparse_merge(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"base", "A", "B", "scale", NULL};
    PyObject *baseo, *ao, *bo;
    double scale;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOd:sparse_merge", kwlist, &baseo, &ao, &bo, &scale))
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W) < 0 || check_scale(scale) < 0) return NULL;
    PyArrayObject *a, *b;
    npy_intp r = parse_adapter(ao, bo, &W, &a, &b);
    if (r < 0) return NULL;
    PyArrayObject *vals = (PyArrayObject *)PyArray_NewLikeArray((PyArrayObject *)PyTuple_GET_ITEM(baseo, 5),
                                                                NPY_CORDER, NULL, 0);
    if (vals == NULL) return NULL;
    float *V = (float *)PyArray_DATA(vals);
    const float *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = sparse_merge(V, &W, A, B, (float)scale, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(vals);
        return scratch_error();
    }
    return (PyObject *)vals;
}

static PyObject *py_sparse_token_block(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *baseo;
    int backward;
    if (!PyArg_ParseTuple(args, "Op:sparse_token_block", &baseo, &backward)) return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W) < 0) return NULL;
    return PyLong_FromLongLong((long long)sparse_token_block(&W, backward));
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
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(a, b, trans_a=False, trans_b=False) -> ndarray\n\nop(a) @ op(b) for float32 C-contiguous 2-D "
     "arrays with the packed SIMD GEMM core."},
    /* sparse */
    {"sparse_forward", (PyCFunction)(void (*)(void))py_sparse_forward, METH_VARARGS | METH_KEYWORDS,
     "sparse_forward(base, x, A, B, scale, naive=False) -> ndarray\n\ny (N, out) = x @ W'^T with W' = W + "
     "scale*(B A) at the stored positions of base = (kind, out, in, n, m, values, indices, rowptr)."},
    {"sparse_backward", (PyCFunction)(void (*)(void))py_sparse_backward, METH_VARARGS | METH_KEYWORDS,
     "sparse_backward(base, gy, x, A, B, scale, input_grad=True, weight_grad=True, naive=False) -> (gx, dA, "
     "dB)"
     "\n\ngx = gy @ W' and the exact masked adapter gradients (None where not requested), one fused pass."},
    {"sparse_merge", (PyCFunction)(void (*)(void))py_sparse_merge, METH_VARARGS | METH_KEYWORDS,
     "sparse_merge(base, A, B, scale) -> ndarray\n\nThe stored values of W' = W + scale*(B A) (same "
     "layout)."},
    {"sparse_token_block", py_sparse_token_block, METH_VARARGS,
     "sparse_token_block(base, backward) -> int\n\nTokens per thread block the sparse kernels use for base."},
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
