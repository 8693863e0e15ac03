/* Storage types on the host: names, sizes, and the exact widening and round-to-nearest-even
 * narrowing the kernels' dp_load / dp_store do on the device (cl/dipole_common.cl). */
#include <string.h>

#include "internal.h"

const char *dipole_dtype_name(dipole_dtype dtype)
{
    switch (dtype) {
    case DIPOLE_F32: return "f32";
    case DIPOLE_F16: return "f16";
    case DIPOLE_BF16: return "bf16";
    }
    return "unknown";
}

size_t dipole_dtype_size(dipole_dtype dtype)
{
    switch (dtype) {
    case DIPOLE_F32: return 4;
    case DIPOLE_F16:
    case DIPOLE_BF16: return 2;
    }
    return 0;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

float dp_bf16_to_f32(uint16_t b)
{
    return f32_from_bits((uint32_t)b << 16);
}

uint16_t dp_f32_to_bf16(float x)
{
    const uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload bits, made quiet */
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float dp_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN: NaN payloads move up with the mantissa */
        return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return f32_from_bits(sign);
        /* Subnormal: man * 2^-24, which a float holds exactly. */
        const float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t dp_f32_to_f16(float x)
{
    const uint32_t u = f32_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN, quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* 65520 and above round to inf (65504 is the largest half) */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: a subnormal half, a multiple of 2^-24 */
        if (a < 0x33000000u) /* at most 2^-25: rounds to zero (a tie goes to even, 0) */
            return sign;
        const uint32_t e = a >> 23, man = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e; /* value = man * 2^(e - 150); want units of 2^-24 */
        uint32_t r = man >> shift;
        const uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    /* Normal: rebias and round the 13 dropped bits to nearest even; a carry into the exponent
     * is the right answer (it may reach inf only above, where a >= 0x477ff000 was caught). */
    const uint32_t r = a - 0x38000000u;
    return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}

dipole_status dipole_convert(dipole_dtype dst_dtype, void *dst, dipole_dtype src_dtype,
                             const void *src, size_t n)
{
    if (!dipole_dtype_size(dst_dtype) || !dipole_dtype_size(src_dtype))
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_convert: dtype %d is not a dipole_dtype",
                       !dipole_dtype_size(dst_dtype) ? (int)dst_dtype : (int)src_dtype);
    if (n && (!dst || !src))
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_convert: %s is NULL",
                       !dst ? "dst" : "src");
    if (dst_dtype == src_dtype) {
        if (dst != src)
            memmove(dst, src, n * dipole_dtype_size(src_dtype));
        return DIPOLE_SUCCESS;
    }
    /* Element by element through float: every storage type widens to float exactly. Going up
     * in size in place would overwrite unread elements, so run from the end then. */
    const bool backwards = dipole_dtype_size(dst_dtype) > dipole_dtype_size(src_dtype);
    for (size_t t = 0; t < n; t++) {
        const size_t i = backwards ? n - 1 - t : t;
        float x;
        switch (src_dtype) {
        case DIPOLE_F32: memcpy(&x, (const char *)src + 4 * i, 4); break;
        case DIPOLE_F16: x = dp_f16_to_f32(((const uint16_t *)src)[i]); break;
        default: x = dp_bf16_to_f32(((const uint16_t *)src)[i]); break;
        }
        switch (dst_dtype) {
        case DIPOLE_F32: memcpy((char *)dst + 4 * i, &x, 4); break;
        case DIPOLE_F16: ((uint16_t *)dst)[i] = dp_f32_to_f16(x); break;
        default: ((uint16_t *)dst)[i] = dp_f32_to_bf16(x); break;
        }
    }
    return DIPOLE_SUCCESS;
}
