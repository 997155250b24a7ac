/* resize_crop_pack: antialiased resize of the shortest side + center crop + batch packing, one thread per output
 * pixel (all 3 channels); blockIdx.y is the frame. Compiled at run time with NVRTC (clip_rt/gpu/kernel.py), and on
 * the CPU by tests/gpu/test_resample.py through a small shim.
 *
 * The two separable passes of Pillow's resize are fused: for each source line the first pass needs, the thread
 * computes that pass's value, rounds and clips it to uint8 exactly as Pillow stores its intermediate image, and
 * feeds it to the second pass. Tables and descriptors are built on the host by clip_rt/gpu/resample.py
 * (pack_tables); the numpy twin there (twin_packed) is this kernel's reference. All arithmetic is int32, as in
 * Pillow; resample.axis_table checks it cannot overflow.
 *
 * PRECISION_BITS and DESC_FIELDS come from the compiler's command line (-D), set from resample.py's constants.
 */
#if !defined(PRECISION_BITS) || !defined(DESC_FIELDS)
#error "compile with -DPRECISION_BITS=... -DDESC_FIELDS=... (clip_rt.gpu.kernel.KERNEL_DEFINES)"
#endif

__device__ __forceinline__ int clip8(int acc) {
    int v = acc >> PRECISION_BITS;  /* arithmetic shift: floor, as Pillow's clip8 lookup */
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}

extern "C" __global__ void resize_crop_pack(
    const unsigned char* __restrict__ pixels,  /* frames back to back, each [H, W, 3] */
    const long long* __restrict__ desc,        /* [B, DESC_FIELDS]: offset, H, W, table offset, ky, kx, vfirst */
    const int* __restrict__ tables,            /* per frame: row start/count/weights, col start/count/weights */
    unsigned char* __restrict__ out,           /* [B, S, S, 3]: the image engine's input */
    int size)
{
    const int frame = blockIdx.y;
    const int pixel = blockIdx.x * blockDim.x + threadIdx.x;
    if (pixel >= size * size) return;
    const int oy = pixel / size;
    const int ox = pixel - oy * size;

    const long long* d = desc + (long long)frame * DESC_FIELDS;
    const unsigned char* img = pixels + d[0];
    const long long width = d[2];
    const int* t = tables + d[3];
    const int ky = (int)d[4];
    const int kx = (int)d[5];
    const int* row_start = t;
    const int* row_count = t + size;
    const int* row_w = t + 2 * size;
    const int* col_start = row_w + size * ky;
    const int* col_count = col_start + size;
    const int* col_w = col_count + size;

    const int y0 = row_start[oy], ny = row_count[oy];
    const int x0 = col_start[ox], nx = col_count[ox];
    const int* wy = row_w + oy * ky;
    const int* wx = col_w + ox * kx;
    const int half = 1 << (PRECISION_BITS - 1);
    int a0 = half, a1 = half, a2 = half;

    if (d[6] == 0) {
        /* horizontal first: each needed source row -> one clipped horizontal value, then the vertical taps */
        for (int r = 0; r < ny; ++r) {
            const unsigned char* p = img + ((long long)(y0 + r) * width + x0) * 3;
            int h0 = half, h1 = half, h2 = half;
            for (int c = 0; c < nx; ++c) {
                const int w = wx[c];
                h0 += (int)p[3 * c] * w;
                h1 += (int)p[3 * c + 1] * w;
                h2 += (int)p[3 * c + 2] * w;
            }
            const int w = wy[r];
            a0 += clip8(h0) * w;
            a1 += clip8(h1) * w;
            a2 += clip8(h2) * w;
        }
    } else {
        /* vertical first: each needed source column -> one clipped vertical value, then the horizontal taps */
        for (int c = 0; c < nx; ++c) {
            const unsigned char* p = img + ((long long)y0 * width + x0 + c) * 3;
            int v0 = half, v1 = half, v2 = half;
            for (int r = 0; r < ny; ++r) {
                const int w = wy[r];
                const unsigned char* q = p + (long long)r * width * 3;
                v0 += (int)q[0] * w;
                v1 += (int)q[1] * w;
                v2 += (int)q[2] * w;
            }
            const int w = wx[c];
            a0 += clip8(v0) * w;
            a1 += clip8(v1) * w;
            a2 += clip8(v2) * w;
        }
    }
    unsigned char* o = out + ((long long)frame * size * size + pixel) * 3;
    o[0] = (unsigned char)clip8(a0);
    o[1] = (unsigned char)clip8(a1);
    o[2] = (unsigned char)clip8(a2);
}
