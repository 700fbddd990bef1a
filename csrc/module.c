/* module.c: the sparseft._core extension. The ONLY file that includes Python.h / NumPy.
 * Every wrapper: parse arguments, validate them with the arg_* helpers below (errors name the
 * argument, what was expected and what came), allocate outputs, release the GIL, call a kernel.
 * No arithmetic happens here. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>

#include <float.h>
#include <stdio.h>
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "sparse.h"
#include "remat.h"
#include "weightnorm.h"
#include "lors.h"

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
    if (!PyArray_ISNOTSWAPPED(a)) {
        // '>f4' has the float32 type number but its bytes would be read in the wrong order
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError,
                     "%s: expected dtype %S in native byte order, got %S (pass %s.astype(numpy.%S))", name,
                     (PyObject *)want, (PyObject *)PyArray_DESCR(a), name, (PyObject *)want);
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
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected a C-contiguous aligned array, got a strided view "
                     "(pass numpy.ascontiguousarray(%s))",
                     name, name);
        return NULL;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected a C-contiguous aligned array, got an unaligned buffer (pass %s.copy())",
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
    return path == SFT_SIMD_AVX512 ? "avx512" : path == SFT_SIMD_AVX2 ? "avx2" : "portable";
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
    PyObject *compiled = sft_simd_avx2_compiled() ? Py_BuildValue("[sss]", "portable", "avx2", "avx512")
                                                  : Py_BuildValue("[s]", "portable");
    if (compiled == NULL) return NULL;
    return Py_BuildValue("{s:s,s:O,s:N,s:s,s:O,s:O,s:i}", "compiler", compiler, "openmp",
                         sft_openmp_enabled() ? Py_True : Py_False, "simd_compiled", compiled, "simd",
                         simd_name(sft_simd_path), "avx2_supported",
                         sft_simd_avx2_supported() ? Py_True : Py_False, "avx512_supported",
                         sft_simd_avx512_supported() ? Py_True : Py_False, "num_threads",
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
    else if (strcmp(name, "avx512") == 0)
        path = SFT_SIMD_AVX512;
    else if (strcmp(name, "auto") == 0) {
        sft_simd_init();
        Py_RETURN_NONE;
    } else {
        PyErr_Format(PyExc_ValueError, "path: expected 'avx512', 'avx2', 'portable' or 'auto', got '%s'",
                     name);
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
    if (!PyArray_ISWRITEABLE(c)) {
        PyErr_SetString(PyExc_ValueError, "c: expected a writeable array, got a read-only one");
        return NULL;
    }
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

/* ---- lors ---------------------------------------------------------------------------------- */

/* The adapter operands every LoRS kernel takes, validated against each other:
 * mask (out, in) uint8 or bool, W (out, in) float32 (when Wo is not NULL), A (r, in), B (out, r). */
typedef struct {
    PyArrayObject *W, *M, *A, *B;
    npy_intp out, in, r;
} lors_args;

static int lors_parse(PyObject *Wo, PyObject *Mo, PyObject *Ao, PyObject *Bo, int check_weights,
                      lors_args *a) {
    if (PyArray_Check(Mo) && PyArray_TYPE((PyArrayObject *)Mo) == NPY_BOOL)
        a->M = arg_array(Mo, "mask", NPY_BOOL, 2);
    else
        a->M = arg_array(Mo, "mask", NPY_UINT8, 2);
    if (a->M == NULL) return -1;
    a->out = PyArray_DIM(a->M, 0), a->in = PyArray_DIM(a->M, 1);
    a->W = NULL;
    if (Wo != NULL) {
        if ((a->W = arg_f32(Wo, "W", 2)) == NULL) return -1;
        if (arg_dim(a->W, "W", 0, a->out, "out, from mask") < 0 ||
            arg_dim(a->W, "W", 1, a->in, "in, from mask") < 0)
            return -1;
    }
    if ((a->A = arg_f32(Ao, "A", 2)) == NULL) return -1;
    if (arg_dim(a->A, "A", 1, a->in, "in, from mask") < 0) return -1;
    a->r = PyArray_DIM(a->A, 0);
    if ((a->B = arg_f32(Bo, "B", 2)) == NULL) return -1;
    if (arg_dim(a->B, "B", 0, a->out, "out, from mask") < 0 || arg_dim(a->B, "B", 1, a->r, "r, from A") < 0)
        return -1;
    if (arg_finite(a->A, "A") < 0 || arg_finite(a->B, "B") < 0) return -1;
    if (a->W != NULL && check_weights && arg_finite(a->W, "W") < 0) return -1;
    return 0;
}

/* Checks a scale (parsed as a double) for the float32 kernels: finite, and finite as a float32 too
 * (1e39 would become inf and turn 0 * scale into NaN). */
static int check_scale(double scale) {
    if (isfinite(scale) && fabs(scale) <= FLT_MAX) return 0;
    if (isfinite(scale)) {
        char msg[128]; /* PyErr_Format has no %g */
        snprintf(msg, sizeof msg, "scale: expected a finite float32 number (|scale| <= %g), got %g",
                 (double)FLT_MAX, scale);
        PyErr_SetString(PyExc_ValueError, msg);
    } else
        PyErr_Format(PyExc_ValueError, "scale: expected a finite number, got %s",
                     isnan(scale) ? "nan" : "inf");
    return -1;
}

/* A 2-D activation (rows, cols) with cols fixed by the weights. */
static PyArrayObject *lors_act(PyObject *o, const char *name, npy_intp cols, const char *what, int check) {
    PyArrayObject *a = arg_f32(o, name, 2);
    if (a == NULL || arg_dim(a, name, 1, cols, what) < 0 || (check && arg_finite(a, name) < 0)) return NULL;
    return a;
}

static PyObject *py_lors_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "W", "mask", "A", "B", "scale", "bias", "check_weights", "naive", NULL};
    PyObject *xo, *Wo, *Mo, *Ao, *Bo, *bo = Py_None;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|Opp:lors_forward", kwlist, &xo, &Wo, &Mo, &Ao, &Bo,
                                     &sd, &bo, &check, &naive))
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, check, &a) < 0 || check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
    PyArrayObject *x = lors_act(xo, "x", a.in, "in, from W", 1);
    if (x == NULL) return NULL;
    PyArrayObject *bias = NULL;
    if (bo != Py_None) {
        if ((bias = arg_f32(bo, "bias", 1)) == NULL || arg_dim(bias, "bias", 0, a.out, "out, from W") < 0 ||
            arg_finite(bias, "bias") < 0)
            return NULL;
    }
    npy_intp N = PyArray_DIM(x, 0), dims[2] = {N, a.out};
    PyArrayObject *y = new_f32(2, dims);
    if (y == NULL) return NULL;
    float *Y = (float *)PyArray_DATA(y);
    const float *X = (const float *)PyArray_DATA(x), *W = (const float *)PyArray_DATA(a.W);
    const uint8_t *M = (const uint8_t *)PyArray_DATA(a.M);
    const float *A = (const float *)PyArray_DATA(a.A), *B = (const float *)PyArray_DATA(a.B);
    const float *bias_p = bias != NULL ? (const float *)PyArray_DATA(bias) : NULL;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) lors_forward_naive(Y, X, W, M, A, B, bias_p, s, N, a.in, a.out, a.r);
    else rc = lors_forward(Y, X, W, M, A, B, bias_p, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(y);
        return scratch_error();
    }
    return (PyObject *)y;
}

static PyObject *py_lors_backward_input(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "W", "mask", "A", "B", "scale", "check_weights", "naive", NULL};
    PyObject *go, *Wo, *Mo, *Ao, *Bo;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|pp:lors_backward_input", kwlist, &go, &Wo, &Mo,
                                     &Ao, &Bo, &sd, &check, &naive))
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, check, &a) < 0 || check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
    PyArrayObject *gy = lors_act(go, "gy", a.out, "out, from W", 1);
    if (gy == NULL) return NULL;
    npy_intp N = PyArray_DIM(gy, 0), dims[2] = {N, a.in};
    PyArrayObject *gx = new_f32(2, dims);
    if (gx == NULL) return NULL;
    float *GX = (float *)PyArray_DATA(gx);
    const float *GY = (const float *)PyArray_DATA(gy), *W = (const float *)PyArray_DATA(a.W);
    const uint8_t *M = (const uint8_t *)PyArray_DATA(a.M);
    const float *A = (const float *)PyArray_DATA(a.A), *B = (const float *)PyArray_DATA(a.B);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) lors_backward_input_naive(GX, GY, W, M, A, B, s, N, a.in, a.out, a.r);
    else rc = lors_backward_input(GX, GY, W, M, A, B, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(gx);
        return scratch_error();
    }
    return (PyObject *)gx;
}

static PyObject *py_lors_backward_exact(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "x", "mask", "A", "B", "scale", "check_finite", "naive", NULL};
    PyObject *go, *xo, *Mo, *Ao, *Bo;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|pp:lors_backward_exact", kwlist, &go, &xo, &Mo,
                                     &Ao, &Bo, &sd, &check, &naive))
        return NULL;
    lors_args a;
    if (lors_parse(NULL, Mo, Ao, Bo, 0, &a) < 0 || check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
    PyArrayObject *gy = lors_act(go, "gy", a.out, "out, from mask", check);
    if (gy == NULL) return NULL;
    PyArrayObject *x = lors_act(xo, "x", a.in, "in, from mask", check);
    if (x == NULL) return NULL;
    npy_intp N = PyArray_DIM(gy, 0);
    if (arg_dim(x, "x", 0, N, "tokens, from gy") < 0) return NULL;
    npy_intp da[2] = {a.r, a.in}, db[2] = {a.out, a.r};
    PyArrayObject *dA = new_f32(2, da), *dB = dA ? new_f32(2, db) : NULL;
    if (dB == NULL) {
        Py_XDECREF(dA);
        return NULL;
    }
    float *DA = (float *)PyArray_DATA(dA), *DB = (float *)PyArray_DATA(dB);
    const float *GY = (const float *)PyArray_DATA(gy), *X = (const float *)PyArray_DATA(x);
    const uint8_t *M = (const uint8_t *)PyArray_DATA(a.M);
    const float *A = (const float *)PyArray_DATA(a.A), *B = (const float *)PyArray_DATA(a.B);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive)
        lors_backward_exact_naive(DA, DB, GY, X, M, A, B, s, N, a.in, a.out, a.r);
    else rc = lors_backward_exact(DA, DB, GY, X, M, A, B, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error();
    }
    return Py_BuildValue("NN", dA, dB);
}

static PyObject *py_lors_backward_lors(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "x", "A", "B", "scale", "check_finite", "naive", NULL};
    PyObject *go, *xo, *Ao, *Bo;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd|pp:lors_backward_lors", kwlist, &go, &xo, &Ao, &Bo,
                                     &sd, &check, &naive))
        return NULL;
    PyArrayObject *A = arg_f32(Ao, "A", 2);
    if (A == NULL) return NULL;
    npy_intp r = PyArray_DIM(A, 0), in = PyArray_DIM(A, 1);
    PyArrayObject *B = arg_f32(Bo, "B", 2);
    if (B == NULL || arg_dim(B, "B", 1, r, "r, from A") < 0) return NULL;
    npy_intp out = PyArray_DIM(B, 0);
    if (arg_finite(A, "A") < 0 || arg_finite(B, "B") < 0 || check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
    PyArrayObject *gy = lors_act(go, "gy", out, "out, from B", check);
    if (gy == NULL) return NULL;
    PyArrayObject *x = lors_act(xo, "x", in, "in, from A", check);
    if (x == NULL) return NULL;
    npy_intp N = PyArray_DIM(gy, 0);
    if (arg_dim(x, "x", 0, N, "tokens, from gy") < 0) return NULL;
    npy_intp da[2] = {r, in}, db[2] = {out, r};
    PyArrayObject *dA = new_f32(2, da), *dB = dA ? new_f32(2, db) : NULL;
    if (dB == NULL) {
        Py_XDECREF(dA);
        return NULL;
    }
    float *DA = (float *)PyArray_DATA(dA), *DB = (float *)PyArray_DATA(dB);
    const float *GY = (const float *)PyArray_DATA(gy), *X = (const float *)PyArray_DATA(x);
    const float *Ap = (const float *)PyArray_DATA(A), *Bp = (const float *)PyArray_DATA(B);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS if (naive) lors_backward_lors_naive(DA, DB, GY, X, Ap, Bp, s, N, in, out, r);
    else rc = lors_backward_lors(DA, DB, GY, X, Ap, Bp, s, N, in, out, r);
    Py_END_ALLOW_THREADS if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error();
    }
    return Py_BuildValue("NN", dA, dB);
}

static PyObject *py_lors_merge(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"W", "mask", "A", "B", "scale", "naive", NULL};
    PyObject *Wo, *Mo, *Ao, *Bo;
    double sd;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd|p:lors_merge", kwlist, &Wo, &Mo, &Ao, &Bo, &sd,
                                     &naive))
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, 1, &a) < 0 || check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
    npy_intp dims[2] = {a.out, a.in};
    PyArrayObject *w2 = new_f32(2, dims);
    if (w2 == NULL) return NULL;
    float *W2 = (float *)PyArray_DATA(w2);
    const float *W = (const float *)PyArray_DATA(a.W);
    const uint8_t *M = (const uint8_t *)PyArray_DATA(a.M);
    const float *A = (const float *)PyArray_DATA(a.A), *B = (const float *)PyArray_DATA(a.B);
    Py_BEGIN_ALLOW_THREADS if (naive) lors_merge_naive(W2, W, M, A, B, s, a.in, a.out, a.r);
    else lors_merge(W2, W, M, A, B, s, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS return (PyObject *)w2;
}

static PyObject *py_lors_scratch_bytes(PyObject *self, PyObject *args) {
    (void)self;
    long long in, out, r;
    if (!PyArg_ParseTuple(args, "LLL:lors_scratch_bytes", &in, &out, &r)) return NULL;
    if (in < 0 || out < 0 || r < 0) {
        PyErr_Format(PyExc_ValueError,
                     "in_features, out_features, r: expected sizes >= 0, got %lld, %lld, %lld", in, out, r);
        return NULL;
    }
    int nth = sft_get_num_threads();
    if (4.0 * nth * (double)r * ((double)in + (double)out) > 0x1p62) {
        PyErr_Format(
            PyExc_ValueError,
            "in_features, out_features, r: expected sizes whose scratch fits in int64, got %lld, %lld, %lld",
            in, out, r);
        return NULL;
    }
    // the exact gradient's tiles and partials, plus the GEMM core's scratch: one single-thread
    // GEMM per thread (the gradient tiles) or one GEMM on all threads (forward, input gradient)
    int64_t gemm = SFT_MAX((int64_t)nth * sgemm_scratch_bytes(1), sgemm_scratch_bytes(nth));
    return PyLong_FromLongLong((long long)(lors_scratch_bytes(nth, in, out, r) + gemm));
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
    double sd;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOd:dora_rownorm_forward", &wo, &mo, &ao, &bo, &sd)) return NULL;
    if (check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
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
    double sd;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOOOd:dora_rownorm_backward", &gno, &no, &wo, &mo, &ao, &bo, &sd))
        return NULL;
    if (check_scale(sd) < 0) return NULL;
    const float s = (float)sd;
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

/* ---- remat ---- */

/* Checks a 1-D int64 array; if expected >= 0 also its length. */
static PyArrayObject *arg_i64(PyObject *obj, const char *name, npy_intp expected, const char *what) {
    PyArrayObject *a = arg_array(obj, name, NPY_INT64, 1);
    if (a == NULL) return NULL;
    if (expected >= 0 && arg_dim(a, name, 0, expected, what) < 0) return NULL;
    return a;
}

static const int64_t *i64(PyArrayObject *a) {
    return (const int64_t *)PyArray_DATA(a);
}

/* Checks a CSR adjacency (ptr (n+1,), idx (ptr[n],)) of n nodes. */
static int arg_csr(PyArrayObject **ptr, PyArrayObject **idx, PyObject *ptr_o, PyObject *idx_o,
                   const char *ptr_name, const char *idx_name, npy_intp n) {
    *ptr = arg_i64(ptr_o, ptr_name, n + 1, "number of nodes + 1");
    if (*ptr == NULL) return -1;
    *idx = arg_i64(idx_o, idx_name, -1, "");
    if (*idx == NULL) return -1;
    int ok;
    Py_BEGIN_ALLOW_THREADS ok =
        remat_check_csr(i64(*ptr), i64(*idx), (int64_t)n, (int64_t)PyArray_DIM(*idx, 0));
    Py_END_ALLOW_THREADS if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "%s/%s: expected a CSR adjacency of %zd nodes (offsets from 0 to len(%s) = %zd, "
                     "non-decreasing, indices in [0, %zd)), got something else",
                     ptr_name, idx_name, (Py_ssize_t)n, idx_name, (Py_ssize_t)PyArray_DIM(*idx, 0),
                     (Py_ssize_t)n);
        return -1;
    }
    return 0;
}

/* Checks that memory/duration are (n,) int64 arrays of non-negative values, each summing to less
 * than 2**62 (as sparseft.Graph guarantees): the resident memory of any schedule then fits in int64,
 * and so does the duration of a schedule computing every node at most twice (the kernels check
 * longer ones as they add). */
static int arg_costs(PyArrayObject **mem, PyArrayObject **dur, PyObject *mem_o, PyObject *dur_o) {
    const int64_t limit = (int64_t)1 << 62;
    *mem = arg_i64(mem_o, "memory", -1, "");
    if (*mem == NULL) return -1;
    *dur = arg_i64(dur_o, "duration", PyArray_DIM(*mem, 0), "len(memory)");
    if (*dur == NULL) return -1;
    npy_intp n = PyArray_DIM(*mem, 0);
    int64_t msum = 0, dsum = 0;
    for (npy_intp i = 0; i < n; i++) {  // validation only: find a negative entry or a sum too large
        int64_t m = i64(*mem)[i], d = i64(*dur)[i];
        if (m < 0 || d < 0) {
            PyErr_Format(PyExc_ValueError,
                         "memory/duration: expected non-negative values, got %lld / %lld at %zd",
                         (long long)m, (long long)d, (Py_ssize_t)i);
            return -1;
        }
        msum = m >= limit - msum ? limit : msum + m;
        dsum = d >= limit - dsum ? limit : dsum + d;
        if (msum >= limit || dsum >= limit) {
            PyErr_Format(PyExc_ValueError,
                         "%s: expected values summing to less than 2**62 (so that schedule totals fit in "
                         "int64), got a partial sum of 2**62 or more at index %zd",
                         msum >= limit ? "memory" : "duration", (Py_ssize_t)i);
            return -1;
        }
    }
    return 0;
}

/* Converts obj (a Python int) to an int64 in [lo, hi]; TypeError/ValueError naming the argument. */
static int arg_int64(PyObject *obj, const char *name, long long lo, long long hi, long long *out) {
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow != 0 || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s: expected an int in [%lld, %lld], got %R", name, lo, hi, obj);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *py_remat_simulate(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"steps", "memory", "duration", "pred_ptr", "pred_idx", "profile", NULL};
    PyObject *so, *mo, *dO, *po, *io;
    int want_profile = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|p:remat_simulate", kwlist, &so, &mo, &dO, &po, &io,
                                     &want_profile))
        return NULL;
    PyArrayObject *steps = arg_i64(so, "steps", -1, ""), *mem, *dur, *ptr, *idx;
    if (steps == NULL || arg_costs(&mem, &dur, mo, dO) < 0) return NULL;
    npy_intp n = PyArray_DIM(mem, 0), ns = PyArray_DIM(steps, 0);
    if (arg_csr(&ptr, &idx, po, io, "pred_ptr", "pred_idx", n) < 0) return NULL;
    PyArrayObject *prof = NULL;
    if (want_profile) {
        prof = (PyArrayObject *)PyArray_EMPTY(1, &ns, NPY_INT64, 0);
        if (prof == NULL) return NULL;
    }
    int64_t res[4];
    int rc;
    Py_BEGIN_ALLOW_THREADS rc =
        remat_simulate(res, prof ? (int64_t *)PyArray_DATA(prof) : NULL, i64(steps), i64(mem), i64(dur),
                       i64(ptr), i64(idx), (int64_t)n, (int64_t)ns);
    Py_END_ALLOW_THREADS if (rc == REMAT_ENOMEM) {
        Py_XDECREF(prof);
        return PyErr_NoMemory();
    }
    if (prof == NULL) {
        Py_INCREF(Py_None);
        prof = (PyArrayObject *)Py_None;
    }
    return Py_BuildValue("iLLLLN", rc, (long long)res[0], (long long)res[1], (long long)res[2],
                         (long long)res[3], (PyObject *)prof);
}

static PyObject *py_remat_compact(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"steps", "pred_ptr", "pred_idx", "n", NULL};
    PyObject *so, *po, *io, *no;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:remat_compact", kwlist, &so, &po, &io, &no))
        return NULL;
    long long nll;
    if (arg_int64(no, "n", 0, PY_SSIZE_T_MAX / 16, &nll) < 0) return NULL;
    Py_ssize_t n = (Py_ssize_t)nll;
    PyArrayObject *steps = arg_i64(so, "steps", -1, ""), *ptr, *idx;
    if (steps == NULL || arg_csr(&ptr, &idx, po, io, "pred_ptr", "pred_idx", n) < 0) return NULL;
    npy_intp ns = PyArray_DIM(steps, 0), cap = 2 * ns + 1;
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(1, &cap, NPY_INT64, 0);
    if (out == NULL) return NULL;
    int64_t w = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = remat_compact((int64_t *)PyArray_DATA(out), &w, i64(steps), i64(ptr),
                                              i64(idx), (int64_t)n, (int64_t)ns, (int64_t)cap);
    Py_END_ALLOW_THREADS if (rc != REMAT_OK) {
        Py_DECREF(out);
        if (rc == REMAT_ENOMEM) return PyErr_NoMemory();
        PyErr_Format(PyExc_ValueError,
                     "steps: expected node ids in [0, %zd) (free: -1 - id), got an id outside", n);
        return NULL;
    }
    PyObject *res = PySequence_GetSlice((PyObject *)out, 0, (Py_ssize_t)w);
    Py_DECREF(out);
    return res;
}

enum { PLAN_STAGES, PLAN_GREEDY, PLAN_DTR };

/* Runs a planner (kind: PLAN_*) with a growing output buffer; returns (status, steps | None, peak,
 * duration). */
static PyObject *remat_run_planner(PyObject *args, PyObject *kwargs, int kind) {
    static char *kw_stages[] = {"memory", "duration", "pred_ptr", "pred_idx", "succ_ptr", "succ_idx",
                                "order",  "seg_end",  "budget",   "mem_exp",  "dist_exp", NULL};
    static char *kw_greedy[] = {"memory",   "duration", "pred_ptr", "pred_idx", "succ_ptr",
                                "succ_idx", "order",    "budget",   NULL};
    static char *kw_dtr[] = {"memory", "duration", "pred_ptr", "pred_idx",  "succ_ptr",  "succ_idx",
                             "order",  "once",     "budget",   "heuristic", "lookahead", NULL};
    PyObject *mo, *dO, *po, *io, *spo, *sio, *oo, *sego = Py_None, *onceo = Py_None, *bo;
    long long budget;
    double mem_exp = 1.0, dist_exp = 1.0;
    const char *heuristic = "full";
    int lookahead = 0, okp;
    if (kind == PLAN_GREEDY)
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO:remat_greedy", kw_greedy, &mo, &dO, &po,
                                          &io, &spo, &sio, &oo, &bo);
    else if (kind == PLAN_DTR)
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOO|sp:remat_dtr", kw_dtr, &mo, &dO, &po, &io,
                                          &spo, &sio, &oo, &onceo, &bo, &heuristic, &lookahead);
    else
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOdd:remat_plan_stages", kw_stages, &mo, &dO,
                                          &po, &io, &spo, &sio, &oo, &sego, &bo, &mem_exp, &dist_exp);
    if (!okp || arg_int64(bo, "budget", 0, LLONG_MAX, &budget) < 0) return NULL;
    int hcode = strcmp(heuristic, "eq") == 0 ? REMAT_DTR_EQ : REMAT_DTR_FULL;
    if (strcmp(heuristic, "full") != 0 && strcmp(heuristic, "eq") != 0) {
        PyErr_Format(PyExc_ValueError, "heuristic: expected 'full' or 'eq', got '%s'", heuristic);
        return NULL;
    }
    PyArrayObject *mem, *dur, *ptr, *idx, *sptr, *sidx, *order, *seg = NULL, *once = NULL;
    if (arg_costs(&mem, &dur, mo, dO) < 0) return NULL;
    npy_intp n = PyArray_DIM(mem, 0);
    if (arg_csr(&ptr, &idx, po, io, "pred_ptr", "pred_idx", n) < 0) return NULL;
    if (arg_csr(&sptr, &sidx, spo, sio, "succ_ptr", "succ_idx", n) < 0) return NULL;
    if ((order = arg_i64(oo, "order", n, "number of nodes")) == NULL) return NULL;
    if (!remat_check_perm(i64(order), (int64_t)n)) {
        PyErr_Format(PyExc_ValueError, "order: expected a permutation of 0..%zd, got something else", n - 1);
        return NULL;
    }
    if (sego != Py_None && (seg = arg_i64(sego, "seg_end", n, "number of nodes")) == NULL) return NULL;
    if (onceo != Py_None) {
        if ((once = arg_array(onceo, "once", NPY_BOOL, 1)) == NULL) return NULL;
        if (arg_dim(once, "once", 0, n, "number of nodes") < 0) return NULL;
    }
    if (!(mem_exp >= 0.0 && mem_exp <= 16.0) || !(dist_exp >= 0.0 && dist_exp <= 16.0)) {
        char msg[160];
        PyOS_snprintf(msg, sizeof(msg), "mem_exp/dist_exp: expected values in [0, 16], got %g / %g", mem_exp,
                      dist_exp);
        PyErr_SetString(PyExc_ValueError, msg);
        return NULL;
    }
    npy_intp cap = 4 * n + 16;
    for (;;) {
        PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(1, &cap, NPY_INT64, 0);
        if (out == NULL) return NULL;
        int64_t info[3];
        int rc;
        int64_t *o = (int64_t *)PyArray_DATA(out);
        const uint8_t *once_p = once ? (const uint8_t *)PyArray_DATA(once) : NULL;
        Py_BEGIN_ALLOW_THREADS if (kind == PLAN_GREEDY) rc =
            remat_greedy(o, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx), i64(order),
                         (int64_t)n, (int64_t)budget, (int64_t)cap);
        else if (kind == PLAN_DTR) rc =
            remat_dtr(o, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx), i64(order),
                      once_p, (int64_t)n, (int64_t)budget, hcode, lookahead, (int64_t)cap);
        else rc = remat_plan_stages(o, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx),
                                    i64(order), seg ? i64(seg) : NULL, (int64_t)n, (int64_t)budget, mem_exp,
                                    dist_exp, (int64_t)cap);
        Py_END_ALLOW_THREADS if (rc == REMAT_ECAPACITY && cap < ((npy_intp)1 << 40)) {
            Py_DECREF(out);
            cap *= 4;
            continue;
        }
        if (rc == REMAT_ENOMEM) {
            Py_DECREF(out);
            return PyErr_NoMemory();
        }
        if (rc != REMAT_OK) {
            Py_DECREF(out);
            return Py_BuildValue("iOLL", rc, Py_None, 0LL, 0LL);
        }
        PyObject *steps = PySequence_GetSlice((PyObject *)out, 0, (Py_ssize_t)info[0]);
        Py_DECREF(out);
        if (steps == NULL) return NULL;
        return Py_BuildValue("iNLL", rc, steps, (long long)info[1], (long long)info[2]);
    }
}

static PyObject *py_remat_plan_stages(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return remat_run_planner(args, kwargs, PLAN_STAGES);
}

static PyObject *py_remat_greedy(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return remat_run_planner(args, kwargs, PLAN_GREEDY);
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

static PyObject *py_sparse_plan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *baseo;
    long long N;
    if (!PyArg_ParseTuple(args, "OL:sparse_plan", &baseo, &N)) return NULL;
    if (N < 0) {
        PyErr_Format(PyExc_ValueError, "N: expected a token count >= 0, got %lld", N);
        return NULL;
    }
    sparse_base W;
    if (parse_sparse_base(baseo, &W) < 0) return NULL;
    int64_t fwd_tokens, fwd_slab, bwd_tokens, bwd_slab;
    sparse_plan(&W, (int64_t)N, sft_get_num_threads(), &fwd_tokens, &fwd_slab, &bwd_tokens, &bwd_slab);
    return Py_BuildValue("(LLLL)", (long long)fwd_tokens, (long long)fwd_slab, (long long)bwd_tokens,
                         (long long)bwd_slab);
}

/* ---- planner: DTR ---- */

static PyObject *py_remat_dtr(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return remat_run_planner(args, kwargs, PLAN_DTR);
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
    /* lors */
    {"lors_forward", (PyCFunction)(void (*)(void))py_lors_forward, METH_VARARGS | METH_KEYWORDS,
     "lors_forward(x, W, mask, A, B, scale, bias=None, check_weights=True, naive=False) -> ndarray\n\n"
     "y (N, out) = x @ W'^T (+ bias), W' = W + scale*(B@A)*mask rebuilt tile by tile."},
    {"lors_backward_input", (PyCFunction)(void (*)(void))py_lors_backward_input, METH_VARARGS | METH_KEYWORDS,
     "lors_backward_input(gy, W, mask, A, B, scale, check_weights=True, naive=False) -> ndarray\n\n"
     "gx (N, in) = gy @ W', W' rebuilt tile by tile."},
    {"lors_backward_exact", (PyCFunction)(void (*)(void))py_lors_backward_exact, METH_VARARGS | METH_KEYWORDS,
     "lors_backward_exact(gy, x, mask, A, B, scale, check_finite=True, naive=False) -> (dA, dB)\n\n"
     "Exact adapter gradient: dB = scale*((gy^T x)*mask) A^T, dA = scale*B^T ((gy^T x)*mask), tile by tile."},
    {"lors_backward_lors", (PyCFunction)(void (*)(void))py_lors_backward_lors, METH_VARARGS | METH_KEYWORDS,
     "lors_backward_lors(gy, x, A, B, scale, check_finite=True, naive=False) -> (dA, dB)\n\n"
     "The rearranged adapter gradient: dB = scale*gy^T (x A^T), dA = scale*(gy B)^T x (no mask)."},
    {"lors_merge", (PyCFunction)(void (*)(void))py_lors_merge, METH_VARARGS | METH_KEYWORDS,
     "lors_merge(W, mask, A, B, scale, naive=False) -> ndarray\n\n"
     "W + scale*(B@A) at the mask, W elsewhere (zeros exact); unmerge with -scale."},
    {"lors_scratch_bytes", py_lors_scratch_bytes, METH_VARARGS,
     "lors_scratch_bytes(in_features, out_features, r) -> int\n\nUpper bound of the kernel scratch bytes one "
     "LoRS kernel call holds with the current thread count (independent of out x in)."},
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
    /* remat */
    {"remat_simulate", (PyCFunction)(void (*)(void))py_remat_simulate, METH_VARARGS | METH_KEYWORDS,
     "remat_simulate(steps, memory, duration, pred_ptr, pred_idx, profile=False) -> (status, peak, duration, "
     "bad_step, bad_node, profile | None)\n\nValidate and simulate a remat schedule (int64 steps: id = "
     "compute, "
     "-1 - id = free). status 0 = valid."},
    {"remat_compact", (PyCFunction)(void (*)(void))py_remat_compact, METH_VARARGS | METH_KEYWORDS,
     "remat_compact(steps, pred_ptr, pred_idx, n) -> ndarray\n\nFree every copy right after its last use and "
     "drop unused recomputations of a valid schedule."},
    {"remat_plan_stages", (PyCFunction)(void (*)(void))py_remat_plan_stages, METH_VARARGS | METH_KEYWORDS,
     "remat_plan_stages(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, seg_end, budget, "
     "mem_exp, dist_exp) -> (status, steps | None, peak, duration)\n\nOne stage-based eviction heuristic."},
    {"remat_greedy", (PyCFunction)(void (*)(void))py_remat_greedy, METH_VARARGS | METH_KEYWORDS,
     "remat_greedy(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, budget) -> (status, "
     "steps | None, peak, duration)\n\nBest of several eviction heuristics under a memory budget."},
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
    {"sparse_plan", py_sparse_plan, METH_VARARGS,
     "sparse_plan(base, N) -> (fwd_tokens, fwd_slab, bwd_tokens, bwd_slab)\n\nThe sparse kernels' blocking "
     "for N tokens at the current thread count: token block and column slab of the forward and the "
     "backward."},
    /* planner: DTR */
    {"remat_dtr", (PyCFunction)(void (*)(void))py_remat_dtr, METH_VARARGS | METH_KEYWORDS,
     "remat_dtr(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, once, budget, "
     "heuristic='full', lookahead=False) -> (status, steps | None, peak, duration)\n\nDynamic Tensor "
     "Rematerialization over order: evict the resident output with the lowest cost / (memory * staleness) "
     "(or * distance to next use with lookahead); heuristic 'full' (exact evicted neighbourhood) or 'eq' "
     "(union-find classes). once: None or (n,) bool, nodes never recomputed."},
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
