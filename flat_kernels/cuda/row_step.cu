// One-pass row kernel for the column-mask data-consistency step (CuPy backend, flat_kernels/cupy).
//
// For a mask that depends only on the column, M(kh, kw) = m[kw], the centered 2-D projection
// reduces to a plain 1-D one along W on every image row (docs/row_kernel.md):
//
//     AᴴA z = Σ_c conj(S_c) ⊙ P(S_c ⊙ z),   P = F_Wᴴ diag(ifftshift(m)) F_W / W   (F_W unscaled)
//
// so one thread block owns one image row (b, h) and does the whole step for it:
//
//   load     xs = z[b,h,:], ms = ifftshift(m)/W (the 1/W of the inverse folded in), acc = 0
//   per coil chunk (all coils if they fit in shared memory, else ceil-balanced chunks of Cg):
//     FFT    forward along W, mixed radix, Stockham (natural order in and out, ping-pong buffers);
//            its first stage reads S[b,c,h,:] from global memory (once), keeps it in Ss and
//            multiplies by xs as it loads (a direct-DFT first stage gets a separate S·x pass)
//     FFT    inverse along W, the mask applied while its first stage loads
//     acc   += Σ_c conj(Ss_c) ⊙ u_c                      (fixed coil order: deterministic)
//   store    out = [has_x]·z + a_b·V − c_b·(acc − R0)   (one write of the row)
//
//     normal:          c = −1                       flow_step: has_x, a = dt, c = dt·lam, R0 = Aᴴy
//     dc_gradient:     c = −1, R0 = Aᴴy              x-gradient of flow_step: z = g, has_x, c = dt·lam
//
// FFT: W = r_1·r_2·…, radices from flat_row_next_radix (odd primes first, smallest first, a 5 with a
// factor 4 as 20; then the power of two as one 2/4/8 and 16s: 368 = 23·16, 320 = 20·16).
// Radices 2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 19, 20, 23 have unrolled butterflies (odd primes use the
// (j, P−j) symmetry; 8, 16, 20 are nested 2/4/5-point DFTs); any other prime factor (e.g. 101, or
// W = 367 itself) a direct-DFT stage, one output per thread, R complex multiply-adds each. All
// twiddles are powers of ω = exp(−2πi/W), read from one table of W values computed per block with
// sincospi in double and rounded once. Stockham stage (radix R, Ns = product of the radices done so
// far), per butterfly j:
//     k = j mod Ns;  v_r = in[j + r·W/R]·ω_{Ns·R}^{±r·k};  v = DFT_R(v);  out[(j−k)·R + k + r·Ns] = v_r
//
// Launch: grid (rows, batches) with row/batch-stride loops (any grid is correct), blockDim.x ≤
// FLAT_ROW_THREADS (any count is correct), dynamic shared memory
//     (3·W + Cg·W + 2·Cg·ld)·sizeof(complex) + W·sizeof(real)
// laid out as tw[W], xs[W], acc[W], Ss[Cg·W], b0[Cg·ld], b1[Cg·ld], ms[W] (the runtime computes it,
// flat_kernels/cupy/_engine.py: row_plan). ld is the row stride of the FFT buffers: at least W
// (W + W/R1 when an even first radix R1 writes a padded row, frow_fft), and ≡ W/R_last (mod 16),
// which makes the reads of the last stage, whose warps span two coil rows, fall on consecutive banks. Barriers are block-uniform (every loop bound below the
// barriers depends only on kernel arguments), as __syncthreads requires.
//
// flat_row_grad (below flat_row_step) is the backward with learned maps in the same pass structure:
// per coil chunk both projections P(S_c x) and P(S_c g) in shared memory, grad_S written once, grad_x
// and the grad_dt/grad_lam row sums accumulated (docs/row_kernel.md, "The fused backward").
//
// Layout and conventions as flat_kernels/cuda/dc_fused.cu: C-contiguous interleaved complex, images
// (B,H,W), coil stacks (B,C,H,W), column masks (Bm,1,W) real with Bm in {1,B}; optional pointers
// come with a has_* flag (V, R0) and are never dereferenced when it is 0.

#ifndef FLAT_ROW_THREADS
#define FLAT_ROW_THREADS 256
#endif

// The dynamic shared-memory buffer. The host test shim (tests/test_cuda_row.py) defines its own.
#ifndef FLAT_ROW_SMEM
#define FLAT_ROW_SMEM(p)                              \
    extern __shared__ frow_c128 flat_row_smem_raw_[]; \
    unsigned char* p = reinterpret_cast<unsigned char*>(flat_row_smem_raw_)
#endif

struct alignas(8) frow_c64 { float x, y; };
struct alignas(16) frow_c128 { double x, y; };

template <typename T> struct frow_complex;
template <> struct frow_complex<float> { typedef frow_c64 type; };
template <> struct frow_complex<double> { typedef frow_c128 type; };

template <typename C>
__device__ __forceinline__ C frow_add(C a, C b) { a.x += b.x; a.y += b.y; return a; }
template <typename C>
__device__ __forceinline__ C frow_sub(C a, C b) { a.x -= b.x; a.y -= b.y; return a; }
template <typename C>
__device__ __forceinline__ C frow_mul(C a, C b) {  // a·b
    C z;
    z.x = a.x * b.x - a.y * b.y;
    z.y = a.x * b.y + a.y * b.x;
    return z;
}
template <typename C>
__device__ __forceinline__ C frow_cmul(C a, C b) {  // conj(a)·b
    C z;
    z.x = a.x * b.x + a.y * b.y;
    z.y = a.x * b.y - a.y * b.x;
    return z;
}
// i·a when s = +1, −i·a when s = −1
template <typename C>
__device__ __forceinline__ C frow_rot(C a, int s) {
    C z;
    z.x = s > 0 ? -a.y : a.y;
    z.y = s > 0 ? a.x : -a.x;
    return z;
}

// Twiddle ω^m (inverse: conj), ω = exp(−2πi/N), from the table.
template <typename C>
__device__ __forceinline__ C frow_tw(const C* tw, int m, int inverse) {
    C w = tw[m];
    if (inverse) w.y = -w.y;
    return w;
}

// Radix of the next Stockham stage for the remaining length n > 1 (block-uniform): the odd prime
// factors first, smallest first (an odd radix at Ns = 1 writes with an odd stride: no shared-memory
// bank conflicts), then the power of two 2^a as one 2, 4 or 8 (a mod 4 ≠ 0) followed by radix-16
// stages: the small radix takes the small Ns (fewer conflicting writes), 16 the long runs.
__device__ __forceinline__ int flat_row_next_radix(int n) {
    int m = n, a = 0;
    while (m % 2 == 0) {
        m /= 2;
        ++a;
    }
    if (m > 1) {
        int p = m;  // smallest odd prime factor
        for (int q = 3; q * q <= m; q += 2)
            if (m % q == 0) {
                p = q;
                break;
            }
        return (p == 5 && a >= 2) ? 20 : p;  // 320 = 20·16, 640 = 20·2·16: one stage less
    }
    return (a % 4) ? (1 << (a % 4)) : 16;
}

__device__ __forceinline__ bool flat_row_has_butterfly(int r) {
    return r == 2 || r == 3 || r == 4 || r == 5 || r == 7 || r == 8 || r == 11 || r == 13 || r == 16 ||
           r == 17 || r == 19 || r == 20 || r == 23;
}

// Where the inputs of a stage come from (block-uniform):
//   FROW_IN_SMEM   in[row·N + i]                        (shared memory)
//   FROW_IN_COILS  S[row, i]·xs[i] from global memory, S also kept in Ss (first forward stage)
//   FROW_IN_MASK   in[row·N + i]·ms[i]                  (first inverse stage; masked entries +0)
//   FROW_IN_PROD   Ss[row, i]·xs[i] from shared memory (row_grad: the second projection, S·g)
enum { FROW_IN_SMEM = 0, FROW_IN_COILS = 1, FROW_IN_MASK = 2, FROW_IN_PROD = 3 };

template <typename T>
struct frow_input {
    typedef typename frow_complex<T>::type C;
    int mode;
    int ld;             // row stride of `in` (SMEM, MASK)
    int pb;             // SMEM: `in` holds one padding slot after every pb elements (0: none)
    const C* in;        // SMEM, MASK
    const T* ms;        // MASK
    const C* sg;        // COILS: S[b, c0, h, 0]; row stride sstride
    long long sstride;
    const C* xs;        // COILS, PROD
    C* ss;              // COILS (written), PROD (read)
    // logical element i of coil row `row`; a = its offset in the (possibly padded) smem row
    __device__ __forceinline__ C load(int row, int i, int a, int N) const {
        if (mode == FROW_IN_COILS) {
            const C s = sg[row * sstride + i];
            ss[row * N + i] = s;
            return frow_mul(s, xs[i]);
        }
        if (mode == FROW_IN_PROD) return frow_mul(ss[row * N + i], xs[i]);
        C z = in[row * ld + a];
        if (mode == FROW_IN_MASK) {
            const T w = ms[i];
            z.x = w == (T)0 ? (T)0 : z.x * w;
            z.y = w == (T)0 ? (T)0 : z.y * w;
        }
        return z;
    }
};

template <typename C>
__device__ __forceinline__ void frow_dft2(C& a, C& b) {
    const C t = a;
    a = frow_add(t, b);
    b = frow_sub(t, b);
}

// In place: (a0, a1, a2, a3) <- DFT_4 (forward kernel exp(−2πi/4) = −i; inverse conj).
template <typename C>
__device__ __forceinline__ void frow_dft4(C& a0, C& a1, C& a2, C& a3, int inverse) {
    const C s0 = frow_add(a0, a2), d0 = frow_sub(a0, a2);
    const C s1 = frow_add(a1, a3), d1 = frow_rot(frow_sub(a1, a3), inverse ? 1 : -1);
    a0 = frow_add(s0, s1);
    a1 = frow_add(d0, d1);
    a2 = frow_sub(s0, s1);
    a3 = frow_sub(d0, d1);
}

// a·exp(∓2πi·m/16) (forward: −), m a compile-time constant after unrolling.
template <typename T, typename C>
__device__ __forceinline__ C frow_w16(C a, int m, int inverse) {
    const T c1 = (T)0.92387953251128675613, s1 = (T)0.38268343236508977173, h = (T)0.70710678118654752440;
    T c, s;  // exp(−2πi·m/16) = c − i·s
    switch (m) {
        case 1: c = c1; s = s1; break;
        case 2: c = h; s = h; break;
        case 3: c = s1; s = c1; break;
        case 4: c = 0; s = 1; break;
        case 6: c = -h; s = h; break;
        case 9: c = -c1; s = -s1; break;
        default: return a;  // m == 0
    }
    if (inverse) s = -s;
    C z;
    z.x = a.x * c + a.y * s;
    z.y = a.y * c - a.x * s;
    return z;
}

// Butterflies: y = DFT_R(v) (forward kernel exp(−2πi/R); inverse conj), y_r stored at out[base + r·Ns].
template <typename T, typename C, int R>
struct frow_bfly;

template <typename T, typename C>
struct frow_bfly<T, C, 2> {
    __device__ __forceinline__ static void run(C (&v)[2], C* out, int base, int Ns, const C*, int, int) {
        frow_dft2(v[0], v[1]);
        out[base] = v[0];
        out[base + Ns] = v[1];
    }
};

template <typename T, typename C>
struct frow_bfly<T, C, 4> {
    __device__ __forceinline__ static void run(C (&v)[4], C* out, int base, int Ns, const C*, int, int inverse) {
        frow_dft4(v[0], v[1], v[2], v[3], inverse);
#pragma unroll
        for (int r = 0; r < 4; ++r) out[base + r * Ns] = v[r];
    }
};

// 8 = 4·2: r = 2·r1 + r0, k = k0 + 4·k1:  y_k = Σ_r0 ω2^{r0·k1}·ω8^{r0·k0}·[Σ_r1 ω4^{r1·k0}·v_{2·r1+r0}]
template <typename T, typename C>
struct frow_bfly<T, C, 8> {
    __device__ __forceinline__ static void run(C (&v)[8], C* out, int base, int Ns, const C*, int, int inverse) {
#pragma unroll
        for (int r0 = 0; r0 < 2; ++r0) frow_dft4(v[r0], v[r0 + 2], v[r0 + 4], v[r0 + 6], inverse);
#pragma unroll
        for (int k0 = 1; k0 < 4; ++k0) v[1 + 2 * k0] = frow_w16<T>(v[1 + 2 * k0], 2 * k0, inverse);
#pragma unroll
        for (int k0 = 0; k0 < 4; ++k0) {
            frow_dft2(v[2 * k0], v[2 * k0 + 1]);
            out[base + k0 * Ns] = v[2 * k0];
            out[base + (k0 + 4) * Ns] = v[2 * k0 + 1];
        }
    }
};

// 16 = 4·4: r = 4·r1 + r0, k = k0 + 4·k1:  y_k = Σ_r0 ω4^{r0·k1}·ω16^{r0·k0}·[Σ_r1 ω4^{r1·k0}·v_{4·r1+r0}]
template <typename T, typename C>
struct frow_bfly<T, C, 16> {
    __device__ __forceinline__ static void run(C (&v)[16], C* out, int base, int Ns, const C*, int, int inverse) {
#pragma unroll
        for (int r0 = 0; r0 < 4; ++r0) frow_dft4(v[r0], v[r0 + 4], v[r0 + 8], v[r0 + 12], inverse);
#pragma unroll
        for (int r0 = 1; r0 < 4; ++r0)
#pragma unroll
            for (int k0 = 1; k0 < 4; ++k0) v[r0 + 4 * k0] = frow_w16<T>(v[r0 + 4 * k0], r0 * k0, inverse);
#pragma unroll
        for (int k0 = 0; k0 < 4; ++k0) {
            frow_dft4(v[4 * k0], v[4 * k0 + 1], v[4 * k0 + 2], v[4 * k0 + 3], inverse);
#pragma unroll
            for (int k1 = 0; k1 < 4; ++k1) out[base + (k0 + 4 * k1) * Ns] = v[4 * k0 + k1];
        }
    }
};

// 20 = 4·5: r = 4·r1 + r0, k = k0 + 5·k1:  y_k = Σ_r0 ω4^{r0·k1}·ω20^{r0·k0}·[Σ_r1 ω5^{r1·k0}·v_{4·r1+r0}].
// The 5-point DFTs use the (j, 5−j) symmetry; ω20^m (m = r0·k0 ≤ 12) comes from the table.
template <typename T, typename C>
__device__ __forceinline__ void frow_dft5(C& a0, C& a1, C& a2, C& a3, C& a4, int inverse) {
    const T c1 = (T)0.30901699437494742410, c2 = (T)-0.80901699437494742410;  // cos(2π/5), cos(4π/5)
    const T s1 = (T)0.95105651629515357212, s2 = (T)0.58778525229247312917;   // sin(2π/5), sin(4π/5)
    const T sg = inverse ? (T)1 : (T)-1;
    const C p1 = frow_add(a1, a4), m1 = frow_sub(a1, a4), p2 = frow_add(a2, a3), m2 = frow_sub(a2, a3);
    C A1, A2, B1, B2;  // y_k = A_k + i·σ·B_k, y_{5−k} = A_k − i·σ·B_k
    A1.x = a0.x + c1 * p1.x + c2 * p2.x;
    A1.y = a0.y + c1 * p1.y + c2 * p2.y;
    A2.x = a0.x + c2 * p1.x + c1 * p2.x;
    A2.y = a0.y + c2 * p1.y + c1 * p2.y;
    B1.x = sg * (s1 * m1.x + s2 * m2.x);
    B1.y = sg * (s1 * m1.y + s2 * m2.y);
    B2.x = sg * (s2 * m1.x - s1 * m2.x);
    B2.y = sg * (s2 * m1.y - s1 * m2.y);
    a0 = frow_add(a0, frow_add(p1, p2));
    a1 = frow_add(A1, frow_rot(B1, 1));
    a4 = frow_sub(A1, frow_rot(B1, 1));
    a2 = frow_add(A2, frow_rot(B2, 1));
    a3 = frow_sub(A2, frow_rot(B2, 1));
}

template <typename T, typename C>
struct frow_bfly<T, C, 20> {
    __device__ __forceinline__ static void run(C (&v)[20], C* out, int base, int Ns, const C* tw, int N, int inverse) {
#pragma unroll
        for (int r0 = 0; r0 < 4; ++r0) frow_dft5<T>(v[r0], v[r0 + 4], v[r0 + 8], v[r0 + 12], v[r0 + 16], inverse);
        const int st = N / 20;
#pragma unroll
        for (int r0 = 1; r0 < 4; ++r0)
#pragma unroll
            for (int k0 = 1; k0 < 5; ++k0) v[r0 + 4 * k0] = frow_mul(v[r0 + 4 * k0], frow_tw(tw, r0 * k0 * st, inverse));
#pragma unroll
        for (int k0 = 0; k0 < 5; ++k0) {
            frow_dft4(v[4 * k0], v[4 * k0 + 1], v[4 * k0 + 2], v[4 * k0 + 3], inverse);
#pragma unroll
            for (int k1 = 0; k1 < 4; ++k1) out[base + (k0 + 5 * k1) * Ns] = v[4 * k0 + k1];
        }
    }
};

// Odd prime P: with s_j = v_j + v_{P−j}, d_j = v_j − v_{P−j} (j = 1…H, H = (P−1)/2),
//   y_k = A_k + i·B_k,  y_{P−k} = A_k − i·B_k,  A_k = v_0 + Σ_j s_j cos(2πjk/P),  B_k = Σ_j d_j σ sin(2πjk/P)
// (σ = −1 forward, +1 inverse): about half the multiplies of a plain P-point DFT, all indices
// compile-time constants after unrolling, so v stays in registers. cos/sin come from the table
// (the same address for every thread: broadcast reads).
template <typename T, typename C, int P>
struct frow_bfly {
    __device__ __forceinline__ static void run(C (&v)[P], C* out, int base, int Ns, const C* tw, int N, int inverse) {
        constexpr int H = (P - 1) / 2;
        T cs[H + 1], sn[H + 1];
        const int st = N / P;
#pragma unroll
        for (int m = 1; m <= H; ++m) {
            const C w = tw[m * st];  // (cos, −sin)(2πm/P)
            cs[m] = w.x;
            sn[m] = inverse ? -w.y : w.y;
        }
        C y0 = v[0];
#pragma unroll
        for (int j = 1; j <= H; ++j) {
            const C s = frow_add(v[j], v[P - j]);
            const C d = frow_sub(v[j], v[P - j]);
            v[j] = s;
            v[P - j] = d;
            y0 = frow_add(y0, s);
        }
        out[base] = y0;
#pragma unroll
        for (int k = 1; k <= H; ++k) {
            C A = v[0], Bv;
            Bv.x = (T)0;
            Bv.y = (T)0;
#pragma unroll
            for (int j = 1; j <= H; ++j) {
                const int q = (j * k) % P;
                const T c = q <= H ? cs[q] : cs[P - q];
                const T s = q <= H ? sn[q] : -sn[P - q];
                A.x += c * v[j].x;
                A.y += c * v[j].y;
                Bv.x += s * v[P - j].x;
                Bv.y += s * v[P - j].y;
            }
            out[base + k * Ns] = frow_add(A, frow_rot(Bv, 1));
            out[base + (P - k) * Ns] = frow_sub(A, frow_rot(Bv, 1));
        }
    }
};

// Stage with an explicit butterfly: one thread per butterfly, nb rows of length N. The pre-twiddles
// ω^{r·k·N/(Ns·R)} are powers of one table value w1 = ω^{k·N/(Ns·R)}: one table read per butterfly,
// w_r = w_{r−1}·w1 (rounding grows like r·eps: ≤ 23 steps).
template <typename T, int R>
__device__ void frow_stage(const frow_input<T> src, typename frow_complex<T>::type* dst,
                           const typename frow_complex<T>::type* tw, int N, int ld, int Ns, int nb, int inverse,
                           int pout) {
    typedef typename frow_complex<T>::type C;
    const int L = N / R;
    const int tstep = N / (Ns * R);
    const int La = src.pb ? L + L / src.pb : L;  // input stride in a padded row (L is a multiple of pb)
    const int Rb = pout ? R + 1 : R;            // output block of an Ns = 1 stage, padded
    for (int e = (int)threadIdx.x; e < nb * L; e += (int)blockDim.x) {
        const int row = e / L;
        const int j = e - row * L;
        const int k = j % Ns;
        const int ja = src.pb ? j + j / src.pb : j;
        C v[R];
        if (Ns == 1) {
#pragma unroll
            for (int r = 0; r < R; ++r) v[r] = src.load(row, j + r * L, ja + r * La, N);
        } else {
            const C w1 = frow_tw(tw, k * tstep, inverse);
            C w = w1;
            v[0] = src.load(row, j, ja, N);
#pragma unroll
            for (int r = 1; r < R; ++r) {
                v[r] = frow_mul(src.load(row, j + r * L, ja + r * La, N), w);
                if (r + 1 < R) w = frow_mul(w, w1);
            }
        }
        frow_bfly<T, C, R>::run(v, dst + row * ld, (j - k) * Rb + k, Ns, tw, N, inverse);
    }
}

// Stage for any radix R (large prime factors): one thread per output,
//   out[(j−k)·R + k + r·Ns] = Σ_q in[j + q·L]·ω^{q·(k + r·Ns)·N/(Ns·R)}
// (pre-twiddle and DFT kernel in one table index, advanced modulo N).
template <typename T>
__device__ void frow_stage_any(const frow_input<T> src, typename frow_complex<T>::type* dst,
                               const typename frow_complex<T>::type* tw, int N, int ld, int Ns, int R, int nb,
                               int inverse, int pout) {
    typedef typename frow_complex<T>::type C;
    const int L = N / R;
    const int tstep = N / (Ns * R);
    const int La = src.pb ? L + L / src.pb : L;
    const int Rb = pout ? R + 1 : R;
    for (int e = (int)threadIdx.x; e < nb * N; e += (int)blockDim.x) {
        const int row = e / N;
        const int rem = e - row * N;
        const int r = rem / L;
        const int j = rem - r * L;
        const int k = j % Ns;
        const int step = (k + r * Ns) * tstep;  // < N
        const int ja = src.pb ? j + j / src.pb : j;
        C acc;
        acc.x = (T)0;
        acc.y = (T)0;
        int t = 0;
        for (int q = 0; q < R; ++q) {
            acc = frow_add(acc, frow_mul(src.load(row, j + q * L, ja + q * La, N), frow_tw(tw, t, inverse)));
            t += step;
            if (t >= N) t -= N;
        }
        dst[row * ld + (j - k) * Rb + k + r * Ns] = acc;
    }
}

// Transform nb rows of length N > 1 into natural order. The first stage reads through `first`
// (see frow_input); the result is left in *res, and *scratch is the other buffer.
template <typename T>
__device__ void frow_fft(frow_input<T> first, typename frow_complex<T>::type* b0,
                         typename frow_complex<T>::type* b1, typename frow_complex<T>::type** res,
                         const typename frow_complex<T>::type* tw, int N, int ld, int nb, int inverse) {
    typedef typename frow_complex<T>::type C;
    frow_input<T> src = first;
    C* dst = b0;
    C* other = b1;
    // An even first radix R1 (Ns = 1) would write with stride R1 (bank conflicts): then its output
    // gets one padding slot after every R1 elements (stride R1 + 1) and the second stage reads it so.
    int stages = 0, R1 = 1;
    for (int rem = N; rem > 1; rem /= flat_row_next_radix(rem)) R1 = stages++ ? R1 : flat_row_next_radix(rem);
    const int pad = (stages >= 2 && R1 % 2 == 0) ? R1 : 0;
    int Ns = 1;
    for (int rem = N; rem > 1;) {
        const int R = flat_row_next_radix(rem);
        const int pout = (Ns == 1 && pad) ? 1 : 0;
        switch (R) {
            case 2: frow_stage<T, 2>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 3: frow_stage<T, 3>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 4: frow_stage<T, 4>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 5: frow_stage<T, 5>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 7: frow_stage<T, 7>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 8: frow_stage<T, 8>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 11: frow_stage<T, 11>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 13: frow_stage<T, 13>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 16: frow_stage<T, 16>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 17: frow_stage<T, 17>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 19: frow_stage<T, 19>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 20: frow_stage<T, 20>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            case 23: frow_stage<T, 23>(src, dst, tw, N, ld, Ns, nb, inverse, pout); break;
            default: frow_stage_any<T>(src, dst, tw, N, ld, Ns, R, nb, inverse, pout); break;
        }
        __syncthreads();
        src.mode = FROW_IN_SMEM;
        src.in = dst;
        src.pb = pout ? pad : 0;
        C* t = dst == b0 ? b1 : b0;  // the buffer not just written
        other = dst;
        dst = t;
        Ns *= R;
        rem /= R;
    }
    *res = other;
}

// The block's twiddle table ω^m = exp(−2πi·m/W), m < W: sincospi in double precision with the
// angle reduced to (−π, π], rounded once (docs/row_kernel.md, "Twiddles").
template <typename T>
__device__ __forceinline__ void frow_twiddles(typename frow_complex<T>::type* tw, int W, int tid, int nt) {
    for (int m = tid; m < W; m += nt) {
        int m2 = 2 * m;
        if (m2 > W) m2 -= 2 * W;
        double s, c;
        sincospi((double)m2 / (double)W, &s, &c);
        tw[m].x = (T)c;
        tw[m].y = (T)(-s);
    }
}

template <typename T>
__device__ void flat_row_step(const typename frow_complex<T>::type* __restrict__ S,
                              const typename frow_complex<T>::type* __restrict__ X,
                              const typename frow_complex<T>::type* __restrict__ V,
                              const typename frow_complex<T>::type* __restrict__ R0,
                              const T* __restrict__ M,
                              const T* __restrict__ a, int a_stride,
                              const T* __restrict__ cc, int c_stride,
                              typename frow_complex<T>::type* __restrict__ out,
                              int has_x, int has_v, int has_r0, int B, int Cn, int H, int W, int Bm, int Cg,
                              int ld, unsigned char* smem) {
    typedef typename frow_complex<T>::type C;
    C* tw = reinterpret_cast<C*>(smem);
    C* xs = tw + W;
    C* acc = xs + W;
    C* Ss = acc + W;
    C* b0 = Ss + (long long)Cg * W;
    C* b1 = b0 + (long long)Cg * ld;
    T* ms = reinterpret_cast<T*>(b1 + (long long)Cg * ld);
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    // S·x is formed while the first forward stage loads (one pass less over shared memory), when
    // that stage has a butterfly; a direct-DFT first stage reads each input R times, so it gets a
    // separate prologue. W = 1 has no stage at all.
    const bool fold = W > 1 && flat_row_has_butterfly(flat_row_next_radix(W));

    frow_twiddles<T>(tw, W, tid, nt);
    const T inv_w = (T)(1.0 / (double)W);
    const int ish = W / 2;  // ifftshift read offset

    for (int b = (int)blockIdx.y; b < B; b += (int)gridDim.y) {
        const T ab = has_v ? a[b * a_stride] : (T)0;
        const T cb = cc[b * c_stride];
        const T* mrow = M + (long long)(Bm == 1 ? 0 : b) * W;
        for (int h = (int)blockIdx.x; h < H; h += (int)gridDim.x) {
            __syncthreads();  // the previous row is done with xs and ms
            const long long xrow = ((long long)b * H + h) * W;
            for (int w = tid; w < W; w += nt) {
                xs[w] = X[xrow + w];
                acc[w].x = (T)0;
                acc[w].y = (T)0;
                int ws = w + ish;
                if (ws >= W) ws -= W;
                const T m = mrow[ws];
                ms[w] = m == (T)0 ? (T)0 : m * inv_w;
            }
            for (int c0 = 0; c0 < Cn; c0 += Cg) {
                const int nb = Cn - c0 < Cg ? Cn - c0 : Cg;
                const C* srow = S + ((long long)b * Cn + c0) * H * W + (long long)h * W;
                __syncthreads();  // xs, ms, tw written; the previous chunk is done with Ss, b0, b1
                frow_input<T> in;
                in.ld = ld;
                in.pb = 0;
                in.ms = ms;
                in.sg = srow;
                in.sstride = (long long)H * W;
                in.xs = xs;
                in.ss = Ss;
                C* u = b0;
                if (fold) {
                    in.mode = FROW_IN_COILS;
                    in.in = nullptr;
                } else {
                    for (int e = tid; e < nb * W; e += nt) {
                        const int c = e / W;
                        const int w = e - c * W;
                        const C s = srow[c * in.sstride + w];
                        Ss[e] = s;
                        b1[c * ld + w] = frow_mul(s, xs[w]);
                    }
                    __syncthreads();
                    in.mode = FROW_IN_SMEM;
                    in.in = b1;
                }
                if (W > 1) {
                    frow_fft<T>(in, b0, b1, &u, tw, W, ld, nb, 0);  // u = F(S·x) (in b0 or b1)
                    in.mode = FROW_IN_MASK;
                    in.in = u;
                    C* o = u == b0 ? b1 : b0;
                    frow_fft<T>(in, o, u, &u, tw, W, ld, nb, 1);  // u = Fᴴ(ms ⊙ u): ms carries 1/W
                } else {
                    for (int e = tid; e < nb; e += nt) {
                        in.mode = FROW_IN_MASK;
                        in.in = b1;
                        b0[e * ld] = in.load(e, 0, 0, 1);
                    }
                    __syncthreads();
                }
                for (int w = tid; w < W; w += nt) {  // thread-owned columns: no race on acc
                    C t = acc[w];
                    for (int c = 0; c < nb; ++c) t = frow_add(t, frow_cmul(Ss[c * W + w], u[c * ld + w]));
                    acc[w] = t;
                }
            }
            for (int w = tid; w < W; w += nt) {
                C r = acc[w];
                if (has_r0) r = frow_sub(r, R0[xrow + w]);
                C res = xs[w];
                if (!has_x) {
                    res.x = (T)0;
                    res.y = (T)0;
                }
                if (has_v) {
                    const C v = V[xrow + w];
                    res.x += ab * v.x;
                    res.y += ab * v.y;
                }
                res.x -= cb * r.x;
                res.y -= cb * r.y;
                out[xrow + w] = res;
            }
        }
    }
}

// nb coil rows projected: *res = P(z) = Fᴴ(ms ⊙ F z), ms carrying the 1/W of the inverse. The first
// forward stage reads through `in` (FROW_IN_COILS / FROW_IN_PROD), or from b1 when in.mode is
// FROW_IN_SMEM (a prologue wrote z there: a direct-DFT first stage, or W = 1). The result is left in
// b0 or b1; nothing else is touched (row_grad keeps the first projection in a third buffer).
template <typename T>
__device__ __forceinline__ void frow_project(frow_input<T> in, typename frow_complex<T>::type* b0,
                             typename frow_complex<T>::type* b1, typename frow_complex<T>::type** res,
                             const typename frow_complex<T>::type* tw, int W, int ld, int nb) {
    typedef typename frow_complex<T>::type C;
    if (in.mode == FROW_IN_SMEM) in.in = b1;
    if (W > 1) {
        C* u = b0;
        frow_fft<T>(in, b0, b1, &u, tw, W, ld, nb, 0);  // u = F z (in b0 or b1)
        in.mode = FROW_IN_MASK;
        in.in = u;
        in.pb = 0;
        frow_fft<T>(in, u == b0 ? b1 : b0, u, res, tw, W, ld, nb, 1);  // Fᴴ(ms ⊙ u)
    } else {
        in.mode = FROW_IN_MASK;
        for (int e = (int)threadIdx.x; e < nb; e += (int)blockDim.x) b0[e * ld] = in.load(e, 0, 0, 1);
        __syncthreads();
        *res = b0;
    }
}

// The backward with learned maps in one pass (row_grad; docs/row_kernel.md, "The fused backward").
// With P = F_Wᴴ diag(ifftshift(m)/W) F_W per row and the forward out = [has_x]·x + a·v − c·(AᴴA x − r0)
// (r0 = Aᴴy = Σ_c conj(S_c)·q_c when it is computed from y, so it depends on S), torch's convention
// for complex gradients (the conjugate Wirtinger derivative of a real loss; docs/operators.md,
// "Backward") gives, for the output gradient g,
//
//     grad_S_c = −c·[(P(S_c x) − [has_q]·q_c)·conj(g) + conj(x)·P(S_c g)]
//     grad_x   = [has_x]·g − c·Σ_c conj(S_c)·P(S_c g)                       (AᴴA is Hermitian)
//     r        = Σ_c conj(S_c)·(P(S_c x) − [has_q]·q_c) − [has_r0]·R0          (= AᴴA x − Aᴴy)
//     red[b,h] = (Re Σ_w conj(g)·r, Re Σ_w conj(g)·v)                         (grad_lam, grad_dt)
//
// the same terms as flat_grad_sens of dc_fused.cu (k = −c there, U = P(S x), Wb = P(S g)). Per row:
// load x, g (and the mask row) into shared memory; per coil chunk, project S·x (the first stage reads
// S from global memory and keeps it in Ss, as flat_row_step) and S·g (read from Ss) into two of three
// FFT buffers, then for the columns a thread owns write grad_S for the chunk's coils (once, coalesced)
// and accumulate Σ conj(S)·P(S g) (and Σ conj(S)·(P(S x) − q)) in a fixed coil order; after the last
// chunk write grad_x and the two per-row sums (a fixed-order tree over the block: deterministic).
// q (unscaled IFFT2 of ifftshift(M ⊙ y) from cuFFT, read fftshift-ed: row (h + qshH) mod H, column
// (w + qshW) mod W, times sq, as flat_grad_sens reads it) is the one coil stack read besides S.
//
// Shared memory: (5·W + Cg·W + 3·Cg·ld)·sizeof(complex) + W·sizeof(real) + 2·FLAT_ROW_THREADS·sizeof(real)
// laid out as tw[W], xs[W], gs[W], ax[W], ar[W], Ss[Cg·W], b0, b1, b2[Cg·ld], ms[W], red[2·threads]
// (flat_kernels/cupy/_engine.py: row_plan(..., kernel="row_grad")).
template <typename T>
__device__ void flat_row_grad(const typename frow_complex<T>::type* __restrict__ S,
                              const typename frow_complex<T>::type* __restrict__ X,
                              const typename frow_complex<T>::type* __restrict__ G,
                              const typename frow_complex<T>::type* __restrict__ V,
                              const typename frow_complex<T>::type* __restrict__ R0,
                              const typename frow_complex<T>::type* __restrict__ Q,
                              const T* __restrict__ M,
                              const T* __restrict__ cc, int c_stride,
                              typename frow_complex<T>::type* __restrict__ gx_out,
                              typename frow_complex<T>::type* __restrict__ gs_out,
                              T* __restrict__ red_out, T sq,
                              int has_x, int has_gx, int has_q, int has_r0, int has_v, int has_red,
                              int qshH, int qshW, int B, int Cn, int H, int W, int Bm, int Cg, int ld,
                              unsigned char* smem) {
    typedef typename frow_complex<T>::type C;
    C* tw = reinterpret_cast<C*>(smem);
    C* xs = tw + W;
    C* gs = xs + W;
    C* ax = gs + W;  // Σ_c conj(S_c)·P(S_c g)
    C* ar = ax + W;  // Σ_c conj(S_c)·(P(S_c x) − q_c)
    C* Ss = ar + W;
    C* b0 = Ss + (long long)Cg * W;
    C* b1 = b0 + (long long)Cg * ld;
    C* b2 = b1 + (long long)Cg * ld;
    T* ms = reinterpret_cast<T*>(b2 + (long long)Cg * ld);
    T* red = ms + W;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const bool fold = W > 1 && flat_row_has_butterfly(flat_row_next_radix(W));  // as flat_row_step

    frow_twiddles<T>(tw, W, tid, nt);
    const T inv_w = (T)(1.0 / (double)W);
    const int ish = W / 2;
    const long long HW = (long long)H * W;

    for (int b = (int)blockIdx.y; b < B; b += (int)gridDim.y) {
        const T cb = cc[b * c_stride];
        const T* mrow = M + (long long)(Bm == 1 ? 0 : b) * W;
        for (int h = (int)blockIdx.x; h < H; h += (int)gridDim.x) {
            __syncthreads();  // the previous row is done with xs, gs, ax, ar, ms, red
            const long long xrow = ((long long)b * H + h) * W;
            int hq = h + qshH;
            if (hq >= H) hq -= H;
            for (int w = tid; w < W; w += nt) {
                xs[w] = X[xrow + w];
                gs[w] = G[xrow + w];
                ax[w].x = ax[w].y = (T)0;
                ar[w].x = ar[w].y = (T)0;
                int ws = w + ish;
                if (ws >= W) ws -= W;
                const T m = mrow[ws];
                ms[w] = m == (T)0 ? (T)0 : m * inv_w;
            }
            for (int c0 = 0; c0 < Cn; c0 += Cg) {
                const int nb = Cn - c0 < Cg ? Cn - c0 : Cg;
                const long long coil0 = ((long long)b * Cn + c0) * HW;
                const C* srow = S + coil0 + (long long)h * W;
                __syncthreads();  // xs, gs, ms, tw written; the previous chunk is done with Ss, b0, b1, b2
                frow_input<T> in;
                in.ld = ld;
                in.pb = 0;
                in.ms = ms;
                in.sg = srow;
                in.sstride = HW;
                in.xs = xs;
                in.ss = Ss;
                in.in = nullptr;
                if (fold) {
                    in.mode = FROW_IN_COILS;
                } else {  // separate prologue: Ss = S, b1 = S·x
                    for (int e = tid; e < nb * W; e += nt) {
                        const int c = e / W;
                        const int w = e - c * W;
                        const C s = srow[c * HW + w];
                        Ss[e] = s;
                        b1[c * ld + w] = frow_mul(s, xs[w]);
                    }
                    __syncthreads();
                    in.mode = FROW_IN_SMEM;
                }
                C* ux = b0;
                frow_project<T>(in, b0, b1, &ux, tw, W, ld, nb);  // ux = P(S·x), in b0 or b1
                C* f0 = ux == b0 ? b1 : b0;                        // the two buffers ux is not in
                in.xs = gs;
                if (fold) {
                    in.mode = FROW_IN_PROD;
                } else {  // b2 = Ss·g
                    for (int e = tid; e < nb * W; e += nt) {
                        const int c = e / W;
                        const int w = e - c * W;
                        b2[c * ld + w] = frow_mul(Ss[e], gs[w]);
                    }
                    __syncthreads();
                    in.mode = FROW_IN_SMEM;
                }
                C* ug = f0;
                frow_project<T>(in, f0, b2, &ug, tw, W, ld, nb);  // ug = P(S·g), in f0 or b2
                for (int w = tid; w < W; w += nt) {  // thread-owned columns: no race on ax, ar
                    const C xw = xs[w], gw = gs[w];
                    C tx = ax[w], tr = ar[w];
                    int wq = w + qshW;
                    if (wq >= W) wq -= W;
                    for (int c = 0; c < nb; ++c) {
                        const C s = Ss[c * W + w];
                        C u = ux[c * ld + w];
                        if (has_q) {
                            const C q = Q[coil0 + (long long)c * HW + (long long)hq * W + wq];
                            u.x -= sq * q.x;
                            u.y -= sq * q.y;
                        }
                        const C v = ug[c * ld + w];
                        const C t = frow_add(frow_cmul(gw, u), frow_cmul(xw, v));  // conj(g)·u + conj(x)·v
                        C o;
                        o.x = -cb * t.x;
                        o.y = -cb * t.y;
                        gs_out[coil0 + (long long)c * HW + (long long)h * W + w] = o;
                        tx = frow_add(tx, frow_cmul(s, v));
                        tr = frow_add(tr, frow_cmul(s, u));
                    }
                    ax[w] = tx;
                    ar[w] = tr;
                }
            }
            T pr = (T)0, pv = (T)0;  // this thread's parts of Re Σ conj(g)·r and Re Σ conj(g)·v
            for (int w = tid; w < W; w += nt) {
                const C gw = gs[w];
                if (has_gx) {
                    C res = gw;
                    if (!has_x) res.x = res.y = (T)0;
                    res.x -= cb * ax[w].x;
                    res.y -= cb * ax[w].y;
                    gx_out[xrow + w] = res;
                }
                if (has_red) {
                    C r = ar[w];
                    if (has_r0) r = frow_sub(r, R0[xrow + w]);
                    pr += gw.x * r.x + gw.y * r.y;
                    if (has_v) {
                        const C v = V[xrow + w];
                        pv += gw.x * v.x + gw.y * v.y;
                    }
                }
            }
            if (has_red) {  // fixed-order tree over the block's threads (any blockDim): deterministic
                red[2 * tid] = pr;
                red[2 * tid + 1] = pv;
                int half = 1;
                while (half < nt) half *= 2;
                for (half /= 2; half > 0; half /= 2) {
                    __syncthreads();
                    if (tid < half && tid + half < nt) {
                        red[2 * tid] += red[2 * (tid + half)];
                        red[2 * tid + 1] += red[2 * (tid + half) + 1];
                    }
                }
                __syncthreads();
                if (tid == 0) {
                    red_out[2 * ((long long)b * H + h)] = red[0];
                    red_out[2 * ((long long)b * H + h) + 1] = red[1];
                }
            }
        }
    }
}

// ---------------------------------------------------------------- extern "C" instantiations
// MINB: blocks per SM that ptxas must allow for. complex64 asks for 2 (<= 128 registers; row_plan
// sizes its shared memory for two blocks per SM); complex128 (254 registers, no spill) runs one.
#define FLAT_ROW_STEP_INSTANTIATE(SUF, T, MINB)                                                        \
    extern "C" __global__ void __launch_bounds__(FLAT_ROW_THREADS, MINB) flat_row_step_##SUF(         \
        const frow_complex<T>::type* __restrict__ S, const frow_complex<T>::type* __restrict__ X,     \
        const frow_complex<T>::type* __restrict__ V, const frow_complex<T>::type* __restrict__ R0,    \
        const T* __restrict__ M, const T* __restrict__ a, int a_stride, const T* __restrict__ cc,     \
        int c_stride, frow_complex<T>::type* __restrict__ out, int has_x, int has_v, int has_r0,      \
        int B, int Cn, int H, int W, int Bm, int Cg, int ld) {                                        \
        FLAT_ROW_SMEM(smem);                                                                          \
        flat_row_step<T>(S, X, V, R0, M, a, a_stride, cc, c_stride, out, has_x, has_v, has_r0, B, Cn, \
                         H, W, Bm, Cg, ld, smem);                                                     \
    }
#define FLAT_ROW_GRAD_INSTANTIATE(SUF, T, MINB)                                                        \
    extern "C" __global__ void __launch_bounds__(FLAT_ROW_THREADS, MINB) flat_row_grad_##SUF(         \
        const frow_complex<T>::type* __restrict__ S, const frow_complex<T>::type* __restrict__ X,     \
        const frow_complex<T>::type* __restrict__ G, const frow_complex<T>::type* __restrict__ V,     \
        const frow_complex<T>::type* __restrict__ R0, const frow_complex<T>::type* __restrict__ Q,    \
        const T* __restrict__ M, const T* __restrict__ cc, int c_stride,                              \
        frow_complex<T>::type* __restrict__ gx_out, frow_complex<T>::type* __restrict__ gs_out,       \
        T* __restrict__ red_out, T sq, int has_x, int has_gx, int has_q, int has_r0, int has_v,       \
        int has_red, int qshH, int qshW, int B, int Cn, int H, int W, int Bm, int Cg, int ld) {       \
        FLAT_ROW_SMEM(smem);                                                                          \
        flat_row_grad<T>(S, X, G, V, R0, Q, M, cc, c_stride, gx_out, gs_out, red_out, sq, has_x,      \
                         has_gx, has_q, has_r0, has_v, has_red, qshH, qshW, B, Cn, H, W, Bm, Cg, ld,  \
                         smem);                                                                       \
    }

// The GPU runtime compiles each family as its own NVRTC module (-DFLAT_ROW_ONLY_STEP or
// -DFLAT_ROW_ONLY_GRAD, flat_kernels/cupy/_runtime.py), so a forward-only run never compiles the
// backward; nvcc (tests/test_cuda_compile.py, flat_kernels/roofline.py) and the host shim build both.
#ifndef FLAT_ROW_ONLY_GRAD
FLAT_ROW_STEP_INSTANTIATE(c64, float, 2)
FLAT_ROW_STEP_INSTANTIATE(c128, double, 1)
#endif
#ifndef FLAT_ROW_ONLY_STEP
FLAT_ROW_GRAD_INSTANTIATE(c64, float, 2)
FLAT_ROW_GRAD_INSTANTIATE(c128, double, 1)
#endif
