/* A minimal .npy reader for the golden files: little-endian float32 or uint8, C order. */
#ifndef DIPOLE_NPY_H
#define DIPOLE_NPY_H

#include <stddef.h>

typedef struct npy_array {
    int ndim;
    size_t shape[8];
    size_t count;
    int is_u8;  /* 1: uint8 data, 0: float32 */
    void *data; /* malloc'd */
} npy_array;

/* Returns 0 on success; on failure, non-zero with a reason in err. */
int npy_load(const char *path, npy_array *out, char *err, size_t errcap);
void npy_free(npy_array *a);

#endif
