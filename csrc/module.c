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
#include "weightnorm.h"

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

/* ---- weightnorm ---------------------------------------------------------------------------- */

/* Parses dim (0: per row, 1: per column, -1: whole tensor) and returns the number of norms K. */
static int wn_dim(int dim, PyArrayObject *v, npy_intp *K) {
    if (dim != 0 && dim != 1 && dim != -1) {
        PyErr_Format(PyExc_ValueError, "dim: expected 0, 1 or -1 (whole tensor), got %d", dim);
        return -1;
    }
    *K = (npy_intp)weightnorm_num_norms(PyArray_DIM(v, 0), PyArray_DIM(v, 1), dim);
    return 0;
}

static PyObject *py_weightnorm_norms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *vo;
    int dim, rc;
    if (!PyArg_ParseTuple(args, "Oi:weightnorm_norms", &vo, &dim)) return NULL;
    PyArrayObject *v = arg_f32(vo, "v", 2);
    npy_intp K;
    if (v == NULL || wn_dim(dim, v, &K) < 0) return NULL;
    PyArrayObject *n = new_f32(1, &K);
    if (n == NULL) return NULL;
    float *np_ = (float *)PyArray_DATA(n);
    const float *vp = (const float *)PyArray_DATA(v);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS rc = weightnorm_norms(np_, vp, R, C, dim);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(n);
        return scratch_error();
    }
    return (PyObject *)n;
}

/* An optional output array `out` shaped like v (Py_None -> a new one); returns a new reference. */
static PyArrayObject *wn_out(PyObject *oo, const char *name, PyArrayObject *v) {
    if (oo == NULL || oo == Py_None) return new_f32(2, PyArray_DIMS(v));
    PyArrayObject *o = arg_f32(oo, name, 2);
    if (o == NULL || arg_dim(o, name, 0, PyArray_DIM(v, 0), "rows of v") < 0 ||
        arg_dim(o, name, 1, PyArray_DIM(v, 1), "columns of v") < 0)
        return NULL;
    if (PyArray_FailUnlessWriteable(o, name) < 0) return NULL;
    Py_INCREF(o);
    return o;
}

static PyObject *py_weightnorm_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"v", "g", "dim", "out", NULL};
    PyObject *vo, *go, *oo = NULL;
    int dim, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOi|O:weightnorm_forward", kwlist, &vo, &go, &dim, &oo))
        return NULL;
    PyArrayObject *v = arg_f32(vo, "v", 2), *g = v ? arg_f32(go, "g", 1) : NULL;
    npy_intp K;
    if (g == NULL || wn_dim(dim, v, &K) < 0) return NULL;
    if (arg_dim(g, "g", 0, K, "one value per norm") < 0) return NULL;
    PyArrayObject *w = wn_out(oo, "out", v);
    if (w == NULL) return NULL;
    float *wp = (float *)PyArray_DATA(w);
    const float *vp = (const float *)PyArray_DATA(v), *gp = (const float *)PyArray_DATA(g);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS rc = weightnorm_forward(wp, vp, gp, R, C, dim);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(w);
        return scratch_error();
    }
    return (PyObject *)w;
}

static PyObject *py_weightnorm_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"grad_w", "v", "g", "dim", "out", NULL};
    PyObject *gwo, *vo, *go, *oo = NULL;
    int dim, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOi|O:weightnorm_backward", kwlist, &gwo, &vo, &go, &dim,
                                     &oo))
        return NULL;
    PyArrayObject *gw = arg_f32(gwo, "grad_w", 2), *v = gw ? arg_f32(vo, "v", 2) : NULL;
    PyArrayObject *g = v ? arg_f32(go, "g", 1) : NULL;
    npy_intp K;
    if (g == NULL || wn_dim(dim, v, &K) < 0) return NULL;
    if (arg_dim(gw, "grad_w", 0, PyArray_DIM(v, 0), "rows of v") < 0 ||
        arg_dim(gw, "grad_w", 1, PyArray_DIM(v, 1), "columns of v") < 0 ||
        arg_dim(g, "g", 0, K, "one value per norm") < 0)
        return NULL;
    PyArrayObject *gv = wn_out(oo, "out", v), *gg = gv ? new_f32(1, &K) : NULL;
    if (gg == NULL) {
        Py_XDECREF(gv);
        return NULL;
    }
    float *gvp = (float *)PyArray_DATA(gv), *ggp = (float *)PyArray_DATA(gg);
    const float *gwp = (const float *)PyArray_DATA(gw), *vp = (const float *)PyArray_DATA(v);
    const float *gp = (const float *)PyArray_DATA(g);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS rc = weightnorm_backward(gvp, ggp, gwp, vp, gp, R, C, dim);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(gv);
        Py_DECREF(gg);
        return scratch_error();
    }
    return Py_BuildValue("NN", gv, gg);
}

/* Checks the DoRA operands W (out, in), mask (out, in) bool or uint8 (nonzero = kept, as the LoRS
 * kernels take it), A (r, in), B (out, r). */
static int dora_args(PyObject *wo, PyObject *mo, PyObject *ao, PyObject *bo, PyArrayObject **W,
                     PyArrayObject **M, PyArrayObject **A, PyArrayObject **B) {
    *W = arg_f32(wo, "W", 2);
    int mtype = PyArray_Check(mo) && PyArray_TYPE((PyArrayObject *)mo) == NPY_UINT8 ? NPY_UINT8 : NPY_BOOL;
    *M = *W ? arg_array(mo, "mask", mtype, 2) : NULL;
    *A = *M ? arg_f32(ao, "A", 2) : NULL;
    *B = *A ? arg_f32(bo, "B", 2) : NULL;
    if (*B == NULL) return -1;
    npy_intp out = PyArray_DIM(*W, 0), in = PyArray_DIM(*W, 1), r = PyArray_DIM(*A, 0);
    if (arg_dim(*M, "mask", 0, out, "rows of W") < 0 || arg_dim(*M, "mask", 1, in, "columns of W") < 0 ||
        arg_dim(*A, "A", 1, in, "columns of W") < 0 || arg_dim(*B, "B", 0, out, "rows of W") < 0 ||
        arg_dim(*B, "B", 1, r, "rows of A") < 0)
        return -1;
    return 0;
}

static PyObject *py_dora_rownorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *wo, *mo, *ao, *bo;
    float s;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOf:dora_rownorm_forward", &wo, &mo, &ao, &bo, &s)) return NULL;
    PyArrayObject *W, *M, *A, *B;
    if (dora_args(wo, mo, ao, bo, &W, &M, &A, &B) < 0) return NULL;
    npy_intp out = PyArray_DIM(W, 0);
    PyArrayObject *n = new_f32(1, &out);
    if (n == NULL) return NULL;
    float *np_ = (float *)PyArray_DATA(n);
    const float *Wp = (const float *)PyArray_DATA(W), *Ap = (const float *)PyArray_DATA(A);
    const float *Bp = (const float *)PyArray_DATA(B);
    const uint8_t *Mp = (const uint8_t *)PyArray_DATA(M);
    int64_t in = PyArray_DIM(W, 1), r = PyArray_DIM(A, 0);
    Py_BEGIN_ALLOW_THREADS rc = dora_rownorm_forward(np_, Wp, Mp, Ap, Bp, s, out, in, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(n);
        return scratch_error();
    }
    return (PyObject *)n;
}

static PyObject *py_dora_rownorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *gno, *no, *wo, *mo, *ao, *bo;
    float s;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOOOf:dora_rownorm_backward", &gno, &no, &wo, &mo, &ao, &bo, &s))
        return NULL;
    PyArrayObject *gn = arg_f32(gno, "grad_n", 1), *n = gn ? arg_f32(no, "n", 1) : NULL;
    PyArrayObject *W, *M, *A, *B;
    if (n == NULL || dora_args(wo, mo, ao, bo, &W, &M, &A, &B) < 0) return NULL;
    npy_intp out = PyArray_DIM(W, 0), in = PyArray_DIM(W, 1), r = PyArray_DIM(A, 0);
    if (arg_dim(gn, "grad_n", 0, out, "rows of W") < 0 || arg_dim(n, "n", 0, out, "rows of W") < 0)
        return NULL;
    npy_intp da_dims[2] = {r, in}, db_dims[2] = {out, r};
    PyArrayObject *dA = (PyArrayObject *)PyArray_ZEROS(2, da_dims, NPY_FLOAT32, 0);
    PyArrayObject *dB = dA ? (PyArrayObject *)PyArray_ZEROS(2, db_dims, NPY_FLOAT32, 0) : NULL;
    if (dB == NULL) {
        Py_XDECREF(dA);
        return NULL;
    }
    float *dAp = (float *)PyArray_DATA(dA), *dBp = (float *)PyArray_DATA(dB);
    const float *gnp = (const float *)PyArray_DATA(gn), *np_ = (const float *)PyArray_DATA(n);
    const float *Wp = (const float *)PyArray_DATA(W), *Ap = (const float *)PyArray_DATA(A);
    const float *Bp = (const float *)PyArray_DATA(B);
    const uint8_t *Mp = (const uint8_t *)PyArray_DATA(M);
    Py_BEGIN_ALLOW_THREADS rc = dora_rownorm_backward(dAp, dBp, gnp, np_, Wp, Mp, Ap, Bp, s, out, in, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error();
    }
    return Py_BuildValue("NN", dA, dB);
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
    /* weightnorm */
    {"weightnorm_norms", py_weightnorm_norms, METH_VARARGS,
     "weightnorm_norms(v, dim) -> ndarray\n\nNorms of v (R, C) float32 per row (dim 0), per column (dim 1) "
     "or "
     "whole (dim -1), accumulated in double."},
    {"weightnorm_forward", (PyCFunction)(void (*)(void))py_weightnorm_forward, METH_VARARGS | METH_KEYWORDS,
     "weightnorm_forward(v, g, dim, out=None) -> ndarray\n\nw = g * v / ||v|| (g 1-D, one value per norm); a "
     "zero-norm slice gives 0. out: a float32 array shaped like v to write w into (may be v)."},
    {"weightnorm_backward", (PyCFunction)(void (*)(void))py_weightnorm_backward, METH_VARARGS | METH_KEYWORDS,
     "weightnorm_backward(grad_w, v, g, dim, out=None) -> (grad_v, grad_g)\n\nGradients of w = g * v / "
     "||v||; a zero-norm slice gives 0. out: a float32 array shaped like v to write grad_v into (may be "
     "grad_w or v)."},
    {"dora_rownorm_forward", py_dora_rownorm_forward, METH_VARARGS,
     "dora_rownorm_forward(W, mask, A, B, scale) -> ndarray\n\nRow norms of W + scale * (B @ A) * mask, "
     "accumulated in double, without an (out, in) buffer."},
    {"dora_rownorm_backward", py_dora_rownorm_backward, METH_VARARGS,
     "dora_rownorm_backward(grad_n, n, W, mask, A, B, scale) -> (dA, dB)\n\nGradients of the adapters A, B "
     "through the row norms n (0 for rows with n == 0)."},
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
