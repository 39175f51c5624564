/*
 * Compiled Jansen-Rit integrator (no gradients), used by jrinfer._native.
 *
 * Reproduces jrinfer._integrate.simulate_flat: same schemes, same noise
 * (the counter-based generator of jrinfer._rng, computed here per lane), same
 * recording convention. See those modules' docstrings for the definitions.
 *
 * Layout: nodes are processed in lanes of width W (a compile-time constant,
 * one or two SIMD vectors), so every node, whatever its index or the batch
 * size, goes through exactly the same vector code: results do not depend on
 * N, on the tiling or on the number of threads. A tile (a few lanes) runs
 * all of its steps with its state in a small local buffer; tiles are handed
 * to worker threads (pthreads) through an atomic counter, so there is no
 * synchronisation between steps.
 *
 * Elementary functions (exp, log, cos 2 pi x) are implemented inline below
 * (about 1 ulp), so the loops vectorise with any C compiler and SIMD level
 * without a vector math library, and results do not depend on the libm
 * present. They rely on IEEE arithmetic: build with -O3 -fno-math-errno
 * -fno-trapping-math -ffp-contract=fast, never with -ffast-math. Sigmoid
 * arguments are clamped at 700 so that no infinities occur.
 *
 * Interface (called through ctypes by jrinfer/_native.py): jr_simulate().
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef W
#define W 8 /* lane width: nodes per vector loop */
#endif
#define ALIGN 64
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define TWO_PI 6.283185307179586
#define SQRT3 1.7320508075688772

/* Rows of the parameter matrix (n_par x N, row-major) passed from Python. */
enum {
    P_AA, /* A a */
    P_BB, /* B b */
    P_A,
    P_B,
    P_C1,
    P_C2,
    P_C3,
    P_C4,
    P_E0,
    P_V0,
    P_R,
    P_PM, /* p_mean */
    P_S0, /* noise scale, channel 0 (0 when the channel is off) */
    P_S1,
    P_S2,
    P_PQ, /* pulse q, w, n, onset (unused without pulse) */
    P_PW,
    P_PN,
    P_PO,
    NPAR
};

enum { M_EULER = 0, M_HEUN = 1, M_RK4 = 2 };

typedef struct {
    int64_t n_nodes, n_transient, n_steps, record_every, n_rec;
    int64_t i_begin, i_end; /* global step range run by this call */
    double dt;
    uint64_t seed_mix; /* mix64(seed) */
    int method, white, uniform, has_pulse, ch_mask;
    int lanes_per_tile;
    int64_t n_tiles;
    const double *par; /* NPAR x n_nodes */
    const double *y_init; /* n_nodes x 6 */
    double *v_out; /* n_nodes x n_rec */
    double *y_out; /* n_nodes x 6 */
    const int64_t *noise_node; /* n_nodes: whose noise stream each node uses (NULL: its own) */
    int64_t next_tile; /* atomic work counter */
    int failed;
} Job;

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#define ATTR_INLINE static inline __attribute__((always_inline))

/* Integer -> double conversions written with bit operations only, so that
 * they vectorise on every SIMD level (AVX2 has no 64-bit integer converts). */
static inline double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

/* x < 2^52, exactly. */
static inline double small_to_double(uint64_t x)
{
    return bits_to_double(x | 0x4330000000000000ULL) - 0x1p52;
}

/* (x + 0.5) / 2^32 for x < 2^32, exactly: 1 + x / 2^32 is built in the
 * mantissa, and the subtraction of 1 - 2^-33 is exact (Sterbenz). */
static inline double unit_from_u32(uint64_t x)
{
    return bits_to_double((x << 20) | 0x3FF0000000000000ULL) - (1.0 - 0x1p-33);
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

/*
 * Elementary functions, inline so that the simd loops vectorise without a
 * vector math library (and give the same results whatever libm is present).
 * Accurate to about 1 ulp on the ranges used here. They rely on IEEE
 * semantics (round-to-nearest tricks with 1.5 * 2^52): never compile this
 * file with -ffast-math / -fassociative-math.
 */
#define ROUND_MAGIC 0x1.8p52 /* (x + M) - M rounds x to an integer for |x| < 2^51 */
#define LN2_HI 6.93147180369123816490e-01 /* 32 significant bits: n * LN2_HI is exact */
#define LN2_LO 1.90821492927058770002e-10
#define LOG2E 1.4426950408889634

/* exp(x); returns 0 below -708 (true value < 3.3e-308) and +inf above 709. */
static inline double jr_exp(double x)
{
    double xc = x < -708.0 ? -708.0 : x;
    xc = xc > 709.0 ? 709.0 : xc;
    double t = xc * LOG2E + ROUND_MAGIC;
    double n = t - ROUND_MAGIC; /* round(x / ln 2), |n| <= 1023 */
    double r = (xc - n * LN2_HI) - n * LN2_LO; /* |r| <= ln2 / 2 */
    /* Taylor series to r^13 (truncation < 5e-18 relative) */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^n: the low bits of t hold n (two's complement); move n + 1023 into the exponent */
    double scale = bits_to_double((double_to_bits(t) + 1023) << 52);
    double y = p * scale;
    y = x < -708.0 ? 0.0 : y;
    return x > 709.0 ? INFINITY : y;
}

/* Natural log for x > 0 (normal or subnormal). */
static inline double jr_log(double x)
{
    int sub = x < 0x1p-1022;
    double xs = sub ? x * 0x1p54 : x;
    uint64_t b = double_to_bits(xs);
    double e = small_to_double(b >> 52) - (sub ? 1023.0 + 54.0 : 1023.0);
    double m = bits_to_double((b & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL); /* [1, 2) */
    int big = m > 1.4142135623730951;
    m = big ? 0.5 * m : m; /* [sqrt(1/2), sqrt(2)] */
    e = big ? e + 1.0 : e;
    /* log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716 */
    double s = (m - 1.0) / (m + 1.0);
    double s2 = s * s;
    double q = 2.0 / 21.0;
    q = q * s2 + 2.0 / 19.0;
    q = q * s2 + 2.0 / 17.0;
    q = q * s2 + 2.0 / 15.0;
    q = q * s2 + 2.0 / 13.0;
    q = q * s2 + 2.0 / 11.0;
    q = q * s2 + 2.0 / 9.0;
    q = q * s2 + 2.0 / 7.0;
    q = q * s2 + 2.0 / 5.0;
    q = q * s2 + 2.0 / 3.0;
    /* log(m) = 2 s + s^3 q */
    double lm = 2.0 * s + s * (s2 * q);
    return e * LN2_HI + (lm + e * LN2_LO);
}

/* cos(2 pi u) for |u| < 2^50, reduced in turns (exactly) then by quadrant. */
static inline double jr_cos2pi(double u)
{
    double w = u - ((u + ROUND_MAGIC) - ROUND_MAGIC); /* [-1/2, 1/2] */
    double k = (4.0 * w + ROUND_MAGIC) - ROUND_MAGIC; /* quadrant, -2..2 */
    double th = TWO_PI * (w - 0.25 * k); /* [-pi/4, pi/4] */
    double t2 = th * th;
    double c = 1.0 / 20922789888000.0; /* 1/16! */
    c = c * t2 - 1.0 / 87178291200.0;
    c = c * t2 + 1.0 / 479001600.0;
    c = c * t2 - 1.0 / 3628800.0;
    c = c * t2 + 1.0 / 40320.0;
    c = c * t2 - 1.0 / 720.0;
    c = c * t2 + 1.0 / 24.0;
    c = c * t2 - 0.5;
    c = c * t2 + 1.0;
    double s = 1.0 / 1307674368000.0; /* 1/15! */
    s = s * t2 - 1.0 / 6227020800.0;
    s = s * t2 + 1.0 / 39916800.0;
    s = s * t2 - 1.0 / 362880.0;
    s = s * t2 + 1.0 / 5040.0;
    s = s * t2 - 1.0 / 120.0;
    s = s * t2 + 1.0 / 6.0;
    s = th - th * (t2 * s);
    /* cos(th + k pi/2) */
    double res = k == 1.0 ? -s : (k == -1.0 ? s : -c);
    return k == 0.0 ? c : res;
}

ATTR_INLINE double sigm(double x, double e0, double v0, double r)
{
    double z = r * (v0 - x);
    z = z < 700.0 ? z : 700.0;
    return 2.0 * e0 / (1.0 + jr_exp(z));
}

/* Pulse input q ((t - onset)/w)^n exp(-(t - onset)/w) for t > onset. */
ATTR_INLINE double pulse_at(double t, double q, double w, double n, double onset)
{
    double x = (t - onset) / w;
    int pos = x > 0.0;
    double xs = pos ? x : 1.0;
    double val = q * jr_exp(n * jr_log(xs) - xs);
    return pos ? val : 0.0;
}

/* Drift of the JR equations on scalars (all arguments are plain doubles so
 * that the enclosing simd loop vectorises). Writes k0..k5 (prefix K). */
#define DRIFT(K, y0, y1, y2, y3, y4, y5, u0, u1, u2)                                                       \
    const double K##sv = sigm((y1) - (y2), e0, v0, r);                                                      \
    const double K##se = sigm(c1 * (y0), e0, v0, r);                                                        \
    const double K##si = sigm(c3 * (y0), e0, v0, r);                                                        \
    const double K##0 = (y3), K##1 = (y4), K##2 = (y5);                                                     \
    const double K##3 = aa * (K##sv + (u0)) - 2.0 * a * (y3) - a * a * (y0);                                \
    const double K##4 = aa * ((u1) + c2 * K##se) - 2.0 * a * (y4) - a * a * (y1);                           \
    const double K##5 = bb * (c4 * K##si + (u2)) - 2.0 * b * (y5) - b * b * (y2);

/*
 * Run one tile (lanes_per_tile * W nodes starting at node0) through all
 * steps. METHOD, WHITE, PULSE are compile-time constants at each call site.
 */
ATTR_INLINE void run_tile(Job *jb, int64_t node0, double *buf, const int METHOD, const int WHITE, const int PULSE)
{
    const int nl = jb->lanes_per_tile;
    const int64_t tn = (int64_t)nl * W;
    const int64_t N = jb->n_nodes;
    double *restrict Y = buf; /* 6 x tn */
    double *restrict P = Y + 6 * tn; /* NPAR x tn */
    uint64_t *restrict K = (uint64_t *)(P + NPAR * tn); /* tn */
    double xi[3][W] __attribute__((aligned(ALIGN)));
    double pt[3][W] __attribute__((aligned(ALIGN)));
    memset(xi, 0, sizeof xi);
    memset(pt, 0, sizeof pt);

    for (int64_t l = 0; l < tn; l++) {
        int64_t node = node0 + l;
        int64_t src = node < N ? node : N - 1; /* padding lanes copy the last node */
        for (int k = 0; k < 6; k++)
            Y[k * tn + l] = jb->y_init[src * 6 + k];
        for (int k = 0; k < NPAR; k++)
            P[k * tn + l] = jb->par[(int64_t)k * N + src];
        K[l] = mix64(jb->seed_mix + (uint64_t)(jb->noise_node ? jb->noise_node[src] : node) * GOLDEN);
    }

    const int64_t re = jb->record_every, n_rec = jb->n_rec;
    const double dt = jb->dt;
    const int ch_mask = jb->ch_mask, uniform = jb->uniform;

    for (int64_t i = jb->i_begin; i < jb->i_end; i++) {
        const int64_t rec_step = i - jb->n_transient;
        const int rec = rec_step >= 0 && rec_step % re == 0 && rec_step / re < n_rec;
        const int64_t rj = rec ? rec_step / re : 0;
        const double t = (double)rec_step * dt;
        uint64_t ctr[3];
        for (int c = 0; c < 3; c++)
            ctr[c] = (3 * (uint64_t)i + (uint64_t)c + 1) * GOLDEN;

        for (int lane = 0; lane < nl; lane++) {
            const int64_t off = (int64_t)lane * W;
            /* noise */
            for (int c = 0; c < 3; c++) {
                if (!((ch_mask >> c) & 1))
                    continue;
                const uint64_t cc = ctr[c];
                const uint64_t *restrict kk = K + off;
                double *restrict out = xi[c];
                if (uniform) {
#pragma omp simd
                    for (int j = 0; j < W; j++) {
                        uint64_t bits = mix64(kk[j] + cc);
                        /* (bits >> 11) as a 53-bit integer, exactly, from two halves */
                        double m = small_to_double(bits >> 43) * 0x1p32 + small_to_double((bits >> 11) & 0xFFFFFFFFULL);
                        double u = (m + 0.5) * 0x1p-53;
                        out[j] = SQRT3 * (2.0 * u - 1.0);
                    }
                } else {
#pragma omp simd
                    for (int j = 0; j < W; j++) {
                        uint64_t bits = mix64(kk[j] + cc);
                        double u1 = unit_from_u32(bits >> 32);
                        double u2 = unit_from_u32(bits & 0xFFFFFFFFULL);
                        out[j] = sqrt(-2.0 * jr_log(u1)) * jr_cos2pi(u2);
                    }
                }
            }
            /* deterministic pulse input at t, t + dt/2, t + dt */
            if (PULSE) {
                const double *restrict q = P + P_PQ * tn + off, *restrict w = P + P_PW * tn + off;
                const double *restrict n = P + P_PN * tn + off, *restrict o = P + P_PO * tn + off;
#pragma omp simd
                for (int j = 0; j < W; j++)
                    pt[0][j] = pulse_at(t, q[j], w[j], n[j], o[j]);
                if (METHOD == M_RK4) {
#pragma omp simd
                    for (int j = 0; j < W; j++)
                        pt[1][j] = pulse_at(t + 0.5 * dt, q[j], w[j], n[j], o[j]);
                }
                if (METHOD != M_EULER) {
#pragma omp simd
                    for (int j = 0; j < W; j++)
                        pt[2][j] = pulse_at(t + dt, q[j], w[j], n[j], o[j]);
                }
            }
            if (rec) {
                for (int j = 0; j < W; j++) {
                    int64_t node = node0 + off + j;
                    if (node < N)
                        jb->v_out[node * n_rec + rj] = Y[1 * tn + off + j] - Y[2 * tn + off + j];
                }
            }
            /* update */
#pragma omp simd
            for (int j = 0; j < W; j++) {
                const int64_t l = off + j;
                const double aa = P[P_AA * tn + l], bb = P[P_BB * tn + l];
                const double a = P[P_A * tn + l], b = P[P_B * tn + l];
                const double c1 = P[P_C1 * tn + l], c2 = P[P_C2 * tn + l];
                const double c3 = P[P_C3 * tn + l], c4 = P[P_C4 * tn + l];
                const double e0 = P[P_E0 * tn + l], v0 = P[P_V0 * tn + l], r = P[P_R * tn + l];
                const double s0 = P[P_S0 * tn + l], s1 = P[P_S1 * tn + l], s2 = P[P_S2 * tn + l];
                const double y0 = Y[0 * tn + l], y1 = Y[1 * tn + l], y2 = Y[2 * tn + l];
                const double y3 = Y[3 * tn + l], y4 = Y[4 * tn + l], y5 = Y[5 * tn + l];
                double u0 = 0.0, u1 = P[P_PM * tn + l], u2 = 0.0;
                if (PULSE)
                    u1 = u1 + pt[0][j];
                double d0 = 0.0, d1 = 0.0, d2 = 0.0;
                if (WHITE) {
                    d0 = s0 * xi[0][j];
                    d1 = s1 * xi[1][j];
                    d2 = s2 * xi[2][j];
                } else {
                    u0 = u0 + s0 * xi[0][j];
                    u1 = u1 + s1 * xi[1][j];
                    u2 = u2 + s2 * xi[2][j];
                }
                DRIFT(ka, y0, y1, y2, y3, y4, y5, u0, u1, u2)
                double n0, n1, n2, n3, n4, n5;
                if (METHOD == M_EULER) {
                    n0 = y0 + dt * ka0;
                    n1 = y1 + dt * ka1;
                    n2 = y2 + dt * ka2;
                    n3 = (y3 + dt * ka3) + d0;
                    n4 = (y4 + dt * ka4) + d1;
                    n5 = (y5 + dt * ka5) + d2;
                } else if (METHOD == M_HEUN) {
                    const double z0 = y0 + dt * ka0, z1 = y1 + dt * ka1, z2 = y2 + dt * ka2;
                    const double z3 = (y3 + dt * ka3) + d0, z4 = (y4 + dt * ka4) + d1, z5 = (y5 + dt * ka5) + d2;
                    const double u1e = PULSE ? u1 + (pt[2][j] - pt[0][j]) : u1;
                    DRIFT(kb, z0, z1, z2, z3, z4, z5, u0, u1e, u2)
                    n0 = y0 + dt * (0.5 * (ka0 + kb0));
                    n1 = y1 + dt * (0.5 * (ka1 + kb1));
                    n2 = y2 + dt * (0.5 * (ka2 + kb2));
                    n3 = (y3 + dt * (0.5 * (ka3 + kb3))) + d0;
                    n4 = (y4 + dt * (0.5 * (ka4 + kb4))) + d1;
                    n5 = (y5 + dt * (0.5 * (ka5 + kb5))) + d2;
                } else {
                    const double u1m = PULSE ? u1 + (pt[1][j] - pt[0][j]) : u1;
                    const double u1e = PULSE ? u1 + (pt[2][j] - pt[0][j]) : u1;
                    const double hd = 0.5 * dt;
                    DRIFT(kb, y0 + hd * ka0, y1 + hd * ka1, y2 + hd * ka2, y3 + hd * ka3, y4 + hd * ka4,
                          y5 + hd * ka5, u0, u1m, u2)
                    DRIFT(kc, y0 + hd * kb0, y1 + hd * kb1, y2 + hd * kb2, y3 + hd * kb3, y4 + hd * kb4,
                          y5 + hd * kb5, u0, u1m, u2)
                    DRIFT(kd, y0 + dt * kc0, y1 + dt * kc1, y2 + dt * kc2, y3 + dt * kc3, y4 + dt * kc4,
                          y5 + dt * kc5, u0, u1e, u2)
                    const double d6 = dt / 6.0;
                    n0 = y0 + d6 * (ka0 + 2.0 * kb0 + 2.0 * kc0 + kd0);
                    n1 = y1 + d6 * (ka1 + 2.0 * kb1 + 2.0 * kc1 + kd1);
                    n2 = y2 + d6 * (ka2 + 2.0 * kb2 + 2.0 * kc2 + kd2);
                    n3 = y3 + d6 * (ka3 + 2.0 * kb3 + 2.0 * kc3 + kd3);
                    n4 = y4 + d6 * (ka4 + 2.0 * kb4 + 2.0 * kc4 + kd4);
                    n5 = y5 + d6 * (ka5 + 2.0 * kb5 + 2.0 * kc5 + kd5);
                }
                Y[0 * tn + l] = n0;
                Y[1 * tn + l] = n1;
                Y[2 * tn + l] = n2;
                Y[3 * tn + l] = n3;
                Y[4 * tn + l] = n4;
                Y[5 * tn + l] = n5;
            }
        }
    }

    for (int64_t l = 0; l < tn; l++) {
        int64_t node = node0 + l;
        if (node < N)
            for (int k = 0; k < 6; k++)
                jb->y_out[node * 6 + k] = Y[k * tn + l];
    }
}

static void run_tile_dispatch(Job *jb, int64_t node0, double *buf)
{
#define CASE(M, WH, PU)                                                                                     \
    if (jb->method == M && jb->white == WH && jb->has_pulse == PU) {                                         \
        run_tile(jb, node0, buf, M, WH, PU);                                                                 \
        return;                                                                                              \
    }
    CASE(M_EULER, 1, 0)
    CASE(M_EULER, 0, 0)
    CASE(M_EULER, 1, 1)
    CASE(M_EULER, 0, 1)
    CASE(M_HEUN, 1, 0)
    CASE(M_HEUN, 0, 0)
    CASE(M_HEUN, 1, 1)
    CASE(M_HEUN, 0, 1)
    CASE(M_RK4, 0, 0)
    CASE(M_RK4, 0, 1)
#undef CASE
    jb->failed = 1;
}

static void *worker(void *arg)
{
    Job *jb = (Job *)arg;
    const int64_t tn = (int64_t)jb->lanes_per_tile * W;
    size_t bytes = (size_t)tn * (6 + NPAR + 1) * sizeof(double);
    bytes = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    double *buf = (double *)aligned_alloc(ALIGN, bytes);
    if (!buf) {
        __atomic_store_n(&jb->failed, 2, __ATOMIC_SEQ_CST);
        return NULL;
    }
    for (;;) {
        int64_t tile = __atomic_fetch_add(&jb->next_tile, 1, __ATOMIC_RELAXED);
        if (tile >= jb->n_tiles)
            break;
        run_tile_dispatch(jb, tile * tn, buf);
    }
    free(buf);
    return NULL;
}

/*
 * Integrate global steps i_begin .. i_end - 1 (0 <= i_begin <= i_end <=
 * n_transient + n_steps) from the state y_init, writing the final state to
 * y_out and the samples falling in that range to v_out (N x n_rec, the whole
 * record). Running [0, a) then [a, b) from the returned state gives exactly
 * the same numbers as running [0, b) at once. y_init may be y_out (each tile
 * reads its own nodes' state before it writes them).
 * Returns 0 on success, 1 for an unsupported combination, 2 for allocation
 * failure, 3 for bad arguments.
 */
int jr_simulate(int64_t n_nodes, const double *par, const double *y_init, int64_t n_transient, int64_t n_steps,
                int64_t i_begin, int64_t i_end, double dt, int64_t record_every, int method, int noise_kind,
                int ch_mask, uint64_t seed_mix, int has_pulse, double *v_out, double *y_out, int n_threads,
                int lanes_per_tile, const int64_t *noise_node)
{
    if (n_nodes <= 0)
        return 0;
    if (record_every < 1 || n_transient < 0 || n_steps < 0 || method < 0 || method > 2 || noise_kind < 0 ||
        noise_kind > 2 || lanes_per_tile < 1 || i_begin < 0 || i_end < i_begin || i_end > n_transient + n_steps)
        return 3;
    Job jb;
    memset(&jb, 0, sizeof jb);
    jb.n_nodes = n_nodes;
    jb.n_transient = n_transient;
    jb.n_steps = n_steps;
    jb.i_begin = i_begin;
    jb.i_end = i_end;
    jb.record_every = record_every;
    jb.n_rec = n_steps / record_every;
    jb.dt = dt;
    jb.seed_mix = seed_mix;
    jb.method = method;
    jb.white = noise_kind == 0;
    jb.uniform = noise_kind == 2;
    jb.has_pulse = has_pulse != 0;
    jb.ch_mask = ch_mask & 7;
    jb.par = par;
    jb.y_init = y_init;
    jb.v_out = v_out;
    jb.y_out = y_out;
    jb.noise_node = noise_node;
    int64_t n_lanes = (n_nodes + W - 1) / W;
    if (n_threads < 1)
        n_threads = 1;
    int64_t per_thread = (n_lanes + n_threads - 1) / n_threads;
    jb.lanes_per_tile = (int)(per_thread < lanes_per_tile ? per_thread : lanes_per_tile);
    jb.n_tiles = (n_lanes + jb.lanes_per_tile - 1) / jb.lanes_per_tile;
    if (n_threads > jb.n_tiles)
        n_threads = (int)jb.n_tiles;

    if (n_threads == 1) {
        worker(&jb);
    } else {
        pthread_t *th = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)(n_threads - 1));
        int started = 0;
        if (th)
            for (; started < n_threads - 1; started++)
                if (pthread_create(&th[started], NULL, worker, &jb) != 0)
                    break;
        worker(&jb); /* the calling thread works too; it drains whatever is left */
        for (int k = 0; k < started; k++)
            pthread_join(th[k], NULL);
        free(th);
    }
    return jb.failed;
}

/* Raw generator output, for testing: bits(n, i, c) for one node and channel. */
void jr_random_bits(uint64_t seed_mix, int64_t node, int64_t step0, int64_t n, int channel, uint64_t *out)
{
    uint64_t key = mix64(seed_mix + (uint64_t)node * GOLDEN);
    for (int64_t i = 0; i < n; i++)
        out[i] = mix64(key + (3 * (uint64_t)(step0 + i) + (uint64_t)channel + 1) * GOLDEN);
}

/* Elementary functions on an array, for testing: which = 0 exp, 1 log, 2 cos(2 pi x). */
void jr_math(int which, int64_t n, const double *x, double *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = which == 0 ? jr_exp(x[i]) : (which == 1 ? jr_log(x[i]) : jr_cos2pi(x[i]));
}

/* ------------------------------------------------------------------------------------------------ *
 * Deterministic RK4 with forward sensitivities (jr_rk4_sens).
 *
 * Integrates the JR state y (6) together with its derivatives S = dy/dtheta (6 x NP) with respect
 * to the NP = 22 columns
 *     0 A, 1 B, 2 a, 3 b, 4 C1, 5 C2, 6 C3, 7 C4, 8 e0, 9 v0, 10 r, 11 p_mean,
 *     12 q, 13 w, 14 n, 15 onset (pulse), 16..21 y_init[0..5],
 * by applying the classical RK4 scheme to the augmented system
 *     y' = f(y, t),   S' = (df/dy)(y, t) S + (df/dtheta)(y, t),   S(0) = [0 | I].
 * For an explicit Runge-Kutta scheme this gives exactly the derivative of the discrete RK4
 * solution (the stage Jacobians are evaluated at the stage values), so the result is the gradient
 * of what the torch RK4 reference computes, to rounding. No noise (p_std = 0); the input is
 * p_mean + q ((t - onset)/w)^n exp(-(t - onset)/w) for t > onset (has_pulse), as in _integrate.py.
 * Scalar code (one node at a time): the cost is about 6 x 22 x 4 small FMAs per step and node.
 * ------------------------------------------------------------------------------------------------ */
#define NP_SENS 22

static void sens_rhs(const double *pp, int has_pulse, double s, const double *Y, const double *SY, double *K,
                     double *KS)
{
    const double A = pp[0], B = pp[1], a = pp[2], b = pp[3], C1 = pp[4], C2 = pp[5], C3 = pp[6], C4 = pp[7];
    const double e0 = pp[8], v0 = pp[9], r = pp[10], pm = pp[11];
    const double Aa = A * a, Bb = B * b;
    const double vv = Y[1] - Y[2], xe = C1 * Y[0], xi = C3 * Y[0];
    const double qv = 1.0 / (1.0 + exp(-r * (vv - v0)));
    const double qe = 1.0 / (1.0 + exp(-r * (xe - v0)));
    const double qi = 1.0 / (1.0 + exp(-r * (xi - v0)));
    const double Sv = 2.0 * e0 * qv, Se = 2.0 * e0 * qe, Si = 2.0 * e0 * qi;
    const double gv = Sv * r * (1.0 - qv), ge = Se * r * (1.0 - qe), gi = Si * r * (1.0 - qi);
    double P = 0.0, dPq = 0.0, dPw = 0.0, dPn = 0.0, dPo = 0.0;
    if (has_pulse) {
        const double q = pp[12], w = pp[13], n = pp[14], onset = pp[15];
        const double x = (s - onset) / w;
        if (x > 0.0) {
            const double lx = log(x);
            const double shape = exp(n * lx - x);
            P = q * shape;
            dPq = shape;
            dPw = -P * (n - x) / w;
            dPn = P * lx;
            dPo = -P * (n / x - 1.0) / w;
        }
    }
    const double drive = pm + P + C2 * Se;
    K[0] = Y[3];
    K[1] = Y[4];
    K[2] = Y[5];
    K[3] = Aa * Sv - 2.0 * a * Y[3] - a * a * Y[0];
    K[4] = Aa * drive - 2.0 * a * Y[4] - a * a * Y[1];
    K[5] = Bb * C4 * Si - 2.0 * b * Y[5] - b * b * Y[2];
    const double j30 = -a * a, j31 = Aa * gv, j33 = -2.0 * a;
    const double j40 = Aa * C2 * C1 * ge, j44 = -2.0 * a;
    const double j50 = Bb * C4 * C3 * gi, j52 = -b * b, j55 = -2.0 * b;
    const double *s0 = SY, *s1 = SY + NP_SENS, *s2 = SY + 2 * NP_SENS;
    const double *s3 = SY + 3 * NP_SENS, *s4 = SY + 4 * NP_SENS, *s5 = SY + 5 * NP_SENS;
    double *k3 = KS + 3 * NP_SENS, *k4 = KS + 4 * NP_SENS, *k5 = KS + 5 * NP_SENS;
    for (int c = 0; c < NP_SENS; c++) {
        KS[c] = s3[c];
        KS[NP_SENS + c] = s4[c];
        KS[2 * NP_SENS + c] = s5[c];
        k3[c] = j30 * s0[c] + j31 * (s1[c] - s2[c]) + j33 * s3[c];
        k4[c] = j40 * s0[c] + j30 * s1[c] + j44 * s4[c];
        k5[c] = j50 * s0[c] + j52 * s2[c] + j55 * s5[c];
    }
    /* explicit parameter dependence of rows 3..5 */
    k3[0] += a * Sv;
    k4[0] += a * drive;
    k3[2] += A * Sv - 2.0 * Y[3] - 2.0 * a * Y[0];
    k4[2] += A * drive - 2.0 * Y[4] - 2.0 * a * Y[1];
    k5[1] += b * C4 * Si;
    k5[3] += B * C4 * Si - 2.0 * Y[5] - 2.0 * b * Y[2];
    k4[4] += Aa * C2 * ge * Y[0];
    k4[5] += Aa * Se;
    k5[6] += Bb * C4 * gi * Y[0];
    k5[7] += Bb * Si;
    k3[8] += Aa * Sv / e0;
    k4[8] += Aa * C2 * Se / e0;
    k5[8] += Bb * C4 * Si / e0;
    k3[9] -= Aa * gv;
    k4[9] -= Aa * C2 * ge;
    k5[9] -= Bb * C4 * gi;
    k3[10] += Aa * gv * (vv - v0) / r;
    k4[10] += Aa * C2 * ge * (xe - v0) / r;
    k5[10] += Bb * C4 * gi * (xi - v0) / r;
    k4[11] += Aa;
    k4[12] += Aa * dPq;
    k4[13] += Aa * dPw;
    k4[14] += Aa * dPn;
    k4[15] += Aa * dPo;
}

/* par: 16 x N (row-major by parameter: par[k * N + node]); y_init: N x 6; v_out: N x n_rec;
 * dv_out: N x n_rec x 22; y_out: N x 6. Returns 0. */
int jr_rk4_sens(int64_t n_nodes, const double *par, int has_pulse, const double *y_init, int64_t n_transient,
                int64_t n_steps, double dt, int64_t record_every, double *v_out, double *dv_out, double *y_out)
{
    const int64_t n_rec = n_steps / record_every;
    const int64_t n_total = n_transient + n_steps;
    const int NS = 6 * NP_SENS;
    double y[6], S[6 * NP_SENS], Yt[6], St[6 * NP_SENS];
    double k1[6], k2[6], k3[6], k4[6];
    double K1[6 * NP_SENS], K2[6 * NP_SENS], K3[6 * NP_SENS], K4[6 * NP_SENS];
    for (int64_t node = 0; node < n_nodes; node++) {
        double pp[16];
        for (int k = 0; k < 16; k++)
            pp[k] = par[k * n_nodes + node];
        for (int k = 0; k < 6; k++)
            y[k] = y_init[node * 6 + k];
        memset(S, 0, sizeof(S));
        for (int k = 0; k < 6; k++)
            S[k * NP_SENS + 16 + k] = 1.0;
        double *vrow = v_out + node * n_rec;
        double *dvrow = dv_out + node * n_rec * NP_SENS;
        for (int64_t i = 0; i < n_total; i++) {
            const int64_t rec = i - n_transient;
            if (rec >= 0 && rec % record_every == 0 && rec / record_every < n_rec) {
                const int64_t j = rec / record_every;
                vrow[j] = y[1] - y[2];
                for (int c = 0; c < NP_SENS; c++)
                    dvrow[j * NP_SENS + c] = S[NP_SENS + c] - S[2 * NP_SENS + c];
            }
            const double t = (double)rec * dt, h2 = 0.5 * dt;
            sens_rhs(pp, has_pulse, t, y, S, k1, K1);
            for (int k = 0; k < 6; k++) Yt[k] = y[k] + h2 * k1[k];
            for (int k = 0; k < NS; k++) St[k] = S[k] + h2 * K1[k];
            sens_rhs(pp, has_pulse, t + h2, Yt, St, k2, K2);
            for (int k = 0; k < 6; k++) Yt[k] = y[k] + h2 * k2[k];
            for (int k = 0; k < NS; k++) St[k] = S[k] + h2 * K2[k];
            sens_rhs(pp, has_pulse, t + h2, Yt, St, k3, K3);
            for (int k = 0; k < 6; k++) Yt[k] = y[k] + dt * k3[k];
            for (int k = 0; k < NS; k++) St[k] = S[k] + dt * K3[k];
            sens_rhs(pp, has_pulse, t + dt, Yt, St, k4, K4);
            const double h6 = dt / 6.0;
            for (int k = 0; k < 6; k++) y[k] += h6 * ((k1[k] + k4[k]) + 2.0 * (k2[k] + k3[k]));
            for (int k = 0; k < NS; k++) S[k] += h6 * ((K1[k] + K4[k]) + 2.0 * (K2[k] + K3[k]));
        }
        for (int k = 0; k < 6; k++)
            y_out[node * 6 + k] = y[k];
    }
    return 0;
}
