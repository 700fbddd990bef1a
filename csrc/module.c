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
#include <string.h>
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "sparse.h"
#include "remat.h"
#include "weightnorm.h"
#include "lors.h"
#include "rws.h"
#include "nn.h"
#include "bigbuf.h"

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
    Py_BEGIN_ALLOW_THREADS
    bad = sft_count_nonfinite(p, n);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_Format(PyExc_ValueError, "%s: contains NaN or infinity", name);
        return -1;
    }
    return 0;
}

/* Checks that obj is an integer (int, numpy integer or anything with __index__, but not a bool
 * or an array) in [lo, hi]; stores it in *out. TypeError / ValueError name the argument. */
static int arg_int(PyObject *obj, const char *name, long long lo, long long hi, long long *out) {
    if (obj == NULL || PyBool_Check(obj) || PyArray_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an integer, got %s", name,
                     obj == NULL ? "nothing" : Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(obj);
    if (i == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected an integer, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < lo || v > hi) {
        if (overflow)
            PyErr_Format(PyExc_ValueError, "%s: expected an integer in [%lld, %lld], got one outside int64",
                         name, lo, hi);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected an integer in [%lld, %lld], got %lld", name, lo, hi,
                         v);
        return -1;
    }
    *out = v;
    return 0;
}

/* Checks that obj is a boolean flag: a bool, a numpy bool or an integer (nonzero = true); an array
 * or anything else is a TypeError naming the argument. obj NULL (not passed) leaves *out alone. */
static int arg_flag(PyObject *obj, const char *name, int *out) {
    if (obj == NULL) return 0;
    if (PyBool_Check(obj) || PyArray_IsScalar(obj, Bool) || (PyIndex_Check(obj) && !PyArray_Check(obj))) {
        int t = PyObject_IsTrue(obj);
        if (t < 0) return -1;
        *out = t;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s: expected a bool, got %s", name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* Checks that obj is a real number (float, int, numpy scalar; not a bool, str or array) and
 * stores it as a double; an int beyond the double range is a ValueError naming the argument. */
static int arg_real(PyObject *obj, const char *name, double *out) {
    if (obj == NULL || PyBool_Check(obj) || PyArray_Check(obj) || PyUnicode_Check(obj) ||
        PyBytes_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj) || PyNumber_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s: expected a real number, got %s", name,
                     obj == NULL ? "nothing" : Py_TYPE(obj)->tp_name);
        return -1;
    }
    double v = PyLong_Check(obj) ? PyLong_AsDouble(obj) : PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "%s: expected a finite number, got an integer beyond the float range", name);
        } else {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: expected a real number, got %s", name, Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    *out = v;
    return 0;
}

/* Checks that obj is a real number that is finite as a float32 too (1e39 would become inf and
 * turn 0 * scale into NaN); stores it as a double. */
static int arg_f32_number(PyObject *obj, const char *name, double *out) {
    double v;
    if (arg_real(obj, name, &v) < 0) return -1;
    if (isfinite(v) && fabs(v) <= FLT_MAX) {
        *out = v;
        return 0;
    }
    if (isfinite(v)) {
        char msg[160]; /* PyErr_Format has no %g */
        snprintf(msg, sizeof msg, "%s: expected a finite float32 number (|%s| <= %g), got %g", name, name,
                 (double)FLT_MAX, v);
        PyErr_SetString(PyExc_ValueError, msg);
    } else
        PyErr_Format(PyExc_ValueError, "%s: expected a finite number, got %s", name,
                     isnan(v) ? "nan" : "inf");
    return -1;
}

/* Checks that obj is a str without NUL characters; *out borrows its UTF-8 buffer. */
static int arg_str(PyObject *obj, const char *name, const char **out) {
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a str, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &len);
    if (s == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: expected a UTF-8 encodable str", name);
        return -1;
    }
    if ((Py_ssize_t)strlen(s) != len) {
        PyErr_Format(PyExc_ValueError, "%s: expected a str without NUL characters, got %R", name, obj);
        return -1;
    }
    *out = s;
    return 0;
}

/* Refuses two arrays whose memory overlaps (by address range, not identity: views count). Both
 * are C-contiguous, so the range [data, data + nbytes) is exactly the bytes each one touches. */
static int arg_disjoint(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    const char *pa = (const char *)PyArray_DATA(a), *pb = (const char *)PyArray_DATA(b);
    npy_intp na = PyArray_NBYTES(a), nb = PyArray_NBYTES(b);
    if (na == 0 || nb == 0 || pa + na <= pb || pb + nb <= pa) return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s, %s: expected arrays that do not share memory, got overlapping ones "
                 "(pass a copy of %s)",
                 an, bn, bn);
    return -1;
}

/* Checks that an output array may be written. */
static int arg_writeable(PyArrayObject *a, const char *name) {
    if (PyArray_ISWRITEABLE(a)) return 0;
    PyErr_Format(PyExc_ValueError, "%s: expected a writeable array, got a read-only one", name);
    return -1;
}

/* A new uninitialised float32 array of the given shape. */
static PyArrayObject *new_f32(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_EMPTY(nd, (npy_intp *)dims, NPY_FLOAT32, 0);
}

/* The kernel could not allocate its scratch memory: a MemoryError that says where. */
static PyObject *scratch_error(const char *fn) {
    return PyErr_Format(PyExc_MemoryError, "%s: could not allocate the kernel's scratch memory", fn);
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
    PyObject *no;
    long long n;
    if (!PyArg_ParseTuple(args, "O:set_num_threads", &no) || arg_int(no, "n", 1, SFT_MAX_THREADS, &n) < 0)
        return NULL;
    sft_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyLong_FromLong(sft_get_num_threads());
}

static PyObject *py_set_simd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po;
    const char *name;
    if (!PyArg_ParseTuple(args, "O:set_simd", &po) || arg_str(po, "path", &name) < 0) return NULL;
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
    PyObject *co, *ao, *bo, *tao = NULL, *tbo = NULL, *alo = NULL, *beo = NULL, *pbo = NULL, *nvo = NULL;
    int ta = 0, tb = 0, packb = 0, naive = 0;
    double ad = 1.0, bd = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOOOOO:gemm_into", kwlist, &co, &ao, &bo, &tao, &tbo,
                                     &alo, &beo, &pbo, &nvo) ||
        arg_flag(tao, "trans_a", &ta) < 0 || arg_flag(tbo, "trans_b", &tb) < 0 ||
        arg_flag(pbo, "packb", &packb) < 0 || arg_flag(nvo, "naive", &naive) < 0 ||
        (alo != NULL && arg_f32_number(alo, "alpha", &ad) < 0) ||
        (beo != NULL && arg_f32_number(beo, "beta", &bd) < 0))
        return NULL;
    const float alpha = (float)ad, beta = (float)bd;
    PyArrayObject *c = arg_f32(co, "c", 2), *a = c ? arg_f32(ao, "a", 2) : NULL;
    PyArrayObject *b = a ? arg_f32(bo, "b", 2) : NULL;
    if (b == NULL || arg_disjoint(c, "c", a, "a") < 0 || arg_disjoint(c, "c", b, "b") < 0) return NULL;
    if (arg_writeable(c, "c") < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        sgemm_naive(C, ldc, A, rsa, csa, B, rsb, csb, M, N, K, beta);
    else if (packb)
        rc = sgemm_packb_ab(C, ldc, A, rsa, csa, gemm_pack_b_strided, &sb, M, N, K, alpha, beta);
    else
        rc = sgemm_ab(C, ldc, A, rsa, csa, B, rsb, csb, M, N, K, alpha, beta);
    Py_END_ALLOW_THREADS
    if (rc != 0) return scratch_error("gemm_into");
    Py_RETURN_NONE;
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", "trans_a", "trans_b", NULL};
    PyObject *ao, *bo, *tao = NULL, *tbo = NULL;
    int ta = 0, tb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|OO:matmul", kwlist, &ao, &bo, &tao, &tbo) ||
        arg_flag(tao, "trans_a", &ta) < 0 || arg_flag(tbo, "trans_b", &tb) < 0)
        return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    rc = sgemm(C, N, A, ta ? 1 : lda, ta ? lda : 1, B, tb ? 1 : ldb, tb ? ldb : 1, M, N, K, 0.0f);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(c);
        return scratch_error("matmul");
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

/* A 2-D activation (rows, cols) with cols fixed by the weights. */
static PyArrayObject *lors_act(PyObject *o, const char *name, npy_intp cols, const char *what, int check) {
    PyArrayObject *a = arg_f32(o, name, 2);
    if (a == NULL || arg_dim(a, name, 1, cols, what) < 0 || (check && arg_finite(a, name) < 0)) return NULL;
    return a;
}

static PyObject *py_lors_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "W", "mask", "A", "B", "scale", "bias", "check_weights", "naive", NULL};
    PyObject *xo, *Wo, *Mo, *Ao, *Bo, *sdo, *bo = Py_None, *cho = NULL, *nvo = NULL;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|OOO:lors_forward", kwlist, &xo, &Wo, &Mo, &Ao, &Bo,
                                     &sdo, &bo, &cho, &nvo) ||
        arg_flag(cho, "check_weights", &check) < 0 || arg_flag(nvo, "naive", &naive) < 0)
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, check, &a) < 0 || arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        lors_forward_naive(Y, X, W, M, A, B, bias_p, s, N, a.in, a.out, a.r);
    else
        rc = lors_forward(Y, X, W, M, A, B, bias_p, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(y);
        return scratch_error("lors_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_lors_backward_input(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "W", "mask", "A", "B", "scale", "check_weights", "naive", NULL};
    PyObject *go, *Wo, *Mo, *Ao, *Bo, *sdo, *cho = NULL, *nvo = NULL;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|OO:lors_backward_input", kwlist, &go, &Wo, &Mo,
                                     &Ao, &Bo, &sdo, &cho, &nvo) ||
        arg_flag(cho, "check_weights", &check) < 0 || arg_flag(nvo, "naive", &naive) < 0)
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, check, &a) < 0 || arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        lors_backward_input_naive(GX, GY, W, M, A, B, s, N, a.in, a.out, a.r);
    else
        rc = lors_backward_input(GX, GY, W, M, A, B, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(gx);
        return scratch_error("lors_backward_input");
    }
    return (PyObject *)gx;
}

static PyObject *py_lors_backward_exact(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "x", "mask", "A", "B", "scale", "check_finite", "naive", NULL};
    PyObject *go, *xo, *Mo, *Ao, *Bo, *sdo, *cho = NULL, *nvo = NULL;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|OO:lors_backward_exact", kwlist, &go, &xo, &Mo,
                                     &Ao, &Bo, &sdo, &cho, &nvo) ||
        arg_flag(cho, "check_finite", &check) < 0 || arg_flag(nvo, "naive", &naive) < 0)
        return NULL;
    lors_args a;
    if (lors_parse(NULL, Mo, Ao, Bo, 0, &a) < 0 || arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        lors_backward_exact_naive(DA, DB, GY, X, M, A, B, s, N, a.in, a.out, a.r);
    else
        rc = lors_backward_exact(DA, DB, GY, X, M, A, B, s, N, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error("lors_backward_exact");
    }
    return Py_BuildValue("NN", dA, dB);
}

static PyObject *py_lors_backward_lors(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"gy", "x", "A", "B", "scale", "check_finite", "naive", NULL};
    PyObject *go, *xo, *Ao, *Bo, *sdo, *cho = NULL, *nvo = NULL;
    double sd;
    int check = 1, naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|OO:lors_backward_lors", kwlist, &go, &xo, &Ao, &Bo,
                                     &sdo, &cho, &nvo) ||
        arg_flag(cho, "check_finite", &check) < 0 || arg_flag(nvo, "naive", &naive) < 0)
        return NULL;
    PyArrayObject *A = arg_f32(Ao, "A", 2);
    if (A == NULL) return NULL;
    npy_intp r = PyArray_DIM(A, 0), in = PyArray_DIM(A, 1);
    PyArrayObject *B = arg_f32(Bo, "B", 2);
    if (B == NULL || arg_dim(B, "B", 1, r, "r, from A") < 0) return NULL;
    npy_intp out = PyArray_DIM(B, 0);
    if (arg_finite(A, "A") < 0 || arg_finite(B, "B") < 0 || arg_f32_number(sdo, "scale", &sd) < 0)
        return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        lors_backward_lors_naive(DA, DB, GY, X, Ap, Bp, s, N, in, out, r);
    else
        rc = lors_backward_lors(DA, DB, GY, X, Ap, Bp, s, N, in, out, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error("lors_backward_lors");
    }
    return Py_BuildValue("NN", dA, dB);
}

static PyObject *py_lors_merge(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"W", "mask", "A", "B", "scale", "naive", NULL};
    PyObject *Wo, *Mo, *Ao, *Bo, *sdo, *nvo = NULL;
    double sd;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|O:lors_merge", kwlist, &Wo, &Mo, &Ao, &Bo, &sdo,
                                     &nvo) ||
        arg_flag(nvo, "naive", &naive) < 0)
        return NULL;
    lors_args a;
    if (lors_parse(Wo, Mo, Ao, Bo, 1, &a) < 0 || arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
    const float s = (float)sd;
    npy_intp dims[2] = {a.out, a.in};
    PyArrayObject *w2 = new_f32(2, dims);
    if (w2 == NULL) return NULL;
    float *W2 = (float *)PyArray_DATA(w2);
    const float *W = (const float *)PyArray_DATA(a.W);
    const uint8_t *M = (const uint8_t *)PyArray_DATA(a.M);
    const float *A = (const float *)PyArray_DATA(a.A), *B = (const float *)PyArray_DATA(a.B);
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        lors_merge_naive(W2, W, M, A, B, s, a.in, a.out, a.r);
    else
        lors_merge(W2, W, M, A, B, s, a.in, a.out, a.r);
    Py_END_ALLOW_THREADS
    return (PyObject *)w2;
}

static PyObject *py_lors_scratch_bytes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *io, *oo, *ro;
    long long in, out, r;
    if (!PyArg_ParseTuple(args, "OOO:lors_scratch_bytes", &io, &oo, &ro) ||
        arg_int(io, "in_features", INT64_MIN, INT64_MAX, &in) < 0 ||
        arg_int(oo, "out_features", INT64_MIN, INT64_MAX, &out) < 0 ||
        arg_int(ro, "r", INT64_MIN, INT64_MAX, &r) < 0)
        return NULL;
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
static int wn_dim(PyObject *dimo, PyArrayObject *v, int *dim, npy_intp *K) {
    long long d;
    if (arg_int(dimo, "dim", INT64_MIN, INT64_MAX, &d) < 0) return -1;
    if (d != 0 && d != 1 && d != -1) {
        PyErr_Format(PyExc_ValueError, "dim: expected 0, 1 or -1 (whole tensor), got %lld", d);
        return -1;
    }
    *dim = (int)d;
    *K = (npy_intp)weightnorm_num_norms(PyArray_DIM(v, 0), PyArray_DIM(v, 1), *dim);
    return 0;
}

/* An output `out` may be exactly `other` (the kernels support that in-place case) but may not
 * overlap it otherwise (a shifted view would be read after it was written). */
static int wn_alias(PyArrayObject *out, PyArrayObject *other, const char *other_name) {
    if (PyArray_DATA(out) == PyArray_DATA(other) && PyArray_NBYTES(out) == PyArray_NBYTES(other)) return 0;
    return arg_disjoint(out, "out", other, other_name);
}

static PyObject *py_weightnorm_norms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *vo, *dimo;
    int dim, rc;
    if (!PyArg_ParseTuple(args, "OO:weightnorm_norms", &vo, &dimo)) return NULL;
    PyArrayObject *v = arg_f32(vo, "v", 2);
    npy_intp K;
    if (v == NULL || wn_dim(dimo, v, &dim, &K) < 0) return NULL;
    PyArrayObject *n = new_f32(1, &K);
    if (n == NULL) return NULL;
    float *np_ = (float *)PyArray_DATA(n);
    const float *vp = (const float *)PyArray_DATA(v);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS
    rc = weightnorm_norms(np_, vp, R, C, dim);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(n);
        return scratch_error("weightnorm_norms");
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
    if (arg_writeable(o, name) < 0) return NULL;
    Py_INCREF(o);
    return o;
}

static PyObject *py_weightnorm_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"v", "g", "dim", "out", NULL};
    PyObject *vo, *go, *dimo, *oo = NULL;
    int dim, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:weightnorm_forward", kwlist, &vo, &go, &dimo, &oo))
        return NULL;
    PyArrayObject *v = arg_f32(vo, "v", 2), *g = v ? arg_f32(go, "g", 1) : NULL;
    npy_intp K;
    if (g == NULL || wn_dim(dimo, v, &dim, &K) < 0) return NULL;
    if (arg_dim(g, "g", 0, K, "one value per norm") < 0) return NULL;
    PyArrayObject *w = wn_out(oo, "out", v);
    if (w == NULL) return NULL;
    if (wn_alias(w, v, "v") < 0 || arg_disjoint(w, "out", g, "g") < 0) {
        Py_DECREF(w);
        return NULL;
    }
    float *wp = (float *)PyArray_DATA(w);
    const float *vp = (const float *)PyArray_DATA(v), *gp = (const float *)PyArray_DATA(g);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS
    rc = weightnorm_forward(wp, vp, gp, R, C, dim);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(w);
        return scratch_error("weightnorm_forward");
    }
    return (PyObject *)w;
}

static PyObject *py_weightnorm_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"grad_w", "v", "g", "dim", "out", NULL};
    PyObject *gwo, *vo, *go, *dimo, *oo = NULL;
    int dim, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|O:weightnorm_backward", kwlist, &gwo, &vo, &go,
                                     &dimo, &oo))
        return NULL;
    PyArrayObject *gw = arg_f32(gwo, "grad_w", 2), *v = gw ? arg_f32(vo, "v", 2) : NULL;
    PyArrayObject *g = v ? arg_f32(go, "g", 1) : NULL;
    npy_intp K;
    if (g == NULL || wn_dim(dimo, v, &dim, &K) < 0) return NULL;
    if (arg_dim(gw, "grad_w", 0, PyArray_DIM(v, 0), "rows of v") < 0 ||
        arg_dim(gw, "grad_w", 1, PyArray_DIM(v, 1), "columns of v") < 0 ||
        arg_dim(g, "g", 0, K, "one value per norm") < 0)
        return NULL;
    PyArrayObject *gv = wn_out(oo, "out", v), *gg = gv ? new_f32(1, &K) : NULL;
    if (gg == NULL || wn_alias(gv, v, "v") < 0 || wn_alias(gv, gw, "grad_w") < 0 ||
        arg_disjoint(gv, "out", g, "g") < 0) {
        Py_XDECREF(gv);
        Py_XDECREF(gg);
        return NULL;
    }
    float *gvp = (float *)PyArray_DATA(gv), *ggp = (float *)PyArray_DATA(gg);
    const float *gwp = (const float *)PyArray_DATA(gw), *vp = (const float *)PyArray_DATA(v);
    const float *gp = (const float *)PyArray_DATA(g);
    int64_t R = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    Py_BEGIN_ALLOW_THREADS
    rc = weightnorm_backward(gvp, ggp, gwp, vp, gp, R, C, dim);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(gv);
        Py_DECREF(gg);
        return scratch_error("weightnorm_backward");
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
    PyObject *wo, *mo, *ao, *bo, *sdo;
    double sd;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOO:dora_rownorm_forward", &wo, &mo, &ao, &bo, &sdo)) return NULL;
    if (arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    rc = dora_rownorm_forward(np_, Wp, Mp, Ap, Bp, s, out, in, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(n);
        return scratch_error("dora_rownorm_forward");
    }
    return (PyObject *)n;
}

static PyObject *py_dora_rownorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *gno, *no, *wo, *mo, *ao, *bo, *sdo;
    double sd;
    int rc;
    if (!PyArg_ParseTuple(args, "OOOOOOO:dora_rownorm_backward", &gno, &no, &wo, &mo, &ao, &bo, &sdo))
        return NULL;
    if (arg_f32_number(sdo, "scale", &sd) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    rc = dora_rownorm_backward(dAp, dBp, gnp, np_, Wp, Mp, Ap, Bp, s, out, in, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(dA);
        Py_DECREF(dB);
        return scratch_error("dora_rownorm_backward");
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
    Py_BEGIN_ALLOW_THREADS
    ok = remat_check_csr(i64(*ptr), i64(*idx), (int64_t)n, (int64_t)PyArray_DIM(*idx, 0));
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "%s/%s: expected a CSR adjacency of %zd nodes (offsets from 0 to len(%s) = %zd, "
                     "non-decreasing, indices in [0, %zd)), got something else",
                     ptr_name, idx_name, (Py_ssize_t)n, idx_name, (Py_ssize_t)PyArray_DIM(*idx, 0),
                     (Py_ssize_t)n);
        return -1;
    }
    return 0;
}

/* Checks an order argument: an (n,) int64 permutation of 0..n-1. */
static PyArrayObject *arg_order(PyObject *obj, npy_intp n) {
    PyArrayObject *order = arg_i64(obj, "order", n, "number of nodes");
    if (order == NULL) return NULL;
    if (!remat_check_perm(i64(order), (int64_t)n)) {
        PyErr_Format(PyExc_ValueError, "order: expected a permutation of 0..%zd, got something else", n - 1);
        return NULL;
    }
    return order;
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
    PyObject *so, *mo, *dO, *po, *io, *pro = NULL;
    int want_profile = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|O:remat_simulate", kwlist, &so, &mo, &dO, &po, &io,
                                     &pro) ||
        arg_flag(pro, "profile", &want_profile) < 0)
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
    Py_BEGIN_ALLOW_THREADS
    rc = remat_simulate(res, prof ? (int64_t *)PyArray_DATA(prof) : NULL, i64(steps), i64(mem), i64(dur),
                        i64(ptr), i64(idx), (int64_t)n, (int64_t)ns);
    Py_END_ALLOW_THREADS
    if (rc == REMAT_ENOMEM) {
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
    Py_BEGIN_ALLOW_THREADS
    rc = remat_compact((int64_t *)PyArray_DATA(out), &w, i64(steps), i64(ptr), i64(idx), (int64_t)n,
                       (int64_t)ns, (int64_t)cap);
    Py_END_ALLOW_THREADS
    if (rc != REMAT_OK) {
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

static PyObject *py_remat_su_need(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"memory", "pred_ptr", "pred_idx", "order", NULL};
    PyObject *mo, *po, *io, *oo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:remat_su_need", kwlist, &mo, &po, &io, &oo))
        return NULL;
    PyArrayObject *mem, *ptr, *idx, *order;
    if (arg_costs(&mem, &mem, mo, mo) < 0) return NULL;
    npy_intp n = PyArray_DIM(mem, 0);
    if (arg_csr(&ptr, &idx, po, io, "pred_ptr", "pred_idx", n) < 0) return NULL;
    if ((order = arg_order(oo, n)) == NULL) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_ZEROS(1, &n, NPY_INT64, 0);
    if (out == NULL) return NULL;
    /* the need of a node is computed from its inputs': every input must come first in order */
    int64_t *pos = (int64_t *)PyArray_DATA(out);
    for (npy_intp t = 0; t < n; t++) pos[i64(order)[t]] = (int64_t)t;
    for (npy_intp v = 0; v < n; v++)
        for (int64_t k = i64(ptr)[v]; k < i64(ptr)[v + 1]; k++)
            if (pos[i64(idx)[k]] >= pos[v]) {
                PyErr_Format(PyExc_ValueError,
                             "order: expected a topological order (inputs first), got node %lld at or after "
                             "its user %zd",
                             (long long)i64(idx)[k], v);
                Py_DECREF(out);
                return NULL;
            }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = remat_su_need((int64_t *)PyArray_DATA(out), i64(mem), i64(ptr), i64(idx), i64(order), (int64_t)n);
    Py_END_ALLOW_THREADS
    if (rc != REMAT_OK) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return (PyObject *)out;
}

enum { PLAN_STAGES, PLAN_GREEDY, PLAN_DTR };

/* Runs a planner (kind: PLAN_*) with a growing output buffer; returns (status, steps | None, peak,
 * duration). */
static PyObject *remat_run_planner(PyObject *args, PyObject *kwargs, int kind) {
    static char *kw_stages[] = {"memory", "duration", "pred_ptr", "pred_idx", "succ_ptr", "succ_idx",
                                "order",  "seg_end",  "budget",   "mem_exp",  "dist_exp", NULL};
    static char *kw_greedy[] = {"memory",   "duration", "pred_ptr", "pred_idx", "succ_ptr",
                                "succ_idx", "order",    "budget",   NULL};
    static char *kw_dtr[] = {"memory",    "duration", "pred_ptr",     "pred_idx",   "succ_ptr",
                             "succ_idx",  "order",    "once",         "budget",     "heuristic",
                             "lookahead", "keep",     "max_computes", "time_limit", NULL};
    PyObject *mo, *dO, *po, *io, *spo, *sio, *oo, *sego = Py_None, *onceo = Py_None, *bo, *meo = NULL,
                                                  *deo = NULL, *ho = NULL, *lo = NULL, *keepo = Py_None,
                                                  *mco = NULL, *tlo = NULL;
    long long max_computes = 0;
    double dtr_time = 0.0;
    long long budget;
    double mem_exp = 1.0, dist_exp = 1.0;
    const char *heuristic = "full";
    int lookahead = 0, okp;
    if (kind == PLAN_GREEDY)
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO:remat_greedy", kw_greedy, &mo, &dO, &po,
                                          &io, &spo, &sio, &oo, &bo);
    else if (kind == PLAN_DTR)
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOO|OOOOO:remat_dtr", kw_dtr, &mo, &dO, &po,
                                          &io, &spo, &sio, &oo, &onceo, &bo, &ho, &lo, &keepo, &mco, &tlo);
    else
        okp = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOO:remat_plan_stages", kw_stages, &mo, &dO,
                                          &po, &io, &spo, &sio, &oo, &sego, &bo, &meo, &deo);
    if (!okp || arg_int64(bo, "budget", 0, LLONG_MAX, &budget) < 0 ||
        (meo != NULL && arg_real(meo, "mem_exp", &mem_exp) < 0) ||
        (deo != NULL && arg_real(deo, "dist_exp", &dist_exp) < 0) ||
        (ho != NULL && arg_str(ho, "heuristic", &heuristic) < 0) ||
        arg_flag(lo, "lookahead", &lookahead) < 0 ||
        (mco != NULL && arg_int64(mco, "max_computes", 0, LLONG_MAX, &max_computes) < 0) ||
        (tlo != NULL && arg_real(tlo, "time_limit", &dtr_time) < 0))
        return NULL;
    if (!(dtr_time >= 0.0 && dtr_time <= 1e9)) {
        PyErr_SetString(PyExc_ValueError, "time_limit: expected seconds in [0, 1e9] (0: no limit)");
        return NULL;
    }
    int hcode = strcmp(heuristic, "eq") == 0        ? REMAT_DTR_EQ
                : strcmp(heuristic, "belady") == 0  ? REMAT_DTR_BELADY
                : strcmp(heuristic, "cone") == 0    ? REMAT_DTR_CONE
                : strcmp(heuristic, "largest") == 0 ? REMAT_DTR_LARGEST
                : strcmp(heuristic, "su") == 0      ? REMAT_DTR_SU
                                                    : REMAT_DTR_FULL;
    if (strcmp(heuristic, "full") != 0 && strcmp(heuristic, "eq") != 0 && strcmp(heuristic, "belady") != 0 &&
        strcmp(heuristic, "cone") != 0 && strcmp(heuristic, "largest") != 0 && strcmp(heuristic, "su") != 0) {
        PyErr_Format(PyExc_ValueError,
                     "heuristic: expected 'full', 'eq', 'belady', 'cone', 'largest' or 'su', got '%s'",
                     heuristic);
        return NULL;
    }
    PyArrayObject *mem, *dur, *ptr, *idx, *sptr, *sidx, *order, *seg = NULL, *once = NULL, *keep = NULL;
    if (arg_costs(&mem, &dur, mo, dO) < 0) return NULL;
    npy_intp n = PyArray_DIM(mem, 0);
    if (arg_csr(&ptr, &idx, po, io, "pred_ptr", "pred_idx", n) < 0) return NULL;
    if (arg_csr(&sptr, &sidx, spo, sio, "succ_ptr", "succ_idx", n) < 0) return NULL;
    if ((order = arg_order(oo, n)) == NULL) return NULL;
    if (sego != Py_None && (seg = arg_i64(sego, "seg_end", n, "number of nodes")) == NULL) return NULL;
    if (onceo != Py_None) {
        if ((once = arg_array(onceo, "once", NPY_BOOL, 1)) == NULL) return NULL;
        if (arg_dim(once, "once", 0, n, "number of nodes") < 0) return NULL;
    }
    if (keepo != Py_None) {
        if ((keep = arg_array(keepo, "keep", NPY_BOOL, 1)) == NULL) return NULL;
        if (arg_dim(keep, "keep", 0, n, "number of nodes") < 0) return NULL;
    }
    if (!(mem_exp >= 0.0 && mem_exp <= 16.0) || !(dist_exp >= 0.0 && dist_exp <= 16.0)) {
        char msg[160];
        PyOS_snprintf(msg, sizeof(msg), "mem_exp/dist_exp: expected values in [0, 16], got %g / %g", mem_exp,
                      dist_exp);
        PyErr_SetString(PyExc_ValueError, msg);
        return NULL;
    }
    if (kind == PLAN_DTR) {
        /* the run grows its own step buffer: one run, copied into the array */
        int64_t info[3], *buf = NULL;
        int rc;
        const uint8_t *once_p = once ? (const uint8_t *)PyArray_DATA(once) : NULL;
        const uint8_t *keep_p = keep ? (const uint8_t *)PyArray_DATA(keep) : NULL;
        Py_BEGIN_ALLOW_THREADS
        rc = remat_dtr(&buf, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx), i64(order),
                       once_p, keep_p, (int64_t)n, (int64_t)budget, hcode, lookahead, (int64_t)max_computes,
                       dtr_time);
        Py_END_ALLOW_THREADS
        if (rc == REMAT_ENOMEM) return PyErr_NoMemory();
        if (rc != REMAT_OK) return Py_BuildValue("iOLL", rc, Py_None, 0LL, 0LL);
        npy_intp len = (npy_intp)info[0];
        PyArrayObject *steps = (PyArrayObject *)PyArray_EMPTY(1, &len, NPY_INT64, 0);
        if (steps == NULL) {
            free(buf);
            return NULL;
        }
        if (len > 0) memcpy(PyArray_DATA(steps), buf, (size_t)len * sizeof(int64_t));
        free(buf);
        return Py_BuildValue("iNLL", rc, (PyObject *)steps, (long long)info[1], (long long)info[2]);
    }
    npy_intp cap = 4 * n + 16;
    for (;;) {
        PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(1, &cap, NPY_INT64, 0);
        if (out == NULL) return NULL;
        int64_t info[3];
        int rc;
        int64_t *o = (int64_t *)PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        if (kind == PLAN_GREEDY)
            rc = remat_greedy(o, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx),
                              i64(order), (int64_t)n, (int64_t)budget, (int64_t)cap);
        else
            rc = remat_plan_stages(o, info, i64(mem), i64(dur), i64(ptr), i64(idx), i64(sptr), i64(sidx),
                                   i64(order), seg ? i64(seg) : NULL, (int64_t)n, (int64_t)budget, mem_exp,
                                   dist_exp, (int64_t)cap);
        Py_END_ALLOW_THREADS
        if (rc == REMAT_ECAPACITY && cap < ((npy_intp)1 << 40)) {
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
 * tuple's arrays) and checks kinds, sizes, dtypes, shapes and lengths (O(1)). Unless trusted, also
 * the O(nnz) part: the index structure (row pointers first, then the indices they delimit, so a
 * bad pointer is never followed) and that the values are finite. */
static int parse_sparse_base(PyObject *base, sparse_base *W, int trusted) {
    if (!PyTuple_Check(base) || PyTuple_GET_SIZE(base) != 8) {
        PyErr_Format(PyExc_TypeError,
                     "base: expected a tuple (kind, out, in, n, m, values, indices, rowptr), got %s%s",
                     Py_TYPE(base)->tp_name, PyTuple_Check(base) ? " of another length" : "");
        return -1;
    }
    const char *kind;
    long long out, in, n, m;
    PyObject *vo = PyTuple_GET_ITEM(base, 5), *io = PyTuple_GET_ITEM(base, 6),
             *ro = PyTuple_GET_ITEM(base, 7);
    // column indices are int32, so in < 2**31; out + 1 row pointers must be countable
    if (arg_str(PyTuple_GET_ITEM(base, 0), "base[0] (kind)", &kind) < 0 ||
        arg_int(PyTuple_GET_ITEM(base, 1), "base[1] (out)", 0, INT64_MAX / 4, &out) < 0 ||
        arg_int(PyTuple_GET_ITEM(base, 2), "base[2] (in)", 0, INT32_MAX, &in) < 0 ||
        arg_int(PyTuple_GET_ITEM(base, 3), "base[3] (n)", INT64_MIN, INT64_MAX, &n) < 0 ||
        arg_int(PyTuple_GET_ITEM(base, 4), "base[4] (m)", INT64_MIN, INT64_MAX, &m) < 0)
        return -1;
    memset(W, 0, sizeof *W);
    W->out = out, W->in = in, W->n = n, W->m = m;
    int64_t nnz;
    PyArrayObject *v;
    if (strcmp(kind, "csr") == 0) {
        v = arg_f32(vo, "values", 1);
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
        if (W->rowptr[0] != 0 || W->rowptr[out] != nnz) {
            PyErr_Format(
                PyExc_ValueError,
                "rowptr: expected 0, nondecreasing, ending at the number of values (%lld), got %lld .. "
                "%lld",
                (long long)nnz, (long long)W->rowptr[0], (long long)W->rowptr[out]);
            return -1;
        }
    } else if (strcmp(kind, "nm") == 0) {
        if (m < 1 || m > 256 || n < 0 || n > m || in % m != 0) {
            PyErr_Format(PyExc_ValueError,
                         "base: expected 0 <= n <= m <= 256 and in %% m == 0, got n=%lld, m=%lld, in=%lld", n,
                         m, in);
            return -1;
        }
        v = arg_f32(vo, "values", 2);
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
    } else {
        PyErr_Format(PyExc_ValueError, "base: expected kind 'csr' or 'nm', got '%s'", kind);
        return -1;
    }
    if (trusted) return 0;
    if (arg_finite(v, "values") < 0) return -1;
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = sparse_check(W, nnz);
    Py_END_ALLOW_THREADS
    if (bad) {
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
    static char *kwlist[] = {"base", "x", "A", "B", "scale", "naive", "trusted", NULL};
    PyObject *baseo, *xo, *ao, *bo, *scaleo, *nvo = NULL, *tro = NULL;
    double scale;
    int naive = 0, trusted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|OO:sparse_forward", kwlist, &baseo, &xo, &ao, &bo,
                                     &scaleo, &nvo, &tro) ||
        arg_flag(nvo, "naive", &naive) < 0 || arg_flag(tro, "trusted", &trusted) < 0)
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W, trusted) < 0 || arg_f32_number(scaleo, "scale", &scale) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        sparse_forward_naive(Y, &W, X, A, B, (float)scale, N, r);
    else
        rc = sparse_forward(Y, &W, X, A, B, (float)scale, N, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(y);
        return scratch_error("sparse_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_sparse_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"base",       "gy",          "x",     "A",       "B", "scale",
                             "input_grad", "weight_grad", "naive", "trusted", NULL};
    PyObject *baseo, *gyo, *xo, *ao, *bo, *scaleo, *gxo = NULL, *go = NULL, *nvo = NULL, *tro = NULL;
    double scale;
    int want_gx = 1, want_g = 1, naive = 0, trusted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|OOOO:sparse_backward", kwlist, &baseo, &gyo, &xo,
                                     &ao, &bo, &scaleo, &gxo, &go, &nvo, &tro) ||
        arg_flag(gxo, "input_grad", &want_gx) < 0 || arg_flag(go, "weight_grad", &want_g) < 0 ||
        arg_flag(nvo, "naive", &naive) < 0 || arg_flag(tro, "trusted", &trusted) < 0)
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W, trusted) < 0 || arg_f32_number(scaleo, "scale", &scale) < 0) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        sparse_backward_naive(GX, DA, DB, &W, GY, X, A, B, (float)scale, N, r);
    else
        rc = sparse_backward(GX, DA, DB, &W, GY, X, A, B, (float)scale, N, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_XDECREF(gx), Py_XDECREF(da), Py_XDECREF(db);
        return scratch_error("sparse_backward");
    }
    PyObject *none = Py_None;
    return Py_BuildValue("(NNN)", gx ? (PyObject *)gx : (Py_INCREF(none), none),
                         da ? (PyObject *)da : (Py_INCREF(none), none),
                         db ? (PyObject *)db : (Py_INCREF(none), none));
}

static PyObject *py_sparse_merge(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"base", "A", "B", "scale", "trusted", NULL};
    PyObject *baseo, *ao, *bo, *scaleo, *tro = NULL;
    double scale;
    int trusted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|O:sparse_merge", kwlist, &baseo, &ao, &bo, &scaleo,
                                     &tro) ||
        arg_flag(tro, "trusted", &trusted) < 0)
        return NULL;
    sparse_base W;
    if (parse_sparse_base(baseo, &W, trusted) < 0 || arg_f32_number(scaleo, "scale", &scale) < 0) return NULL;
    PyArrayObject *a, *b;
    npy_intp r = parse_adapter(ao, bo, &W, &a, &b);
    if (r < 0) return NULL;
    PyArrayObject *vals = (PyArrayObject *)PyArray_NewLikeArray((PyArrayObject *)PyTuple_GET_ITEM(baseo, 5),
                                                                NPY_CORDER, NULL, 0);
    if (vals == NULL) return NULL;
    float *V = (float *)PyArray_DATA(vals);
    const float *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sparse_merge(V, &W, A, B, (float)scale, r);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(vals);
        return scratch_error("sparse_merge");
    }
    return (PyObject *)vals;
}

static PyObject *py_sparse_plan(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"", "", "trusted", NULL};
    PyObject *baseo, *No, *tro = NULL;
    long long N;
    int trusted = 0;
    // N is bounded so that the planner's token arithmetic (rounding up to whole vectors) stays in int64
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$O:sparse_plan", kwlist, &baseo, &No, &tro) ||
        arg_int(No, "N", INT64_MIN, INT64_MAX, &N) < 0 || arg_flag(tro, "trusted", &trusted) < 0)
        return NULL;
    if (N < 0 || N > INT64_MAX / 4) {
        PyErr_Format(PyExc_ValueError, "N: expected a token count %s, got %lld", N < 0 ? ">= 0" : "<= 2**61",
                     N);
        return NULL;
    }
    sparse_base W;
    if (parse_sparse_base(baseo, &W, trusted) < 0) return NULL;
    int64_t fwd_tokens, fwd_slab, bwd_tokens, bwd_slab;
    sparse_plan(&W, (int64_t)N, sft_get_num_threads(), &fwd_tokens, &fwd_slab, &bwd_tokens, &bwd_slab);
    return Py_BuildValue("(LLLL)", (long long)fwd_tokens, (long long)fwd_slab, (long long)bwd_tokens,
                         (long long)bwd_slab);
}

/* ---- sparse: checked once ---- */

/* The full structural check of a base, for a caller that then passes trusted=True. */
static PyObject *py_sparse_check(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *baseo;
    sparse_base W;
    if (!PyArg_ParseTuple(args, "O:sparse_check", &baseo) || parse_sparse_base(baseo, &W, 0) < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- nn ops ---- */

/* Checks an int64 id array of ndim dims whose entries all lie in [0, V). */
static PyArrayObject *arg_ids(PyObject *obj, const char *name, int ndim, int64_t V) {
    PyArrayObject *a = arg_array(obj, name, NPY_INT64, ndim);
    if (a == NULL) return NULL;
    const int64_t *p = (const int64_t *)PyArray_DATA(a);
    npy_intp n = PyArray_SIZE(a);
    for (npy_intp i = 0; i < n; i++) {
        if (p[i] < 0 || p[i] >= V) {
            PyErr_Format(PyExc_ValueError, "%s: expected ids in [0, %lld), got %lld at flat index %zd", name,
                         (long long)V, (long long)p[i], (Py_ssize_t)i);
            return NULL;
        }
    }
    return a;
}

/* Checks that b has exactly the shape of a (named ref in the message). */
static int arg_same_shape(PyArrayObject *b, const char *name, PyArrayObject *a, const char *ref) {
    // 0-d arrays have no dims pointer: memcmp must not see NULL even for a zero length
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        (PyArray_NDIM(a) == 0 ||
         memcmp(PyArray_DIMS(a), PyArray_DIMS(b), sizeof(npy_intp) * (size_t)PyArray_NDIM(a)) == 0))
        return 0;
    PyObject *sa = shape_tuple(a), *sb = shape_tuple(b);
    if (sa != NULL && sb != NULL)
        PyErr_Format(PyExc_ValueError, "%s: expected shape %R (that of %s), got %R", name, sa, ref, sb);
    Py_XDECREF(sa);
    Py_XDECREF(sb);
    return -1;
}

/* A new float32 array shaped like a. */
static PyArrayObject *new_like(PyArrayObject *a) {
    return new_f32(PyArray_NDIM(a), PyArray_DIMS(a));
}

/* x (N, C) and a vector of length C named vname (C from x) */
static int nn_rows_vec(PyObject *xo, PyObject *wo, const char *vname, PyArrayObject **x, PyArrayObject **w) {
    *x = arg_f32(xo, "x", 2);
    if (*x == NULL) return -1;
    *w = arg_f32(wo, vname, 1);
    if (*w == NULL || arg_dim(*w, vname, 0, PyArray_DIM(*x, 1), "C, the columns of x") < 0) return -1;
    return 0;
}

/* Checks that a float argument is finite and > 0. */
static int nn_positive(double v, const char *name) {
    if (isfinite(v) && v > 0.0) return 0;
    PyObject *got = PyFloat_FromDouble(v);
    if (got != NULL)
        PyErr_Format(PyExc_ValueError, "%s: expected a finite positive float, got %R", name, got);
    Py_XDECREF(got);
    return -1;
}

#define F32P(a) ((float *)PyArray_DATA(a))

/* Big fresh outputs (bigbuf.c): a 2 MiB-aligned mapping advised MADV_HUGEPAGE, owned by a capsule
 * that unmaps it when the array (its base) goes. SPARSEFT_HUGEPAGES=0 in the environment turns them
 * off (read at each allocation): outputs then come from NumPy's allocator as before. */
#define BIGBUF_CAPSULE "sparseft.bigbuf"

static void bigbuf_capsule_free(PyObject *cap) {
    sft_bigbuf_free(PyCapsule_GetPointer(cap, BIGBUF_CAPSULE), (size_t)(uintptr_t)PyCapsule_GetContext(cap));
}

static int bigbuf_enabled(void) {
    const char *e = getenv("SPARSEFT_HUGEPAGES");
    return e == NULL || strcmp(e, "0") != 0;
}

/* A float32 array of a's shape whose data starts `off` (< 64) bytes past a 2 MiB boundary, in a
 * bigbuf mapping; NULL without an exception when the mapping fails (the caller falls back). */
static PyArrayObject *bigbuf_array(PyArrayObject *a, size_t off) {
    size_t len = 0;
    char *p = (char *)sft_bigbuf_alloc((size_t)PyArray_SIZE(a) * sizeof(float) + 64, &len);
    if (p == NULL) return NULL;
    PyObject *cap = PyCapsule_New(p, BIGBUF_CAPSULE, bigbuf_capsule_free);
    if (cap == NULL || PyCapsule_SetContext(cap, (void *)(uintptr_t)len) != 0) {
        if (cap != NULL)
            Py_DECREF(cap);  // unmaps
        else
            sft_bigbuf_free(p, len);
        PyErr_Clear();
        return NULL;
    }
    PyArrayObject *v = (PyArrayObject *)PyArray_NewFromDescr(
        &PyArray_Type, PyArray_DescrFromType(NPY_FLOAT32), PyArray_NDIM(a), PyArray_DIMS(a), NULL, p + off,
        NPY_ARRAY_CARRAY, NULL);
    if (v == NULL || PyArray_SetBaseObject(v, cap) < 0) {  // SetBaseObject steals cap
        if (v == NULL) Py_DECREF(cap);
        Py_XDECREF(v);
        PyErr_Clear();
        return NULL;
    }
    return v;
}

/* A new float32 array shaped like a for a row kernel's output; from the size at which the kernels
 * stream their stores (NN_STREAM_MIN_BYTES), a bigbuf array (huge pages where the OS gives them), or
 * with SPARSEFT_HUGEPAGES=0 or when that mapping fails a view starting on a 64-byte boundary of a
 * slightly larger NumPy buffer (its base); either way every row of a 64-byte multiple is aligned for
 * the streaming stores. */
static PyArrayObject *nn_new_out(PyArrayObject *a, PyArrayObject *match) {
    npy_intp n = PyArray_SIZE(a);
    if ((int64_t)n * (int64_t)sizeof(float) < NN_STREAM_MIN_BYTES) return new_like(a);
    // match: start at the same offset within 64 bytes as match's data (the elementwise kernels then
    // load aligned vectors where they stream aligned ones)
    size_t want = match != NULL ? (uintptr_t)PyArray_DATA(match) % 64 : 0;
    if (bigbuf_enabled()) {
        PyArrayObject *v = bigbuf_array(a, want);
        if (v != NULL) return v;
    }
    npy_intp nbuf = n + 16;
    PyArrayObject *buf = new_f32(1, &nbuf);
    if (buf == NULL) return NULL;
    char *p = (char *)PyArray_DATA(buf);
    size_t off = (want + 64 - (uintptr_t)p % 64) % 64;
    PyArray_Descr *d = PyArray_DESCR(buf);
    Py_INCREF(d);
    PyArrayObject *v = (PyArrayObject *)PyArray_NewFromDescr(
        &PyArray_Type, d, PyArray_NDIM(a), PyArray_DIMS(a), NULL, p + off, NPY_ARRAY_CARRAY, NULL);
    if (v == NULL) {
        Py_DECREF(buf);
        return NULL;
    }
    if (PyArray_SetBaseObject(v, (PyObject *)buf) < 0) {  // steals buf
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* The output `name` of a row kernel shaped like ref: a new array (nn_new_out; match NULL for 64-byte
 * aligned, else aligned like match) when out is NULL or None, else out
 * itself (float32, C-contiguous, writeable, ref's shape, sharing no memory with the nin inputs),
 * as a new reference. */
static PyArrayObject *nn_output(PyObject *out, const char *name, PyArrayObject *ref, const char *refname,
                                PyArrayObject *const *ins, const char *const *in_names, int nin,
                                PyArrayObject *match) {
    if (out == NULL || out == Py_None) return nn_new_out(ref, match);
    PyArrayObject *o = arg_f32(out, name, -1);
    if (o == NULL || arg_same_shape(o, name, ref, refname) < 0 || arg_writeable(o, name) < 0) return NULL;
    for (int i = 0; i < nin; i++)
        if (arg_disjoint(o, name, ins[i], in_names[i]) < 0) return NULL;
    Py_INCREF(o);
    return o;
}

static PyObject *py_layernorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *bo, *epso = NULL, *outo = NULL;
    double eps = 1e-5;
    if (!PyArg_ParseTuple(args, "OOO|OO:layernorm_forward", &xo, &wo, &bo, &epso, &outo)) return NULL;
    if (epso != NULL && arg_f32_number(epso, "eps", &eps) < 0) return NULL;
    PyArrayObject *x, *w, *b;
    if (nn_rows_vec(xo, wo, "w", &x, &w) < 0 || nn_positive(eps, "eps") < 0) return NULL;
    if ((b = arg_f32(bo, "b", 1)) == NULL || arg_same_shape(b, "b", w, "w") < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    PyArrayObject *ins[3] = {x, w, b}, *mean = NULL, *rstd = NULL;
    const char *inn[3] = {"x", "w", "b"};
    PyArrayObject *y = nn_output(outo, "out", x, "x", ins, inn, 3, NULL);
    if (y == NULL) return NULL;
    mean = new_f32(1, &N), rstd = new_f32(1, &N);
    if (mean == NULL || rstd == NULL) goto fail;
    Py_BEGIN_ALLOW_THREADS
    layernorm_forward(F32P(y), F32P(mean), F32P(rstd), F32P(x), F32P(w), F32P(b), N, C, (float)eps);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NNN)", y, mean, rstd);
fail:
    Py_XDECREF(y), Py_XDECREF(mean), Py_XDECREF(rstd);
    return NULL;
}

/* dy like x, and the per-row vectors of the norms' backward */
static int nn_norm_bwd_args(PyObject *dyo, PyObject *xo, PyObject *wo, PyObject *meano, PyObject *rstdo,
                            PyArrayObject **dy, PyArrayObject **x, PyArrayObject **w, PyArrayObject **mean,
                            PyArrayObject **rstd) {
    if (nn_rows_vec(xo, wo, "w", x, w) < 0) return -1;
    if ((*dy = arg_f32(dyo, "dy", 2)) == NULL || arg_same_shape(*dy, "dy", *x, "x") < 0) return -1;
    if (meano != NULL && ((*mean = arg_f32(meano, "mean", 1)) == NULL ||
                          arg_dim(*mean, "mean", 0, PyArray_DIM(*x, 0), "N, the rows of x") < 0))
        return -1;
    if ((*rstd = arg_f32(rstdo, "rstd", 1)) == NULL ||
        arg_dim(*rstd, "rstd", 0, PyArray_DIM(*x, 0), "N, the rows of x") < 0)
        return -1;
    return 0;
}

static PyObject *py_layernorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo, *meano, *rstdo, *outo = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO|O:layernorm_backward", &dyo, &xo, &wo, &meano, &rstdo, &outo))
        return NULL;
    PyArrayObject *dy, *x, *w, *mean, *rstd;
    if (nn_norm_bwd_args(dyo, xo, wo, meano, rstdo, &dy, &x, &w, &mean, &rstd) < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    PyArrayObject *ins[5] = {dy, x, w, mean, rstd}, *dw = NULL, *db = NULL;
    const char *inn[5] = {"dy", "x", "w", "mean", "rstd"};
    PyArrayObject *dx = nn_output(outo, "out", x, "x", ins, inn, 5, NULL);
    int rc = 0;
    if (dx == NULL) return NULL;
    dw = new_like(w), db = new_like(w);
    if (dw == NULL || db == NULL) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = layernorm_backward(F32P(dx), F32P(dw), F32P(db), F32P(dy), F32P(x), F32P(w), F32P(mean), F32P(rstd),
                            N, C);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("layernorm_backward");
        goto fail;
    }
    return Py_BuildValue("(NNN)", dx, dw, db);
fail:
    Py_XDECREF(dx), Py_XDECREF(dw), Py_XDECREF(db);
    return NULL;
}

static PyObject *py_rmsnorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *epso = NULL, *outo = NULL;
    double eps = 1e-6;
    if (!PyArg_ParseTuple(args, "OO|OO:rmsnorm_forward", &xo, &wo, &epso, &outo)) return NULL;
    if (epso != NULL && arg_f32_number(epso, "eps", &eps) < 0) return NULL;
    PyArrayObject *x, *w;
    if (nn_rows_vec(xo, wo, "w", &x, &w) < 0 || nn_positive(eps, "eps") < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    PyArrayObject *ins[2] = {x, w};
    const char *inn[2] = {"x", "w"};
    PyArrayObject *y = nn_output(outo, "out", x, "x", ins, inn, 2, NULL);
    if (y == NULL) return NULL;
    PyArrayObject *rstd = new_f32(1, &N);
    if (rstd == NULL) {
        Py_XDECREF(y), Py_XDECREF(rstd);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rmsnorm_forward(F32P(y), F32P(rstd), F32P(x), F32P(w), N, C, (float)eps);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NN)", y, rstd);
}

static PyObject *py_rmsnorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo, *rstdo, *outo = NULL;
    if (!PyArg_ParseTuple(args, "OOOO|O:rmsnorm_backward", &dyo, &xo, &wo, &rstdo, &outo)) return NULL;
    PyArrayObject *dy, *x, *w, *rstd;
    if (nn_norm_bwd_args(dyo, xo, wo, NULL, rstdo, &dy, &x, &w, NULL, &rstd) < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    PyArrayObject *ins[4] = {dy, x, w, rstd}, *dw = NULL;
    const char *inn[4] = {"dy", "x", "w", "rstd"};
    PyArrayObject *dx = nn_output(outo, "out", x, "x", ins, inn, 4, NULL);
    int rc = 0;
    if (dx == NULL) return NULL;
    dw = new_like(w);
    if (dw == NULL) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = rmsnorm_backward(F32P(dx), F32P(dw), F32P(dy), F32P(x), F32P(w), F32P(rstd), N, C);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("rmsnorm_backward");
        goto fail;
    }
    return Py_BuildValue("(NN)", dx, dw);
fail:
    Py_XDECREF(dx), Py_XDECREF(dw);
    return NULL;
}

/* elementwise activations: op 0 gelu fwd (x), 1 gelu bwd (dy, x), 2 swiglu fwd (gate, up), 3 swiglu bwd */
static PyObject *nn_eltwise(PyObject *args, int op) {
    static const char *fmt[] = {"O|O:gelu_forward", "OO|O:gelu_backward", "OO|O:swiglu_forward",
                                "OOO|OO:swiglu_backward"};
    static const char *names[][3] = {
        {"x", "", ""}, {"dy", "x", ""}, {"gate", "up", ""}, {"dy", "gate", "up"}};
    PyObject *o[5] = {NULL, NULL, NULL, NULL, NULL}, *outo[2] = {NULL, NULL};
    int nin = op == 0 ? 1 : op == 3 ? 3 : 2;
    // the inputs, then the optional outputs (out; out and out2 for swiglu_backward)
    if (!PyArg_ParseTuple(args, fmt[op], &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    outo[0] = o[nin], outo[1] = nin + 1 < 5 ? o[nin + 1] : NULL;
    PyArrayObject *a[3] = {NULL, NULL, NULL};
    // the reference shape is the last input's (x, up) for the backward's dy, the first's otherwise
    for (int i = 0; i < nin; i++)
        if ((a[i] = arg_f32(o[i], names[op][i], -1)) == NULL) return NULL;
    int ref = op == 1 ? 1 : op == 3 ? 1 : 0;
    for (int i = 0; i < nin; i++)
        if (i != ref && arg_same_shape(a[i], names[op][i], a[ref], names[op][ref]) < 0) return NULL;
    PyArrayObject *y = nn_output(outo[0], "out", a[ref], names[op][ref], a, names[op], nin, a[0]), *y2 = NULL;
    if (y == NULL) return NULL;
    if (op == 3) {
        y2 = nn_output(outo[1], "out2", a[ref], names[op][ref], a, names[op], nin, a[0]);
        if (y2 == NULL || arg_disjoint(y, "out", y2, "out2") < 0) {
            Py_DECREF(y), Py_XDECREF(y2);
            return NULL;
        }
    }
    int64_t n = PyArray_SIZE(a[ref]);
    Py_BEGIN_ALLOW_THREADS
    switch (op) {
        case 0:
            gelu_forward(F32P(y), F32P(a[0]), n);
            break;
        case 1:
            gelu_backward(F32P(y), F32P(a[0]), F32P(a[1]), n);
            break;
        case 2:
            swiglu_forward(F32P(y), F32P(a[0]), F32P(a[1]), n);
            break;
        default:
            swiglu_backward(F32P(y), F32P(y2), F32P(a[0]), F32P(a[1]), F32P(a[2]), n);
            break;
    }
    Py_END_ALLOW_THREADS
    if (op == 3) return Py_BuildValue("(NN)", y, y2);
    return (PyObject *)y;
}
static PyObject *py_gelu_forward(PyObject *self, PyObject *args) {
    (void)self;
    return nn_eltwise(args, 0);
}
static PyObject *py_gelu_backward(PyObject *self, PyObject *args) {
    (void)self;
    return nn_eltwise(args, 1);
}
static PyObject *py_swiglu_forward(PyObject *self, PyObject *args) {
    (void)self;
    return nn_eltwise(args, 2);
}
static PyObject *py_swiglu_backward(PyObject *self, PyObject *args) {
    (void)self;
    return nn_eltwise(args, 3);
}

/* RoPE's cos | sin table (rope_table) for the last (T, D, theta or inv_freq, offset) seen: the model's
 * layers all rotate the same positions, so the table is computed once rather than once per call.
 * Tables up to ROPE_CACHE_MAX_BYTES are kept (one at a time, until a call with other parameters).
 * Read and replaced under the GIL; each call holds its own reference while its kernel runs without
 * the GIL, so a replacement never frees a table in use. */
#define ROPE_CACHE_MAX_BYTES ((int64_t)16 << 20)
static struct {
    PyArrayObject *tab; /* (T, D) float32, or NULL */
    int64_t T, D, offset;
    double theta;
    float *freq; /* a copy of the D/2 inverse frequencies, or NULL for theta's */
} rope_cache;

/* The (T, D) table for these parameters, as a new reference (NULL with an exception set). */
static PyArrayObject *rope_cached_table(PyArrayObject *freq, int64_t T, int64_t D, double theta,
                                        int64_t offset) {
    size_t fb = sizeof(float) * (size_t)(D / 2);
    if (rope_cache.tab != NULL && rope_cache.T == T && rope_cache.D == D && rope_cache.offset == offset &&
        (freq != NULL ? rope_cache.freq != NULL && memcmp(rope_cache.freq, F32P(freq), fb) == 0
                      : rope_cache.freq == NULL && rope_cache.theta == theta)) {
        Py_INCREF(rope_cache.tab);
        return rope_cache.tab;
    }
    npy_intp dims[2] = {(npy_intp)T, (npy_intp)D};
    PyArrayObject *tab = new_f32(2, dims);
    if (tab == NULL) return NULL;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = rope_table(F32P(tab), freq != NULL ? F32P(freq) : NULL, T, D, theta, offset);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(tab);
        return (PyArrayObject *)scratch_error("rope");
    }
    if (T * D * (int64_t)sizeof(float) <= ROPE_CACHE_MAX_BYTES) {
        float *fc = freq != NULL ? (float *)PyMem_Malloc(fb > 0 ? fb : 1) : NULL;
        if (freq == NULL || fc != NULL) {  // (no memory for the key: the table is simply not kept)
            if (fc != NULL) memcpy(fc, F32P(freq), fb);
            Py_XDECREF(rope_cache.tab);
            PyMem_Free(rope_cache.freq);
            Py_INCREF(tab);
            rope_cache.tab = tab, rope_cache.freq = fc;
            rope_cache.T = T, rope_cache.D = D, rope_cache.offset = offset, rope_cache.theta = theta;
        }
    }
    return tab;
}

static PyObject *py_rope(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "theta", "offset", "inverse", "inv_freq", "out", NULL};
    PyObject *xo, *fo = Py_None, *thetao = NULL, *offseto = NULL, *inverseo = NULL, *outo = NULL;
    double theta = 10000.0;
    long long offset = 0;
    int inverse = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOOO:rope", kwlist, &xo, &thetao, &offseto, &inverseo,
                                     &fo, &outo))
        return NULL;
    if ((thetao != NULL && arg_f32_number(thetao, "theta", &theta) < 0) ||
        (offseto != NULL && arg_int(offseto, "offset", 0, LLONG_MAX, &offset) < 0) ||
        arg_flag(inverseo, "inverse", &inverse) < 0)
        return NULL;
    PyArrayObject *x = arg_f32(xo, "x", 4), *freq = NULL;
    if (x == NULL) return NULL;
    if (fo != Py_None &&
        ((freq = arg_f32(fo, "inv_freq", 1)) == NULL ||
         arg_dim(freq, "inv_freq", 0, PyArray_DIM(x, 3) / 2, "D/2, half the head size of x") < 0 ||
         arg_finite(freq, "inv_freq") < 0))
        return NULL;
    npy_intp B = PyArray_DIM(x, 0), T = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2), D = PyArray_DIM(x, 3);
    if (D % 2 != 0) {
        PyObject *s = shape_tuple(x);
        if (s != NULL)
            PyErr_Format(PyExc_ValueError, "x: expected an even head size D in (B, T, H, D), got %R", s);
        Py_XDECREF(s);
        return NULL;
    }
    if (nn_positive(theta, "theta") < 0) return NULL;
    if (offset < 0) {
        PyErr_Format(PyExc_ValueError, "offset: expected a non-negative int, got %lld", offset);
        return NULL;
    }
    PyArrayObject *ins[2] = {x, freq != NULL ? freq : x};
    const char *inn[2] = {"x", "inv_freq"};
    PyArrayObject *y = nn_output(outo, "out", x, "x", ins, inn, 2, NULL);
    if (y == NULL) return NULL;
    PyArrayObject *tab = rope_cached_table(freq, T, D, theta, offset);
    if (tab == NULL) {
        Py_DECREF(y);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rope_rotate(F32P(y), F32P(x), F32P(tab), B, T, H, D, inverse ? -1 : 1);
    Py_END_ALLOW_THREADS
    Py_DECREF(tab);
    return (PyObject *)y;
}

static PyObject *py_embedding_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ido, *wo;
    if (!PyArg_ParseTuple(args, "OO:embedding_forward", &ido, &wo)) return NULL;
    PyArrayObject *wte = arg_f32(wo, "wte", 2),
                  *ids = wte ? arg_ids(ido, "ids", 2, PyArray_DIM(wte, 0)) : NULL;
    if (ids == NULL) return NULL;
    npy_intp dims[3] = {PyArray_DIM(ids, 0), PyArray_DIM(ids, 1), PyArray_DIM(wte, 1)};
    PyArrayObject *x = new_f32(3, dims);
    if (x == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    embedding_forward(F32P(x), (const int64_t *)PyArray_DATA(ids), F32P(wte), dims[0] * dims[1], dims[2]);
    Py_END_ALLOW_THREADS
    return (PyObject *)x;
}

static PyObject *py_embedding_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dxo, *ido, *Vo;
    long long V;
    if (!PyArg_ParseTuple(args, "OOO:embedding_backward", &dxo, &ido, &Vo)) return NULL;
    if (arg_int(Vo, "V", LLONG_MIN, LLONG_MAX, &V) < 0) return NULL;
    if (V < 1) {
        PyErr_Format(PyExc_ValueError, "V: expected a positive vocabulary size, got %lld", V);
        return NULL;
    }
    PyArrayObject *dx = arg_f32(dxo, "dx", 3), *ids = dx ? arg_ids(ido, "ids", 2, V) : NULL;
    if (ids == NULL) return NULL;
    if (arg_dim(dx, "dx", 0, PyArray_DIM(ids, 0), "B, from ids") < 0 ||
        arg_dim(dx, "dx", 1, PyArray_DIM(ids, 1), "T, from ids") < 0)
        return NULL;
    npy_intp dims[2] = {(npy_intp)V, PyArray_DIM(dx, 2)};
    /* V alone sizes the (V, C) output: one that cannot exist or be allocated is V's error */
    PyArrayObject *dw = dims[1] > 0 && V > NPY_MAX_INTP / 4 / dims[1] ? NULL : new_f32(2, dims);
    if (dw == NULL) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_MemoryError)) return NULL;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "V: the (V, C) = (%lld, %zd) float32 gradient cannot be allocated", V,
                     (Py_ssize_t)dims[1]);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    embedding_backward(F32P(dw), F32P(dx), (const int64_t *)PyArray_DATA(ids), PyArray_SIZE(ids), V, dims[1]);
    Py_END_ALLOW_THREADS
    return (PyObject *)dw;
}

/* logits (N, K) and targets (N,) in [0, K) */
static int nn_xent_args(PyObject *lo, PyObject *to, PyArrayObject **L, PyArrayObject **t) {
    if ((*L = arg_f32(lo, "logits", 2)) == NULL) return -1;
    if ((*t = arg_ids(to, "targets", 1, PyArray_DIM(*L, 1))) == NULL) return -1;
    return arg_dim(*t, "targets", 0, PyArray_DIM(*L, 0), "N, the rows of logits");
}

static PyObject *py_softmax_xent_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo, *to;
    if (!PyArg_ParseTuple(args, "OO:softmax_xent_forward", &lo, &to)) return NULL;
    PyArrayObject *L, *t;
    if (nn_xent_args(lo, to, &L, &t) < 0) return NULL;
    npy_intp N = PyArray_DIM(L, 0);
    PyArrayObject *lse = new_f32(1, &N);
    if (lse == NULL) return NULL;
    float loss;
    Py_BEGIN_ALLOW_THREADS
    loss = softmax_xent_forward(F32P(lse), F32P(L), (const int64_t *)PyArray_DATA(t), N, PyArray_DIM(L, 1));
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dN)", (double)loss, lse);
}

static PyObject *py_softmax_xent_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo, *to, *lseo, *dlosso = NULL;
    double dloss = 1.0;
    if (!PyArg_ParseTuple(args, "OOO|O:softmax_xent_backward", &lo, &to, &lseo, &dlosso)) return NULL;
    if (dlosso != NULL && arg_f32_number(dlosso, "dloss", &dloss) < 0) return NULL;
    PyArrayObject *L, *t, *lse;
    if (nn_xent_args(lo, to, &L, &t) < 0) return NULL;
    if ((lse = arg_f32(lseo, "lse", 1)) == NULL ||
        arg_dim(lse, "lse", 0, PyArray_DIM(L, 0), "N, the rows of logits") < 0)
        return NULL;
    PyArrayObject *d = new_like(L);
    if (d == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    softmax_xent_backward(F32P(d), F32P(L), (const int64_t *)PyArray_DATA(t), F32P(lse), (float)dloss,
                          PyArray_DIM(L, 0), PyArray_DIM(L, 1));
    Py_END_ALLOW_THREADS
    return (PyObject *)d;
}

/* x (N, C), w (V, C), targets (N,) in [0, V) */
static int nn_head_args(PyObject *xo, PyObject *wo, PyObject *to, PyArrayObject **x, PyArrayObject **w,
                        PyArrayObject **t) {
    if ((*x = arg_f32(xo, "x", 2)) == NULL || (*w = arg_f32(wo, "w", 2)) == NULL) return -1;
    if (arg_dim(*w, "w", 1, PyArray_DIM(*x, 1), "C, the columns of x") < 0) return -1;
    if ((*t = arg_ids(to, "targets", 1, PyArray_DIM(*w, 0))) == NULL) return -1;
    return arg_dim(*t, "targets", 0, PyArray_DIM(*x, 0), "N, the rows of x");
}

static PyObject *py_lm_head_xent_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "w", "targets", "chunk", "grad", "need_dw", NULL};
    PyObject *xo, *wo, *to, *chunko = NULL, *grado = NULL, *need_dwo = NULL;
    long long chunk = 0;
    int grad = 0, need_dw = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOO:lm_head_xent_forward", kwlist, &xo, &wo, &to,
                                     &chunko, &grado, &need_dwo))
        return NULL;
    if ((chunko != NULL && arg_int(chunko, "chunk", 0, LLONG_MAX, &chunk) < 0) ||
        arg_flag(grado, "grad", &grad) < 0 || arg_flag(need_dwo, "need_dw", &need_dw) < 0)
        return NULL;
    PyArrayObject *x, *w, *t;
    if (nn_head_args(xo, wo, to, &x, &w, &t) < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), V = PyArray_DIM(w, 0);
    PyArrayObject *lse = new_f32(1, &N), *dx = grad ? new_like(x) : NULL,
                  *dw = grad && need_dw ? new_like(w) : NULL;
    if (lse == NULL || (grad && dx == NULL) || (grad && need_dw && dw == NULL)) goto fail;
    float loss = 0.0f;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = lm_head_xent_forward(&loss, F32P(lse), dx ? F32P(dx) : NULL, dw ? F32P(dw) : NULL, F32P(x), F32P(w),
                              (const int64_t *)PyArray_DATA(t), N, C, V, chunk);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("lm_head_xent_forward");
        goto fail;
    }
    if (!grad) return Py_BuildValue("(dN)", (double)loss, lse);
    if (dw == NULL) {
        Py_INCREF(Py_None);
        dw = (PyArrayObject *)Py_None;
    }
    return Py_BuildValue("(dNNN)", (double)loss, lse, dx, dw);
fail:
    Py_XDECREF(lse), Py_XDECREF(dx), Py_XDECREF(dw);
    return NULL;
}

static PyObject *py_lm_head_xent_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "w", "targets", "lse", "dloss", "need_dw", "chunk", NULL};
    PyObject *xo, *wo, *to, *lseo, *dlosso = NULL, *need_dwo = NULL, *chunko = NULL;
    double dloss = 1.0;
    int need_dw = 0;
    long long chunk = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OOO:lm_head_xent_backward", kwlist, &xo, &wo, &to,
                                     &lseo, &dlosso, &need_dwo, &chunko))
        return NULL;
    if ((dlosso != NULL && arg_f32_number(dlosso, "dloss", &dloss) < 0) ||
        arg_flag(need_dwo, "need_dw", &need_dw) < 0 ||
        (chunko != NULL && arg_int(chunko, "chunk", 0, LLONG_MAX, &chunk) < 0))
        return NULL;
    PyArrayObject *x, *w, *t, *lse;
    if (nn_head_args(xo, wo, to, &x, &w, &t) < 0) return NULL;
    if ((lse = arg_f32(lseo, "lse", 1)) == NULL ||
        arg_dim(lse, "lse", 0, PyArray_DIM(x, 0), "N, the rows of x") < 0)
        return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), V = PyArray_DIM(w, 0);
    PyArrayObject *dx = new_like(x), *dw = need_dw ? new_like(w) : NULL;
    int rc = 0;
    if (dx == NULL || (need_dw && dw == NULL)) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = lm_head_xent_backward(F32P(dx), dw ? F32P(dw) : NULL, F32P(x), F32P(w),
                               (const int64_t *)PyArray_DATA(t), F32P(lse), (float)dloss, N, C, V, chunk);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("lm_head_xent_backward");
        goto fail;
    }
    if (dw == NULL) {
        Py_INCREF(Py_None);
        dw = (PyArrayObject *)Py_None;
    }
    return Py_BuildValue("(NN)", dx, dw);
fail:
    Py_XDECREF(dx), Py_XDECREF(dw);
    return NULL;
}

/* dx = lm_head_xent_backward_into(dw, x, w, targets, lse, dloss, chunk): dw += the head's gradient */
static PyObject *py_lm_head_xent_backward_into(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"dw", "x", "w", "targets", "lse", "dloss", "chunk", NULL};
    PyObject *dwo, *xo, *wo, *to, *lseo, *dlosso = NULL, *chunko = NULL;
    double dloss = 1.0;
    long long chunk = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|OO:lm_head_xent_backward_into", kwlist, &dwo, &xo,
                                     &wo, &to, &lseo, &dlosso, &chunko))
        return NULL;
    if ((dlosso != NULL && arg_f32_number(dlosso, "dloss", &dloss) < 0) ||
        (chunko != NULL && arg_int(chunko, "chunk", 0, LLONG_MAX, &chunk) < 0))
        return NULL;
    PyArrayObject *x, *w, *t, *lse, *dw;
    if (nn_head_args(xo, wo, to, &x, &w, &t) < 0) return NULL;
    if ((lse = arg_f32(lseo, "lse", 1)) == NULL ||
        arg_dim(lse, "lse", 0, PyArray_DIM(x, 0), "N, the rows of x") < 0)
        return NULL;
    if ((dw = arg_f32(dwo, "dw", 2)) == NULL ||
        arg_dim(dw, "dw", 0, PyArray_DIM(w, 0), "V, the rows of w") < 0 ||
        arg_dim(dw, "dw", 1, PyArray_DIM(w, 1), "C, the columns of w") < 0 || arg_writeable(dw, "dw") < 0 ||
        arg_disjoint(dw, "dw", x, "x") < 0 || arg_disjoint(dw, "dw", w, "w") < 0 ||
        arg_disjoint(dw, "dw", lse, "lse") < 0)
        return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), V = PyArray_DIM(w, 0);
    PyArrayObject *dx = new_like(x);
    if (dx == NULL) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = lm_head_xent_backward_into(F32P(dx), F32P(dw), F32P(x), F32P(w), (const int64_t *)PyArray_DATA(t),
                                    F32P(lse), (float)dloss, N, C, V, chunk);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(dx);
        return scratch_error("lm_head_xent_backward_into");
    }
    return (PyObject *)dx;
}

static PyObject *py_adamw_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po, *go, *mo, *vo, *ho[5], *stepo;
    double lr, b1, b2, eps, wd;
    long long step;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO:adamw_step", &po, &go, &mo, &vo, &ho[0], &ho[1], &ho[2], &ho[3],
                          &ho[4], &stepo))
        return NULL;
    if (arg_f32_number(ho[0], "lr", &lr) < 0 || arg_f32_number(ho[1], "beta1", &b1) < 0 ||
        arg_f32_number(ho[2], "beta2", &b2) < 0 || arg_f32_number(ho[3], "eps", &eps) < 0 ||
        arg_f32_number(ho[4], "weight_decay", &wd) < 0 ||
        arg_int(stepo, "step", LLONG_MIN, LLONG_MAX, &step) < 0)
        return NULL;
    PyArrayObject *a[4];
    const char *names[4] = {"param", "grad", "m", "v"};
    PyObject *objs[4] = {po, go, mo, vo};
    for (int i = 0; i < 4; i++) {
        if ((a[i] = arg_f32(objs[i], names[i], -1)) == NULL) return NULL;
        if (i > 0 && arg_same_shape(a[i], names[i], a[0], "param") < 0) return NULL;
        if (i != 1 && !PyArray_ISWRITEABLE(a[i])) {
            PyErr_Format(PyExc_ValueError,
                         "%s: expected a writeable array (updated in place), got a read-only one", names[i]);
            return NULL;
        }
    }
    /* param, m and v are written element by element while all four are read: no two may share memory */
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (arg_disjoint(a[i], names[i], a[j], names[j]) < 0) return NULL;
    const double vals[5] = {lr, eps, wd, b1, b2};
    const char *vnames[5] = {"lr", "eps", "weight_decay", "beta1", "beta2"};
    for (int i = 0; i < 5; i++) {
        // lr, eps, weight_decay finite and >= 0; the betas in [0, 1)
        int ok = i < 3 ? isfinite(vals[i]) && vals[i] >= 0.0 : vals[i] >= 0.0 && vals[i] < 1.0;
        if (ok) continue;
        PyObject *got = PyFloat_FromDouble(vals[i]);
        if (got != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected %s, got %R", vnames[i],
                         i < 3 ? "a finite float >= 0" : "a float in [0, 1)", got);
        Py_XDECREF(got);
        return NULL;
    }
    if (step < 1) {
        PyErr_Format(PyExc_ValueError, "step: expected a positive int, got %lld", step);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    adamw_step(F32P(a[0]), F32P(a[2]), F32P(a[3]), F32P(a[1]), PyArray_SIZE(a[0]), (float)lr, (float)b1,
               (float)b2, (float)eps, (float)wd, step);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The layout argument of the attention wrappers: 0 = "bhtd" (B, heads, T, D), 1 = "bthd" (B, T, heads,
 * D, e.g. a view of the (B, T, 3C) qkv projection); NULL or None is "bhtd". */
static int arg_attn_layout(PyObject *obj, int *layout) {
    const char *s;
    *layout = 0;
    if (obj == NULL || obj == Py_None) return 0;
    if (arg_str(obj, "layout", &s) < 0) return -1;
    if (strcmp(s, "bhtd") == 0 || strcmp(s, "bthd") == 0) {
        *layout = s[1] == 't';
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "layout: expected 'bhtd' or 'bthd', got %R", obj);
    return -1;
}

/* A float32 4-D attention operand in `layout`, any strides that are whole floats with the D axis
 * contiguous (no copy: views of a (B, T, 3C) array are read in place). dims get (B, heads, T, D)
 * and st the element strides. Returns the array (borrowed) or NULL with TypeError/ValueError set. */
static PyArrayObject *arg_attn(PyObject *obj, const char *name, int layout, npy_intp dims[4],
                               att_strides *st) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32 || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "%s: expected dtype float32 in native byte order, got %S", name,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != 4) {
        PyObject *shape = shape_tuple(a);
        if (shape != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected a 4-D array (%s), got shape %R", name,
                         layout ? "B, T, heads, D" : "B, heads, T, D", shape);
        Py_XDECREF(shape);
        return NULL;
    }
    const npy_intp *s = PyArray_STRIDES(a);
    int ax_h = layout ? 2 : 1, ax_t = layout ? 1 : 2;
    dims[0] = PyArray_DIM(a, 0), dims[1] = PyArray_DIM(a, ax_h), dims[2] = PyArray_DIM(a, ax_t);
    dims[3] = PyArray_DIM(a, 3);
    if (PyArray_SIZE(a) == 0) {  // nothing is read or written: any strides
        st->sb = st->sh = st->st = 0;
        return a;
    }
    for (int i = 0; i < 4; i++) {
        if (s[i] % (npy_intp)sizeof(float) != 0 || !PyArray_ISALIGNED(a)) {
            PyErr_Format(PyExc_ValueError,
                         "%s: expected an aligned array with strides in whole float32 elements, got strides "
                         "%zd, %zd, %zd, %zd bytes (pass %s.copy())",
                         name, (Py_ssize_t)s[0], (Py_ssize_t)s[1], (Py_ssize_t)s[2], (Py_ssize_t)s[3], name);
            return NULL;
        }
    }
    if (PyArray_DIM(a, 3) > 1 && s[3] != (npy_intp)sizeof(float)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected the last axis (D) contiguous (stride 4 bytes), got stride %zd (pass "
                     "numpy.ascontiguousarray(%s))",
                     name, (Py_ssize_t)s[3], name);
        return NULL;
    }
    st->sb = s[0] / 4, st->sh = s[ax_h] / 4, st->st = s[ax_t] / 4;
    return a;
}

/* Checks that axis `axis` (in (B, heads, T, D) order) of the attention operand a in `layout` has
 * length want; the message gives the array's own axis number and shape. */
static int arg_attn_dim(PyArrayObject *a, const char *name, int layout, int axis, npy_intp want,
                        const char *what) {
    static const char *ax[4] = {"B", "heads", "T", "D"};
    int real = layout && (axis == 1 || axis == 2) ? 3 - axis : axis;
    char buf[64];
    snprintf(buf, sizeof(buf), "%s, %s", ax[axis], what);
    return arg_dim(a, name, real, want, buf);
}

/* q (B, H, T, D), k and v (B, Hkv, T, D) with Hkv dividing H, all in `layout` */
static int nn_attn_args(PyObject *qo, PyObject *ko, PyObject *vo, int layout, PyArrayObject **q,
                        PyArrayObject **k, PyArrayObject **v, npy_intp dq[4], att_strides st[3]) {
    npy_intp dk[4], dv[4];
    if ((*q = arg_attn(qo, "q", layout, dq, &st[0])) == NULL ||
        (*k = arg_attn(ko, "k", layout, dk, &st[1])) == NULL ||
        (*v = arg_attn(vo, "v", layout, dv, &st[2])) == NULL)
        return -1;
    if (arg_attn_dim(*k, "k", layout, 0, dq[0], "from q") < 0 ||
        arg_attn_dim(*k, "k", layout, 2, dq[2], "from q") < 0 ||
        arg_attn_dim(*k, "k", layout, 3, dq[3], "from q") < 0)
        return -1;
    if (dk[1] < 1 || dq[1] % dk[1] != 0) {
        PyErr_Format(PyExc_ValueError, "k: expected a number of kv heads dividing H = %zd, got %zd",
                     (Py_ssize_t)dq[1], (Py_ssize_t)dk[1]);
        return -1;
    }
    for (int i = 0; i < 4; i++)
        if (arg_attn_dim(*v, "v", layout, i, dk[i], "from k") < 0) return -1;
    return 0;
}

/* Refuses an output whose elements overlap one another (e.g. broadcast strides). Sufficient test:
 * taken by growing |stride|, each axis steps past everything the inner axes reach. */
static int arg_no_self_overlap(PyArrayObject *a, const char *name) {
    int nd = PyArray_NDIM(a), order[NPY_MAXDIMS], n = 0;
    if (PyArray_SIZE(a) == 0) return 0;
    for (int i = 0; i < nd; i++)
        if (PyArray_DIM(a, i) > 1) order[n++] = i;
    for (int i = 1; i < n; i++)  // insertion sort by |stride|
        for (int j = i; j > 0 && llabs((long long)PyArray_STRIDE(a, order[j])) <
                                     llabs((long long)PyArray_STRIDE(a, order[j - 1]));
             j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    long long reach = (long long)PyArray_ITEMSIZE(a);
    for (int i = 0; i < n; i++) {
        long long st = llabs((long long)PyArray_STRIDE(a, order[i]));
        if (st < reach) {
            PyErr_Format(PyExc_ValueError,
                         "%s: expected an output whose elements do not overlap, got strides "
                         "that revisit memory (pass a new array)",
                         name);
            return -1;
        }
        reach += st * (long long)(PyArray_DIM(a, order[i]) - 1);
    }
    return 0;
}

/* Refuses arrays a and b that share memory (exactly, by numpy.shares_memory: interleaved views
 * of one buffer that touch different elements are fine). */
static int arg_no_shared(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    static PyObject *shares = NULL;
    if (PyArray_SIZE(a) == 0 || PyArray_SIZE(b) == 0) return 0;
    if (shares == NULL) {
        PyObject *np = PyImport_ImportModule("numpy");
        if (np == NULL) return -1;
        shares = PyObject_GetAttrString(np, "shares_memory");
        Py_DECREF(np);
        if (shares == NULL) return -1;
    }
    PyObject *r = PyObject_CallFunction(shares, "OOi", (PyObject *)a, (PyObject *)b, 1 << 20);
    if (r == NULL) {  // numpy.exceptions.TooHardError: could not decide within max_work
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%s, %s: could not prove that these arrays do not share memory (pass a "
                     "new array as %s)",
                     an, bn, an);
        return -1;
    }
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (t < 0) return -1;
    if (t == 0) return 0;
    PyErr_Format(PyExc_ValueError, "%s, %s: expected arrays that do not share memory, got overlapping ones",
                 an, bn);
    return -1;
}

/* The output `name`: obj None/NULL -> a new contiguous array of `shape` (in the layout's order);
 * else a writeable float32 array of exactly that shape, strided as arg_attn allows, elements not
 * overlapping. Returns a new reference (dims/st filled) or NULL. */
static PyArrayObject *attn_out(PyObject *obj, const char *name, int layout, const npy_intp *want,
                               npy_intp dims[4], att_strides *st) {
    npy_intp shape[4] = {want[0], layout ? want[2] : want[1], layout ? want[1] : want[2], want[3]};
    PyArrayObject *a;
    if (obj == NULL || obj == Py_None) {
        if ((a = new_f32(4, shape)) == NULL) return NULL;
    } else {
        if (arg_attn(obj, name, layout, dims, st) == NULL) return NULL;
        a = (PyArrayObject *)obj;
        if (memcmp(PyArray_DIMS(a), shape, sizeof(shape)) != 0) {
            PyObject *got = shape_tuple(a);
            if (got != NULL)
                PyErr_Format(PyExc_ValueError, "%s: expected shape (%zd, %zd, %zd, %zd), got %R", name,
                             (Py_ssize_t)shape[0], (Py_ssize_t)shape[1], (Py_ssize_t)shape[2],
                             (Py_ssize_t)shape[3], got);
            Py_XDECREF(got);
            return NULL;
        }
        if (arg_writeable(a, name) < 0 || arg_no_self_overlap(a, name) < 0) return NULL;
        Py_INCREF(a);
    }
    arg_attn((PyObject *)a, name, layout, dims, st);
    return a;
}

static PyObject *py_attention_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "causal", "scale", "layout", "out", NULL};
    PyObject *qo, *ko, *vo, *causalo, *scaleo, *layo = NULL, *outo = NULL;
    int causal = 1, layout;
    double scale;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|OO:attention_forward", kwlist, &qo, &ko, &vo,
                                     &causalo, &scaleo, &layo, &outo))
        return NULL;
    if (arg_flag(causalo, "causal", &causal) < 0 || arg_f32_number(scaleo, "scale", &scale) < 0 ||
        arg_attn_layout(layo, &layout) < 0)
        return NULL;
    PyArrayObject *q, *k, *v;
    npy_intp d[4], dout[4];
    att_strides st[3], so;
    if (nn_attn_args(qo, ko, vo, layout, &q, &k, &v, d, st) < 0) return NULL;
    npy_intp B = d[0], H = d[1], T = d[2], D = d[3], Hkv = PyArray_DIM(k, layout ? 2 : 1);
    npy_intp ldims[3] = {B, H, T};
    PyArrayObject *o = attn_out(outo, "out", layout, d, dout, &so), *lse = NULL;
    int rc = 0;
    if (o == NULL) return NULL;
    if (arg_no_shared(o, "out", q, "q") < 0 || arg_no_shared(o, "out", k, "k") < 0 ||
        arg_no_shared(o, "out", v, "v") < 0)
        goto fail;
    if ((lse = new_f32(3, ldims)) == NULL) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = attention_forward(F32P(o), so, F32P(lse), F32P(q), st[0], F32P(k), st[1], F32P(v), st[2], B, H, Hkv,
                           T, D, (float)scale, causal);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("attention_forward");
        goto fail;
    }
    return Py_BuildValue("(NN)", o, lse);
fail:
    Py_XDECREF(o), Py_XDECREF(lse);
    return NULL;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"do",    "q",      "k",  "v",  "o",  "lse", "causal",
                             "scale", "layout", "dq", "dk", "dv", NULL};
    PyObject *doo, *qo, *ko, *vo, *oo, *lo, *causalo, *scaleo, *layo = NULL, *dqo = NULL, *dko = NULL,
                                                               *dvo = NULL;
    int causal = 1, layout;
    double scale;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO|OOOO:attention_backward", kwlist, &doo, &qo, &ko,
                                     &vo, &oo, &lo, &causalo, &scaleo, &layo, &dqo, &dko, &dvo))
        return NULL;
    if (arg_flag(causalo, "causal", &causal) < 0 || arg_f32_number(scaleo, "scale", &scale) < 0 ||
        arg_attn_layout(layo, &layout) < 0)
        return NULL;
    PyArrayObject *q, *k, *v, *dout, *o, *lse;
    npy_intp d[4], dk_[4], tmp[4];
    att_strides st[3], sdo, so, sg[3];
    if (nn_attn_args(qo, ko, vo, layout, &q, &k, &v, d, st) < 0) return NULL;
    if ((dout = arg_attn(doo, "do", layout, tmp, &sdo)) == NULL) return NULL;
    for (int i = 0; i < 4; i++)
        if (arg_attn_dim(dout, "do", layout, i, d[i], "from q") < 0) return NULL;
    if ((o = arg_attn(oo, "o", layout, tmp, &so)) == NULL) return NULL;
    for (int i = 0; i < 4; i++)
        if (arg_attn_dim(o, "o", layout, i, d[i], "from q") < 0) return NULL;
    npy_intp B = d[0], H = d[1], T = d[2], D = d[3], Hkv = PyArray_DIM(k, layout ? 2 : 1);
    if ((lse = arg_f32(lo, "lse", 3)) == NULL || arg_dim(lse, "lse", 0, B, "B, from q") < 0 ||
        arg_dim(lse, "lse", 1, H, "H, from q") < 0 || arg_dim(lse, "lse", 2, T, "T, from q") < 0)
        return NULL;
    dk_[0] = B, dk_[1] = Hkv, dk_[2] = T, dk_[3] = D;
    PyArrayObject *g[3] = {NULL, NULL, NULL};
    PyObject *go[3] = {dqo, dko, dvo};
    static const char *gn[3] = {"dq", "dk", "dv"};
    PyArrayObject *ins[6] = {dout, q, k, v, o, lse};
    static const char *inn[6] = {"do", "q", "k", "v", "o", "lse"};
    int rc = 0;
    for (int i = 0; i < 3; i++) {
        if ((g[i] = attn_out(go[i], gn[i], layout, i == 0 ? d : dk_, tmp, &sg[i])) == NULL) goto fail;
        for (int j = 0; j < i; j++)
            if (arg_no_shared(g[i], gn[i], g[j], gn[j]) < 0) goto fail;
        for (int j = 0; j < 6; j++)
            if (arg_no_shared(g[i], gn[i], ins[j], inn[j]) < 0) goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = attention_backward(F32P(g[0]), sg[0], F32P(g[1]), sg[1], F32P(g[2]), sg[2], F32P(dout), sdo, F32P(q),
                            st[0], F32P(k), st[1], F32P(v), st[2], F32P(o), so, F32P(lse), B, H, Hkv, T, D,
                            (float)scale, causal);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        scratch_error("attention_backward");
        goto fail;
    }
    return Py_BuildValue("(NNN)", g[0], g[1], g[2]);
fail:
    Py_XDECREF(g[0]), Py_XDECREF(g[1]), Py_XDECREF(g[2]);
    return NULL;
}

/* ---- planner: DTR ---- */

static PyObject *py_remat_dtr(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return remat_run_planner(args, kwargs, PLAN_DTR);
}

/* ---- module -------------------------------------------------------------------------------- */

/* ---- rws ----------------------------------------------------------------------------------- */

/* Checks that a has n elements (the size of `other`). */
static int rws_same_size(PyArrayObject *a, const char *name, npy_intp n, const char *other) {
    if (PyArray_SIZE(a) == n) return 0;
    PyObject *shape = shape_tuple(a);
    if (shape != NULL)
        PyErr_Format(PyExc_ValueError, "%s: expected %zd elements (the size of %s), got shape %R", name,
                     (Py_ssize_t)n, other, shape);
    Py_XDECREF(shape);
    return -1;
}

/* A finite scale that fits float32. */
static int rws_alpha(double a) {
    if (isfinite(a) && fabs(a) <= (double)FLT_MAX) return 0;
    PyObject *got = PyFloat_FromDouble(a);
    if (got != NULL)
        PyErr_Format(PyExc_ValueError, "alpha: expected a finite number within float32's range, got %R", got);
    Py_XDECREF(got);
    return -1;
}

/* Reads the group, bits and scheme arguments of a packed format (TypeError / ValueError naming the
 * argument); their values are checked by rws_parse_packed. */
static int rws_format_args(PyObject *go, PyObject *bo, PyObject *so, long long *group, int *bits,
                           int *scheme) {
    long long b, s;
    if (arg_int(go, "group", 1, LLONG_MAX, group) < 0 || arg_int(bo, "bits", 1, 8, &b) < 0 ||
        arg_int(so, "scheme", 0, 1, &s) < 0)
        return -1;
    *bits = (int)b, *scheme = (int)s;
    return 0;
}

/* Validates a packed source (codes, params, group, bits, scheme) for n elements into *src. */
static int rws_parse_packed(PyObject *co, PyObject *po, long long group, int bits, int scheme, npy_intp n,
                            rws_source *src) {
    if (bits != 1 && bits != 2 && bits != 4 && bits != 8) {
        PyErr_Format(PyExc_ValueError, "bits: expected 1, 2, 4 or 8, got %d", bits);
        return -1;
    }
    if (scheme != RWS_LINEAR && scheme != RWS_LOG) {
        PyErr_Format(PyExc_ValueError, "scheme: expected 0 (linear) or 1 (log), got %d", scheme);
        return -1;
    }
    if (group < 1) {
        PyErr_Format(PyExc_ValueError, "group: expected a group size >= 1, got %lld", group);
        return -1;
    }
    PyArrayObject *codes = arg_array(co, "codes", NPY_UINT8, 1);
    PyArrayObject *params = codes ? arg_f32(po, "params", 2) : NULL;
    if (params == NULL) return -1;
    npy_intp nbytes = (npy_intp)sft_ceil_div((int64_t)n * bits, 8);
    npy_intp ngroups = (npy_intp)sft_ceil_div((int64_t)n, (int64_t)group);
    if (arg_dim(codes, "codes", 0, nbytes, "ceil(n * bits / 8)") < 0 ||
        arg_dim(params, "params", 0, ngroups, "ceil(n / group)") < 0 ||
        arg_dim(params, "params", 1, 2, "two parameters per group") < 0 || arg_finite(params, "params") < 0)
        return -1;
    src->dense = NULL;
    src->codes = (const uint8_t *)PyArray_DATA(codes);
    src->params = (const float *)PyArray_DATA(params);
    src->bits = bits, src->scheme = scheme, src->group = (int64_t)group;
    return 0;
}

/* The source argument of rws_patch/rws_unpatch: a float32 array of n elements, or a tuple
 * (codes, params, group, bits, scheme). */
static int rws_parse_source(PyObject *so, npy_intp n, rws_source *src) {
    if (PyTuple_Check(so)) {
        PyObject *co, *po, *go, *bo, *sco;
        long long group;
        int bits, scheme;
        if (PyTuple_GET_SIZE(so) != 5) {
            PyErr_Format(PyExc_ValueError,
                         "source: expected (codes, params, group, bits, scheme), got a tuple of %zd",
                         PyTuple_GET_SIZE(so));
            return -1;
        }
        co = PyTuple_GET_ITEM(so, 0), po = PyTuple_GET_ITEM(so, 1), go = PyTuple_GET_ITEM(so, 2);
        bo = PyTuple_GET_ITEM(so, 3), sco = PyTuple_GET_ITEM(so, 4);
        if (rws_format_args(go, bo, sco, &group, &bits, &scheme) < 0) return -1;
        return rws_parse_packed(co, po, group, bits, scheme, n, src);
    }
    PyArrayObject *s = arg_f32(so, "source", -1);
    if (s == NULL || rws_same_size(s, "source", n, "w") < 0) return -1;
    memset(src, 0, sizeof(*src));
    src->dense = (const float *)PyArray_DATA(s);
    return 0;
}

/* The weights w (writeable float32, float16, or uint16 holding bfloat16 bits) and its type. */
static PyArrayObject *rws_parse_weights(PyObject *wo, int *wtype) {
    if (!PyArray_Check(wo)) {
        PyErr_Format(PyExc_TypeError, "w: expected a numpy.ndarray, got %s", Py_TYPE(wo)->tp_name);
        return NULL;
    }
    int t = PyArray_TYPE((PyArrayObject *)wo);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT16 && t != NPY_UINT16) {
        PyErr_Format(PyExc_TypeError, "w: expected dtype float32, float16 or uint16 (bfloat16 bits), got %S",
                     (PyObject *)PyArray_DESCR((PyArrayObject *)wo));
        return NULL;
    }
    PyArrayObject *w = arg_array(wo, "w", t, -1);
    if (w == NULL) return NULL;
    if (!PyArray_ISWRITEABLE(w)) {
        PyErr_SetString(PyExc_ValueError, "w: expected a writeable array, got a read-only one");
        return NULL;
    }
    *wtype = t == NPY_FLOAT32 ? RWS_F32 : t == NPY_FLOAT16 ? RWS_F16 : RWS_BF16;
    return w;
}

/* An optional bool/uint8 mask of n elements; *mask = NULL for None. */
static int rws_parse_mask(PyObject *mo, npy_intp n, const uint8_t **mask) {
    *mask = NULL;
    if (mo == Py_None) return 0;
    int t = PyArray_Check(mo) ? PyArray_TYPE((PyArrayObject *)mo) : NPY_BOOL;
    PyArrayObject *m = arg_array(mo, "mask", t == NPY_UINT8 ? NPY_UINT8 : NPY_BOOL, -1);
    if (m == NULL || rws_same_size(m, "mask", n, "w") < 0) return -1;
    *mask = (const uint8_t *)PyArray_DATA(m);
    return 0;
}

/* w is written while the other arguments are read: none of them (already validated arrays, or
 * the codes and params of a packed source) may share its memory. */
static int rws_apart(PyArrayObject *w, PyObject *obj, const char *name) {
    if (PyTuple_Check(obj) && PyTuple_GET_SIZE(obj) == 5)
        return rws_apart(w, PyTuple_GET_ITEM(obj, 0), "codes") < 0
                   ? -1
                   : rws_apart(w, PyTuple_GET_ITEM(obj, 1), "params");
    if (!PyArray_Check(obj)) return 0;
    return arg_disjoint(w, "w", (PyArrayObject *)obj, name);
}

static PyObject *py_rws_extract(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"pre", "clean", "robust", "naive", NULL};
    PyObject *po, *co, *ro, *naiveo = NULL;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:rws_extract", kwlist, &po, &co, &ro, &naiveo) ||
        arg_flag(naiveo, "naive", &naive) < 0)
        return NULL;
    PyArrayObject *p = arg_f32(po, "pre", -1);
    PyArrayObject *c = p ? arg_f32(co, "clean", -1) : NULL;
    PyArrayObject *r = c ? arg_f32(ro, "robust", -1) : NULL;
    if (r == NULL) return NULL;
    npy_intp n = PyArray_SIZE(p);
    if (rws_same_size(c, "clean", n, "pre") < 0 || rws_same_size(r, "robust", n, "pre") < 0) return NULL;
    PyArrayObject *sig = new_f32(PyArray_NDIM(p), PyArray_DIMS(p));
    if (sig == NULL) return NULL;
    double dots[2] = {0.0, 0.0};
    int rc = 0;
    float *S = (float *)PyArray_DATA(sig);
    const float *P = (const float *)PyArray_DATA(p), *C = (const float *)PyArray_DATA(c);
    const float *R = (const float *)PyArray_DATA(r);
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        rws_extract_naive(S, dots, P, C, R, (int64_t)n);
    else
        rc = rws_extract(S, dots, P, C, R, (int64_t)n);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(sig);
        return scratch_error("rws_extract");
    }
    return Py_BuildValue("Ndd", sig, dots[0], dots[1]);
}

static PyObject *py_rws_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *go, *bo, *so;
    long long group;
    int bits, scheme;
    if (!PyArg_ParseTuple(args, "OOOO:rws_quantize", &xo, &go, &bo, &so) ||
        rws_format_args(go, bo, so, &group, &bits, &scheme) < 0)
        return NULL;
    PyArrayObject *x = arg_f32(xo, "x", -1);
    if (x == NULL || arg_finite(x, "x") < 0) return NULL;
    npy_intp n = PyArray_SIZE(x);
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected at least one element, got an empty array");
        return NULL;
    }
    rws_source chk;
    npy_intp nbytes = (npy_intp)sft_ceil_div((int64_t)n * (bits > 0 ? bits : 1), 8);
    npy_intp dims[2] = {(npy_intp)sft_ceil_div((int64_t)n, group > 0 ? (int64_t)group : 1), 2};
    PyArrayObject *codes = (PyArrayObject *)PyArray_ZEROS(1, &nbytes, NPY_UINT8, 0);
    PyArrayObject *params = new_f32(2, dims);
    if (codes == NULL || params == NULL) goto fail;
    float *Pm = (float *)PyArray_DATA(params);
    for (npy_intp i = 0; i < 2 * dims[0]; i++) Pm[i] = 0.0f;
    if (rws_parse_packed((PyObject *)codes, (PyObject *)params, group, bits, scheme, n, &chk) < 0) goto fail;
    int rc;
    uint8_t *Cd = (uint8_t *)PyArray_DATA(codes);
    const float *X = (const float *)PyArray_DATA(x);
    double stats[3] = {0.0, 0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    rc = rws_quantize(Cd, Pm, stats, X, (int64_t)n, (int64_t)group, bits, scheme);
    Py_END_ALLOW_THREADS
    if (rc == -1) {
        PyErr_NoMemory();
        goto fail;
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "x: its range does not fit float32 quantization parameters (max - min overflows)");
        goto fail;
    }
    return Py_BuildValue("NN(ddd)", codes, params, stats[0], stats[1], stats[2]);
fail:
    Py_XDECREF(codes);
    Py_XDECREF(params);
    return NULL;
}

static PyObject *py_rws_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *po, *no, *go, *bo, *so;
    long long n, group;
    int bits, scheme;
    if (!PyArg_ParseTuple(args, "OOOOOO:rws_dequantize", &co, &po, &no, &go, &bo, &so) ||
        arg_int(no, "n", 0, (long long)(NPY_MAX_INTP / 8), &n) < 0 ||
        rws_format_args(go, bo, so, &group, &bits, &scheme) < 0)
        return NULL;
    rws_source src;
    if (rws_parse_packed(co, po, group, bits, scheme, (npy_intp)n, &src) < 0) return NULL;
    npy_intp dims[1] = {(npy_intp)n};
    PyArrayObject *out = new_f32(1, dims);
    if (out == NULL) return NULL;
    float *O = (float *)PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    rws_dequantize(O, &src, (int64_t)n);
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

static PyObject *py_rws_patch(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "source", "alpha", "mask", NULL};
    PyObject *wo, *so, *mo = Py_None, *alphao;
    double alpha;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:rws_patch", kwlist, &wo, &so, &alphao, &mo) ||
        arg_real(alphao, "alpha", &alpha) < 0)
        return NULL;
    int wtype;
    PyArrayObject *w = rws_parse_weights(wo, &wtype);
    if (w == NULL || rws_alpha(alpha) < 0) return NULL;
    npy_intp n = PyArray_SIZE(w);
    rws_source src;
    const uint8_t *mask;
    if (rws_parse_source(so, n, &src) < 0 || rws_parse_mask(mo, n, &mask) < 0 ||
        rws_apart(w, so, "source") < 0 || rws_apart(w, mo, "mask") < 0)
        return NULL;
    rws_undo undo = {NULL, NULL, 0};
    int64_t nonfinite = 0;
    int rc;
    void *W = PyArray_DATA(w);
    Py_BEGIN_ALLOW_THREADS
    rc = rws_patch(W, wtype, mask, &src, (float)alpha, (int64_t)n, &undo, &nonfinite);
    Py_END_ALLOW_THREADS
    if (rc != 0) return scratch_error("rws_patch");
    npy_intp cnt = (npy_intp)undo.count;
    PyArrayObject *index = (PyArrayObject *)PyArray_EMPTY(1, &cnt, NPY_INT64, 0);
    PyArrayObject *bits = (PyArrayObject *)PyArray_EMPTY(1, &cnt, NPY_UINT32, 0);
    if (index == NULL || bits == NULL) {
        // the patch stays applied but its record is lost: undo it now, then report
        rws_unpatch(W, wtype, mask, &src, (float)alpha, (int64_t)n, undo.index, undo.bits, undo.count);
        rws_undo_free(&undo);
        Py_XDECREF(index);
        Py_XDECREF(bits);
        return NULL;
    }
    if (cnt > 0) {
        memcpy(PyArray_DATA(index), undo.index, (size_t)cnt * sizeof(int64_t));
        memcpy(PyArray_DATA(bits), undo.bits, (size_t)cnt * sizeof(uint32_t));
    }
    rws_undo_free(&undo);
    return Py_BuildValue("NNL", index, bits, (long long)nonfinite);
}

static PyObject *py_rws_unpatch(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "source", "alpha", "index", "bits", "mask", NULL};
    PyObject *wo, *so, *io, *bo, *mo = Py_None, *alphao;
    double alpha;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|O:rws_unpatch", kwlist, &wo, &so, &alphao, &io, &bo,
                                     &mo) ||
        arg_real(alphao, "alpha", &alpha) < 0)
        return NULL;
    int wtype;
    PyArrayObject *w = rws_parse_weights(wo, &wtype);
    if (w == NULL || rws_alpha(alpha) < 0) return NULL;
    npy_intp n = PyArray_SIZE(w);
    rws_source src;
    const uint8_t *mask;
    if (rws_parse_source(so, n, &src) < 0 || rws_parse_mask(mo, n, &mask) < 0 ||
        rws_apart(w, so, "source") < 0 || rws_apart(w, mo, "mask") < 0)
        return NULL;
    PyArrayObject *index = arg_array(io, "index", NPY_INT64, 1);
    PyArrayObject *bits = index ? arg_array(bo, "bits", NPY_UINT32, 1) : NULL;
    if (bits == NULL || arg_dim(bits, "bits", 0, PyArray_DIM(index, 0), "the length of index") < 0 ||
        rws_apart(w, io, "index") < 0 || rws_apart(w, bo, "bits") < 0)
        return NULL;
    const int64_t *Ix = (const int64_t *)PyArray_DATA(index);
    npy_intp cnt = PyArray_DIM(index, 0);
    for (npy_intp k = 0; k < cnt; k++)
        if (Ix[k] < 0 || Ix[k] >= n || (k > 0 && Ix[k] <= Ix[k - 1])) {
            PyErr_Format(PyExc_ValueError, "index: expected ascending positions in [0, %zd), got %lld at %zd",
                         (Py_ssize_t)n, (long long)Ix[k], (Py_ssize_t)k);
            return NULL;
        }
    const uint32_t *Bt = (const uint32_t *)PyArray_DATA(bits);
    void *W = PyArray_DATA(w);
    Py_BEGIN_ALLOW_THREADS
    rws_unpatch(W, wtype, mask, &src, (float)alpha, (int64_t)n, Ix, Bt, (int64_t)cnt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

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
     "y (N, out) = x @ W'^T (+ bias), W' = W + scale*(B@A)*mask rebuilt tile by tile (scale 0: W' = W "
     "exactly on every path, docs/numerics.md)."},
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
    {"remat_su_need", (PyCFunction)(void (*)(void))py_remat_su_need, METH_VARARGS | METH_KEYWORDS,
     "remat_su_need(memory, pred_ptr, pred_idx, order) -> ndarray\n\nFrom-scratch memory need of every node "
     "when DTR \"su\" rebuilds it (inputs in Sethi-Ullman order, each held once back); a \"su\" run fits "
     "every budget >= its maximum when no node is once. order: a topological order."},
    {"remat_plan_stages", (PyCFunction)(void (*)(void))py_remat_plan_stages, METH_VARARGS | METH_KEYWORDS,
     "remat_plan_stages(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, seg_end, budget, "
     "mem_exp, dist_exp) -> (status, steps | None, peak, duration)\n\nOne stage-based eviction heuristic."},
    {"remat_greedy", (PyCFunction)(void (*)(void))py_remat_greedy, METH_VARARGS | METH_KEYWORDS,
     "remat_greedy(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, budget) -> (status, "
     "steps | None, peak, duration)\n\nBest of several eviction heuristics under a memory budget."},
    /* sparse */
    {"sparse_forward", (PyCFunction)(void (*)(void))py_sparse_forward, METH_VARARGS | METH_KEYWORDS,
     "sparse_forward(base, x, A, B, scale, naive=False, trusted=False) -> ndarray\n\ny (N, out) = x @ W'^T "
     "with W' = W + "
     "scale*(B A) at the stored positions of base = (kind, out, in, n, m, values, indices, rowptr)."},
    {"sparse_backward", (PyCFunction)(void (*)(void))py_sparse_backward, METH_VARARGS | METH_KEYWORDS,
     "sparse_backward(base, gy, x, A, B, scale, input_grad=True, weight_grad=True, naive=False, "
     "trusted=False) "
     "-> (gx, dA, "
     "dB)"
     "\n\ngx = gy @ W' and the exact masked adapter gradients (None where not requested), one fused pass."},
    {"sparse_merge", (PyCFunction)(void (*)(void))py_sparse_merge, METH_VARARGS | METH_KEYWORDS,
     "sparse_merge(base, A, B, scale, trusted=False) -> ndarray\n\nThe stored values of W' = W + scale*(B A) "
     "(same "
     "layout)."},
    {"sparse_plan", (PyCFunction)(void (*)(void))py_sparse_plan, METH_VARARGS | METH_KEYWORDS,
     "sparse_plan(base, N, /, *, trusted=False) -> (fwd_tokens, fwd_slab, bwd_tokens, bwd_slab)\n\nThe "
     "sparse kernels' blocking "
     "for N tokens at the current thread count: token block and column slab of the forward and the "
     "backward."},
    /* sparse: checked once */
    {"sparse_check", py_sparse_check, METH_VARARGS,
     "sparse_check(base) -> None\n\nThe full O(nnz) check of a base (row pointers, indices, finite values) "
     "that the sparse functions skip when called with trusted=True; ValueError naming what is wrong."},
    /* rws */
    {"rws_extract", (PyCFunction)(void (*)(void))py_rws_extract, METH_VARARGS | METH_KEYWORDS,
     "rws_extract(pre, clean, robust, naive=False) -> (sig, d.r, d.d)\n\nsig = r - (d.r / d.d) d with r = "
     "robust - "
     "pre, d = clean - pre (float32 arrays of one size), sums in double."},
    {"rws_quantize", py_rws_quantize, METH_VARARGS,
     "rws_quantize(x, group, bits, scheme) -> (codes, params, (sum_sq_err, max_abs_err, sum_sq_x))\n\nPacked "
     "codes (uint8, ceil(n*bits/8)), per-group parameters (float32 (ceil(n/group), 2); scheme 0 linear, 1 "
     "log) "
     "and the error of the levels chosen (double)."},
    {"rws_dequantize", py_rws_dequantize, METH_VARARGS,
     "rws_dequantize(codes, params, n, group, bits, scheme) -> ndarray\n\nThe n float32 values of packed "
     "codes."},
    {"rws_patch", (PyCFunction)(void (*)(void))py_rws_patch, METH_VARARGS | METH_KEYWORDS,
     "rws_patch(w, source, alpha, mask=None) -> (index, bits, nonfinite)\n\nw += alpha * source in place "
     "(fmaf; w float32, float16 or uint16 bfloat16 bits; source float32 or (codes, params, group, bits, "
     "scheme)) "
     "where mask is set; returns the undo record and the count of non-finite results."},
    {"rws_unpatch", (PyCFunction)(void (*)(void))py_rws_unpatch, METH_VARARGS | METH_KEYWORDS,
     "rws_unpatch(w, source, alpha, index, bits, mask=None) -> None\n\nUndo rws_patch bit for bit with its "
     "record (the same w, source, alpha and mask)."},
    /* nn ops */
    {"layernorm_forward", py_layernorm_forward, METH_VARARGS,
     "layernorm_forward(x, w, b, eps=1e-5) -> (y, mean, rstd)\n\nLayerNorm of the rows of x (N, C)."},
    {"layernorm_backward", py_layernorm_backward, METH_VARARGS,
     "layernorm_backward(dy, x, w, mean, rstd) -> (dx, dw, db)\n\ndw, db summed over the rows."},
    {"rmsnorm_forward", py_rmsnorm_forward, METH_VARARGS,
     "rmsnorm_forward(x, w, eps=1e-6) -> (y, rstd)\n\nRMSNorm of the rows of x (N, C)."},
    {"rmsnorm_backward", py_rmsnorm_backward, METH_VARARGS,
     "rmsnorm_backward(dy, x, w, rstd) -> (dx, dw)\n\ndw summed over the rows."},
    {"gelu_forward", py_gelu_forward, METH_VARARGS, "gelu_forward(x) -> y\n\nGELU, tanh approximation."},
    {"gelu_backward", py_gelu_backward, METH_VARARGS, "gelu_backward(dy, x) -> dx"},
    {"swiglu_forward", py_swiglu_forward, METH_VARARGS, "swiglu_forward(gate, up) -> silu(gate) * up"},
    {"swiglu_backward", py_swiglu_backward, METH_VARARGS, "swiglu_backward(dy, gate, up) -> (dgate, dup)"},
    {"rope", (PyCFunction)(void (*)(void))py_rope, METH_VARARGS | METH_KEYWORDS,
     "rope(x, theta=10000.0, offset=0, inverse=False, inv_freq=None) -> y\n\nRotary embedding of x "
     "(B, T, H, D), Hugging Face rotate_half convention; inverse: the backward; inv_freq: (D/2,) "
     "frequencies replacing theta's."},
    {"embedding_forward", py_embedding_forward, METH_VARARGS,
     "embedding_forward(ids, wte) -> x\n\nRows of wte (V, C) gathered by int64 ids (B, T): (B, T, C)."},
    {"embedding_backward", py_embedding_backward, METH_VARARGS,
     "embedding_backward(dx, ids, V) -> dwte\n\nDense (V, C) gradient, rows of dx summed per id."},
    {"softmax_xent_forward", py_softmax_xent_forward, METH_VARARGS,
     "softmax_xent_forward(logits, targets) -> (loss, lse)\n\nMean softmax cross-entropy of logits (N, K)."},
    {"softmax_xent_backward", py_softmax_xent_backward, METH_VARARGS,
     "softmax_xent_backward(logits, targets, lse, dloss=1.0) -> dlogits"},
    {"lm_head_xent_forward", (PyCFunction)(void (*)(void))py_lm_head_xent_forward,
     METH_VARARGS | METH_KEYWORDS,
     "lm_head_xent_forward(x, w, targets, chunk=0, grad=False, need_dw=False) -> (loss, lse) | (loss, lse, "
     "dx, "
     "dw)\n\nMean cross-entropy of x w^T, logits built chunk rows at a time (0: automatic); grad: also the "
     "gradients for dloss = 1 in the same pass."},
    {"lm_head_xent_backward", (PyCFunction)(void (*)(void))py_lm_head_xent_backward,
     METH_VARARGS | METH_KEYWORDS,
     "lm_head_xent_backward(x, w, targets, lse, dloss=1.0, need_dw=False, chunk=0) -> (dx, dw | None)\n\n"
     "Gradients of the fused head, the logits recomputed chunk by chunk."},
    {"lm_head_xent_backward_into", (PyCFunction)(void (*)(void))py_lm_head_xent_backward_into,
     METH_VARARGS | METH_KEYWORDS,
     "lm_head_xent_backward_into(dw, x, w, targets, lse, dloss=1.0, chunk=0) -> dx\n\nAs "
     "lm_head_xent_backward "
     "with the head's gradient ACCUMULATED into dw (V, C) in place."},
    {"adamw_step", py_adamw_step, METH_VARARGS,
     "adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None\n\nOne AdamW step in "
     "place on param, m, v (torch.optim.AdamW semantics)."},
    {"attention_forward", (PyCFunction)(void (*)(void))py_attention_forward, METH_VARARGS | METH_KEYWORDS,
     "attention_forward(q, k, v, causal, scale, layout='bhtd', out=None) -> (o, lse)\n\nFlash-style "
     "attention, grouped-query when k, "
     "v "
     "have fewer heads."},
    {"attention_backward", (PyCFunction)(void (*)(void))py_attention_backward, METH_VARARGS | METH_KEYWORDS,
     "attention_backward(do, q, k, v, o, lse, causal, scale, layout='bhtd', dq=None, dk=None, dv=None) -> "
     "(dq, dk, dv)\n\nProbabilities recomputed "
     "tile "
     "by tile from lse."},
    /* planner: DTR */
    {"remat_dtr", (PyCFunction)(void (*)(void))py_remat_dtr, METH_VARARGS | METH_KEYWORDS,
     "remat_dtr(memory, duration, pred_ptr, pred_idx, succ_ptr, succ_idx, order, once, budget, "
     "heuristic='full', lookahead=False) -> (status, steps | None, peak, duration)\n\nDynamic Tensor "
     "Rematerialization over order: evict the resident output with the lowest cost / (memory * staleness) "
     "(or * distance to next use with lookahead); heuristic 'full' (exact evicted neighbourhood) or 'eq' "
     "(union-find classes), or 'belady' (evict the highest memory * next-use distance / cost). once: None or "
     "(n,) bool, nodes never recomputed."},
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
