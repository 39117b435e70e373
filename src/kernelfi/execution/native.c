/* kernelfi's one-pass propagation figures and cone gathers (execution/native.py builds this file
   with the machine's compiler: -O3 -march=native -ffp-contract=off -fno-fast-math -fopenmp).

   Every float operation is the torch path's, one IEEE float32 operation at a time, so the
   figures equal it bit for bit; the AVX-512 versions of kf_gather and kf_diff_window do the
   same operations per element (masked-off lanes load nothing and count nothing); the
   generic loops below them serve where AVX-512 is missing (or with -DKF_GENERIC: the tests
   build both). */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>


static inline uint32_t bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float unbits(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* Work item w < items is segment w % nseg (of seg elements) of row ai[r] of a against row
   gi[r] of g, r = w / nseg: the count of |a-g| > 0 and the largest |a-g| and
   |a-g|/max(|g|, floor) as bit patterns, per item (the caller reduces a row's segments); the
   count is -1 when g itself is not finite. */
void kf_diff_rows(const float *a, const int64_t *ai, int64_t sa, const float *g, const int64_t *gi, int64_t sg,
                  int64_t nrows, int64_t n, int64_t seg, float floor_, int64_t *count, uint32_t *max_abs,
                  uint32_t *max_rel, int threads) {
    const int64_t nseg = (n + seg - 1) / seg, items = nrows * nseg;
    #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
    for (int64_t w = 0; w < items; w++) {
        const int64_t r = w / nseg, i0 = (w % nseg) * seg, i1 = i0 + seg < n ? i0 + seg : n;
        const float *x = a + ai[r] * sa, *y = g + gi[r] * sg;
        int64_t c = 0; uint32_t ma = 0, mr = 0, mg = 0;
        for (int64_t i = i0; i < i1; i++) {
            float d = x[i] - y[i];
            uint32_t db = bits(d) & 0x7fffffffu;          /* |d|: NaN and inf sort above every finite */
            uint32_t gb = bits(y[i]) & 0x7fffffffu;
            float ag = unbits(gb);                        /* |g| */
            float den = ag > floor_ ? ag : floor_;
            uint32_t qb = bits(d / den) & 0x7fffffffu;    /* |d / den| = |d| / den, rounded once */
            c += db != 0;
            ma = db > ma ? db : ma;
            mr = qb > mr ? qb : mr;
            mg = gb > mg ? gb : mg;
        }
        count[w] = mg >= 0x7f800000u ? -1 : c;  /* -1: a golden NaN or inf, not for this path */
        max_abs[w] = ma; max_rel[w] = mr;
    }
}

/* A lane's window: geo[6*l..] = golden plane (C, H, W) pointer, top-left corner (oy, ox), size
   (h, w) and the offset of its channel 0 in the lane data; channel c of the window is the h*w
   block at offset + c*sc. (Lanes of an (nl, C, h, w) tensor: offset l*C*h*w, sc = h*w; lanes
   side by side as the columns of a (C, P) matrix: offset = the lane's first column, sc = P.) */
#define GEO_PLANE(l) ((const float *)geo[6 * (l)])
#define GEO_OY(l) geo[6 * (l) + 1]
#define GEO_OX(l) geo[6 * (l) + 2]
#define GEO_H(l) geo[6 * (l) + 3]
#define GEO_W(l) geo[6 * (l) + 4]
#define GEO_OFF(l) geo[6 * (l) + 5]


/* The cone reads windows of golden planes: rows of a few floats, one channel's rows H*W apart,
   so every row is a cache miss the hardware prefetchers do not foresee. The rows of the
   channel AHEAD channels on are requested early. (With the AVX-512 loops, call for call on
   the ResNet-50 bench: gathers 10% and window figures 18% faster than plain C loops.) */
#define AHEAD 4
static inline void prefetch_row(const float *p, int64_t n) {
    __builtin_prefetch(p);
    __builtin_prefetch(p + n - 1);
}

/* Patch of lane l (when patches[l] is not 0): pbox[PBOX*l..] = y0, y1, x0, x1 in plane
   coordinates, then its channel and row strides in elements (a view of a window: unit
   element stride). */
#define PBOX 6

/* kf_gather: lane l < nl, its window of its plane (fill outside the plane), then its patch
   pasted over it, into out at the lane's offset, channel stride sc.
   kf_diff_window: lanes l < nl of a against their golden windows (inside the plane):
   kf_diff_rows' figures per lane and the smallest window (y0, y1, x0, x1, half-open, in
   window coordinates) holding every element that differs, all channels together; y1 = 0 when
   none does. count is -1 when the golden window is not finite. */

#if defined(__AVX512F__) && !defined(KF_GENERIC)
#include <immintrin.h>

/* Bits [a, b) of a 16-lane mask (a, b clamped to 0..16). */
static inline __mmask16 span16(int64_t a, int64_t b) {
    if (a < 0) a = 0;
    if (b > 16) b = 16;
    if (a >= b) return 0;
    return (__mmask16)((((uint32_t)1 << (b - a)) - 1) << a);
}

/* Row of a window: fill, then the plane's columns [xa, xb) from src (column i at src[i]), then
   the patch's columns [ja, jb) from psrc; src or psrc 0: none. */
static inline void gather_row(float *row, int64_t w, float fill, const float *src, int64_t xa, int64_t xb,
                              const float *psrc, int64_t ja, int64_t jb) {
    const __m512 vf = _mm512_set1_ps(fill);
    for (int64_t i0 = 0; i0 < w; i0 += 16) {  /* masked loads never touch the columns outside */
        const __mmask16 all = span16(0, w - i0), pm = psrc ? span16(ja - i0, jb - i0) : 0;
        __m512 v = vf;
        if (src && (pm & all) != all) {  /* the plane where the patch does not cover the row */
            const __mmask16 m = span16(xa - i0, xb - i0) & ~pm;
            if (m) v = _mm512_mask_loadu_ps(v, m, src + i0);
        }
        if (pm) v = _mm512_mask_loadu_ps(v, pm, psrc + i0);
        _mm512_mask_storeu_ps(row + i0, all, v);
    }
}

void kf_diff_window(const float *a, const int64_t *geo, int64_t nl, int64_t C, int64_t H, int64_t W, int64_t sc,
                    float floor_, int64_t *count, uint32_t *max_abs, uint32_t *max_rel, int64_t *box, int threads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if(threads > 1)
    for (int64_t l = 0; l < nl; l++) {
        const int64_t h = GEO_H(l), w = GEO_W(l), nch = (w + 15) / 16;
        uint16_t *cols = (uint16_t *)calloc((size_t)nch, sizeof(uint16_t));  /* columns holding a difference */
        const float *xl = a + GEO_OFF(l), *gl = GEO_PLANE(l) + GEO_OY(l) * W + GEO_OX(l);
        const __m512i absm = _mm512_set1_epi32(0x7fffffff), zero = _mm512_setzero_si512();
        const __m512 vfloor = _mm512_set1_ps(floor_);
        __m512i ma = zero, mr = zero, mg = zero;
        int64_t c = 0, ry0 = h, ry1 = -1;
        for (int64_t ch = 0; ch < C; ch++) {
            if (ch + AHEAD < C)
                for (int64_t r = 0; r < h; r++)
                    prefetch_row(gl + (ch + AHEAD) * H * W + r * W, w);
            for (int64_t r = 0; r < h; r++) {
                const float *x = xl + ch * sc + r * w, *y = gl + ch * H * W + r * W;
                __mmask16 any = 0;
                for (int64_t k = 0; k < nch; k++) {
                    const __mmask16 m = span16(0, w - 16 * k);
                    const __m512 xv = _mm512_maskz_loadu_ps(m, x + 16 * k), yv = _mm512_maskz_loadu_ps(m, y + 16 * k);
                    const __m512 d = _mm512_sub_ps(xv, yv);
                    const __m512i db = _mm512_and_si512(_mm512_castps_si512(d), absm);
                    const __m512i gb = _mm512_and_si512(_mm512_castps_si512(yv), absm);
                    const __m512 den = _mm512_max_ps(_mm512_castsi512_ps(gb), vfloor);  /* |g| > floor ? |g| : floor */
                    const __m512i qb = _mm512_and_si512(_mm512_castps_si512(_mm512_div_ps(d, den)), absm);
                    const __mmask16 hit = _mm512_cmpneq_epi32_mask(db, zero);
                    c += __builtin_popcount((unsigned)hit);
                    cols[k] |= hit;
                    any |= hit;
                    ma = _mm512_max_epu32(ma, db);
                    mr = _mm512_max_epu32(mr, qb);
                    mg = _mm512_max_epu32(mg, gb);
                }
                if (any) {
                    if (r < ry0) ry0 = r;
                    if (r > ry1) ry1 = r;
                }
            }
        }
        int64_t x0 = w, x1 = -1;
        for (int64_t k = 0; k < nch; k++)
            if (cols[k]) {
                const int64_t lo = 16 * k + __builtin_ctz((unsigned)cols[k]);
                const int64_t hi = 16 * k + 31 - __builtin_clz((unsigned)cols[k]);
                if (lo < x0) x0 = lo;
                if (hi > x1) x1 = hi;
            }
        free(cols);
        const uint32_t g = _mm512_reduce_max_epu32(mg);
        count[l] = g >= 0x7f800000u ? -1 : c;
        max_abs[l] = _mm512_reduce_max_epu32(ma); max_rel[l] = _mm512_reduce_max_epu32(mr);
        box[4 * l] = c ? ry0 : 0; box[4 * l + 1] = c ? ry1 + 1 : 0;
        box[4 * l + 2] = c ? x0 : 0; box[4 * l + 3] = c ? x1 + 1 : 0;
    }
}

#else  /* generic: the compiler vectorizes the inner loops */

void kf_diff_window(const float *a, const int64_t *geo, int64_t nl, int64_t C, int64_t H, int64_t W, int64_t sc,
                    float floor_, int64_t *count, uint32_t *max_abs, uint32_t *max_rel, int64_t *box, int threads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if(threads > 1)
    for (int64_t l = 0; l < nl; l++) {
        const int64_t h = GEO_H(l), w = GEO_W(l), hw = h * w;
        unsigned char *hit = (unsigned char *)calloc((size_t)hw, 1);
        float *gw = (float *)malloc((size_t)hw * sizeof(float));  /* one channel's golden window */
        const float *xl = a + GEO_OFF(l), *gl = GEO_PLANE(l) + GEO_OY(l) * W + GEO_OX(l);
        int64_t c = 0;
        uint32_t ma = 0, mr = 0, mg = 0;
        for (int64_t ch = 0; ch < C; ch++) {
            for (int64_t r = 0; r < h; r++)  /* rows of the plane into one run: the pass below vectorizes */
                memcpy(gw + r * w, gl + ch * H * W + r * W, (size_t)w * sizeof(float));
            const float *restrict x = xl + ch * sc;
            const float *restrict y = gw;
            unsigned char *restrict hr = hit;
            for (int64_t i = 0; i < hw; i++) {
                float d = x[i] - y[i];
                uint32_t db = bits(d) & 0x7fffffffu;
                uint32_t gb = bits(y[i]) & 0x7fffffffu;
                float ag = unbits(gb);
                float den = ag > floor_ ? ag : floor_;
                uint32_t qb = bits(d / den) & 0x7fffffffu;
                c += db != 0;
                hr[i] |= db != 0;
                ma = db > ma ? db : ma;
                mr = qb > mr ? qb : mr;
                mg = gb > mg ? gb : mg;
            }
        }
        free(gw);
        int64_t y0 = h, y1 = -1, x0 = w, x1 = -1;
        if (c)
            for (int64_t r = 0; r < h; r++)
                for (int64_t i = 0; i < w; i++)
                    if (hit[r * w + i]) {
                        if (r < y0) y0 = r;
                        y1 = r;
                        if (i < x0) x0 = i;
                        if (i > x1) x1 = i;
                    }
        free(hit);
        count[l] = mg >= 0x7f800000u ? -1 : c;
        max_abs[l] = ma; max_rel[l] = mr;
        box[4 * l] = c ? y0 : 0; box[4 * l + 1] = c ? y1 + 1 : 0;
        box[4 * l + 2] = c ? x0 : 0; box[4 * l + 3] = c ? x1 + 1 : 0;
    }
}

static inline void gather_row(float *row, int64_t w, float fill, const float *src, int64_t xa, int64_t xb,
                              const float *psrc, int64_t ja, int64_t jb) {
    if (psrc && ja == 0 && jb == w) {  /* the patch covers the row */
        memcpy(row, psrc, (size_t)w * sizeof(float));
        return;
    }
    if (!src) {
        for (int64_t i = 0; i < w; i++) row[i] = fill;
    } else {
        for (int64_t i = 0; i < xa; i++) row[i] = fill;
        memcpy(row + xa, src + xa, (size_t)(xb - xa) * sizeof(float));
        for (int64_t i = xb; i < w; i++) row[i] = fill;
    }
    if (psrc)
        memcpy(row + ja, psrc + ja, (size_t)(jb - ja) * sizeof(float));
}
#endif

void kf_gather(const int64_t *geo, int64_t nl, int64_t C, int64_t H, int64_t W, int64_t sc, float fill,
               const int64_t *patches, const int64_t *pbox, float *out, int threads) {
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if(threads > 1)
    for (int64_t l = 0; l < nl; l++)
        for (int64_t c = 0; c < C; c++) {
            const int64_t h = GEO_H(l), w = GEO_W(l);
            const float *pl = GEO_PLANE(l) + c * H * W;
            float *o = out + GEO_OFF(l) + c * sc;
            const int64_t y0 = GEO_OY(l), x0 = GEO_OX(l);
            const int64_t xa = x0 < 0 ? -x0 : 0, xb = W - x0 < w ? W - x0 : w;  /* columns inside */
            const int64_t *pb = pbox + PBOX * l;
            const int64_t py0 = patches[l] ? pb[0] : 0, py1 = patches[l] ? pb[1] : 0;
            const int64_t px0 = pb[2], px1 = pb[3], prow = pb[5];
            const int64_t jx0 = px0 > x0 ? px0 : x0, jx1 = px1 < x0 + w ? px1 : x0 + w;
            const float *pp = patches[l] ? (const float *)patches[l] + c * pb[4] : 0;
            if (c + AHEAD < C && xa < xb)
                for (int64_t yy = 0; yy < h; yy++) {  /* the plane rows the patch does not cover */
                    const int64_t y = y0 + yy;
                    if (y >= 0 && y < H && !(pp && y >= py0 && y < py1 && jx0 - x0 <= xa && jx1 - x0 >= xb))
                        prefetch_row(pl + AHEAD * H * W + y * W + x0 + xa, xb - xa);
                }
            for (int64_t yy = 0; yy < h; yy++) {
                const int64_t y = y0 + yy;
                const float *src = y >= 0 && y < H && xa < xb ? pl + y * W + x0 : 0;  /* column i of the window */
                const float *psrc = pp && y >= py0 && y < py1 && jx0 < jx1 ? pp + (y - py0) * prow + (x0 - px0) : 0;
                gather_row(o + yy * w, w, fill, src, xa, xb, psrc, jx0 - x0, jx1 - x0);
            }
        }
}
