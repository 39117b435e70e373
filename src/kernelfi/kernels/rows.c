/* kernelfi: a few rows times a shared weight matrix, in MKL SGEMM's own order of operations.
 *
 * y[b][n] = sum over k of x[b][k] * w[n][k], as oneMKL's SGEMM of a padded batch computes each
 * element (kernels/rows.py checks it against that call once per shape and uses this only where
 * every value agrees): K is cut into blocks of `kc` (the last one shorter), each block summed as
 * one chain of fused multiply-adds from zero in increasing k, and the block sums added in
 * order to the running total. One row costs one read of w (a GEMV's cost) instead of the
 * padded GEMM's sixteen rows. Built with -ffp-contract=off: only the explicit fmaf fuses.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && !defined(KF_GENERIC)
#define KF_AVX512
#include <immintrin.h>

/* c[t] = column t of the 16x16 block at `a` (rows `ld` apart), columns past the mask zero */
static inline void transpose16(const float *a, int64_t ld, __mmask16 m, __m512 *c) {
    __m512 r[16], u[16], v[16];
    for (int j = 0; j < 16; j++) r[j] = _mm512_maskz_loadu_ps(m, a + j * ld);
    for (int i = 0; i < 8; i++) {
        u[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        u[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {  /* v[4i+q], 128-bit lane L: rows 4i..4i+3 of column 4L+q */
        v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[4 * i]), _mm512_castps_pd(u[4 * i + 2])));
        v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[4 * i]), _mm512_castps_pd(u[4 * i + 2])));
        v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[4 * i + 1]), _mm512_castps_pd(u[4 * i + 3])));
        v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[4 * i + 1]), _mm512_castps_pd(u[4 * i + 3])));
    }
    for (int q = 0; q < 4; q++) {
        __m512 lo = _mm512_shuffle_f32x4(v[q], v[4 + q], 0x44), hi = _mm512_shuffle_f32x4(v[q], v[4 + q], 0xEE);
        __m512 lo2 = _mm512_shuffle_f32x4(v[8 + q], v[12 + q], 0x44), hi2 = _mm512_shuffle_f32x4(v[8 + q], v[12 + q], 0xEE);
        c[q] = _mm512_shuffle_f32x4(lo, lo2, 0x88);
        c[4 + q] = _mm512_shuffle_f32x4(lo, lo2, 0xDD);
        c[8 + q] = _mm512_shuffle_f32x4(hi, hi2, 0x88);
        c[12 + q] = _mm512_shuffle_f32x4(hi, hi2, 0xDD);
    }
}
#endif

#define KF_TILE 16  /* rows of w summed side by side (independent chains) */
#define KF_MAXB 8   /* rows of x a call takes */

static void tile(const float *x, int64_t b_rows, const float *w, int64_t n0, int64_t nt, int64_t n_all,
                 int64_t k_all, int64_t kc, float *y) {
    float total[KF_MAXB][KF_TILE];
    for (int64_t k0 = 0; k0 < k_all; k0 += kc) {
        int64_t k1 = k0 + kc < k_all ? k0 + kc : k_all;
        for (int64_t b = 0; b < b_rows; b++) {
            const float *xb = x + b * k_all;
            float acc[KF_TILE];
            memset(acc, 0, sizeof acc);
            if (nt == KF_TILE) {
#ifdef KF_AVX512
                /* the same chains, 16 rows in one vector: a 16x16 block of w transposed in
                 * registers, then one vector FMA per k (lane j = row n0 + j) */
                __m512 vacc = _mm512_setzero_ps();
                for (int64_t k = k0; k < k1; k += 16) {
                    int64_t left = k1 - k < 16 ? k1 - k : 16;
                    __mmask16 m = (__mmask16)((1u << left) - 1u);
                    __m512 c[16];
                    transpose16(w + n0 * k_all + k, k_all, m, c);
                    for (int64_t t = 0; t < left; t++) vacc = _mm512_fmadd_ps(_mm512_set1_ps(xb[k + t]), c[t], vacc);
                }
                _mm512_storeu_ps(acc, vacc);
#else
                const float *r[KF_TILE];
                for (int j = 0; j < KF_TILE; j++) r[j] = w + (n0 + j) * k_all;
                for (int64_t k = k0; k < k1; k++) {
                    float xk = xb[k];
                    for (int j = 0; j < KF_TILE; j++) acc[j] = fmaf(xk, r[j][k], acc[j]);
                }
#endif
            } else {
                for (int64_t j = 0; j < nt; j++) {
                    const float *r = w + (n0 + j) * k_all;
                    float a = 0.0f;
                    for (int64_t k = k0; k < k1; k++) a = fmaf(xb[k], r[k], a);
                    acc[j] = a;
                }
            }
            for (int64_t j = 0; j < nt; j++) total[b][j] = k0 == 0 ? acc[j] : total[b][j] + acc[j];
        }
    }
    for (int64_t b = 0; b < b_rows; b++)
        for (int64_t j = 0; j < nt; j++) y[b * n_all + n0 + j] = total[b][j];
}

/* x (b_rows, k_all), w (n_all, k_all), y (b_rows, n_all), all contiguous float32. */
void kf_rows_linear(const float *x, int64_t b_rows, const float *w, int64_t n_all, int64_t k_all, int64_t kc,
                    float *y, int threads) {
    int64_t tiles = (n_all + KF_TILE - 1) / KF_TILE;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t n0 = t * KF_TILE;
        int64_t nt = n_all - n0 < KF_TILE ? n_all - n0 : KF_TILE;
        tile(x, b_rows, w, n0, nt, n_all, k_all, kc, y);
    }
}
