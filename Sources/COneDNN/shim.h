// oneDNN (Debian: libdnnl-dev, which ships no pkg-config file, so the module map links "dnnl" by name).
//
// Swift sees only the small matmul API below: oneDNN 3.x replaced the 2.x operation descriptors
// (dnnl_matmul_desc_init, dnnl_memory_desc_t structs, output scales) with handle-based memory descriptors
// and runtime scales, so the version-specific calls stay here, behind DNNL_VERSION_MAJOR.
#ifndef CONVOY_ONEDNN_SHIM_H
#define CONVOY_ONEDNN_SHIM_H

#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Debian's oneDNN runs on GNU OpenMP. omp.h lives in GCC's private include directory, out of Swift's
// reach, so the two calls Convoy needs are declared here (libgomp, linked by the module map).
void omp_set_num_threads(int count);
int omp_get_max_threads(void);

/// A matmul primitive for one (M, N, K, transposes, leading dimensions, input type, alpha, beta), with
/// its memory objects (data handles set per call) and its own scratchpad, so executing it never touches
/// state shared with another thread's primitives.
typedef struct convoy_dnnl_matmul {
    dnnl_primitive_t primitive;
    dnnl_memory_t source;
    dnnl_memory_t weights;
    dnnl_memory_t destination;
    dnnl_memory_t scratchpad;
    void *scratchpad_buffer;
    char implementation[64];
} convoy_dnnl_matmul;

static inline void convoy_dnnl_matmul_destroy(convoy_dnnl_matmul *matmul) {
    if (!matmul) return;
    if (matmul->primitive) dnnl_primitive_destroy(matmul->primitive);
    if (matmul->source) dnnl_memory_destroy(matmul->source);
    if (matmul->weights) dnnl_memory_destroy(matmul->weights);
    if (matmul->destination) dnnl_memory_destroy(matmul->destination);
    if (matmul->scratchpad) dnnl_memory_destroy(matmul->scratchpad);
    free(matmul->scratchpad_buffer);
    free(matmul);
}

#if DNNL_VERSION_MAJOR == 2

/// Row-major C[M×N] = alpha · op(A) · op(B) + beta · C with A, B of `input_type` (f32 or bf16) and C f32.
/// op(A) is M×K: A is stored M×K with leading dimension lda, or K×M when transpose_a. Likewise B.
static inline dnnl_status_t convoy_dnnl_matmul_create(
    convoy_dnnl_matmul **result, dnnl_engine_t engine,
    int64_t m, int64_t n, int64_t k, int transpose_a, int transpose_b,
    int64_t lda, int64_t ldb, int64_t ldc, dnnl_data_type_t input_type, float alpha, float beta) {
    *result = NULL;
    dnnl_memory_desc_t source_md, weights_md, destination_md;
    dnnl_dims_t source_dims = {m, k}, weights_dims = {k, n}, destination_dims = {m, n};
    dnnl_dims_t source_strides = {lda, 1}, weights_strides = {ldb, 1}, destination_strides = {ldc, 1};
    if (transpose_a) { source_strides[0] = 1; source_strides[1] = lda; }
    if (transpose_b) { weights_strides[0] = 1; weights_strides[1] = ldb; }
    dnnl_status_t status;
    if ((status = dnnl_memory_desc_init_by_strides(&source_md, 2, source_dims, input_type, source_strides))) return status;
    if ((status = dnnl_memory_desc_init_by_strides(&weights_md, 2, weights_dims, input_type, weights_strides))) return status;
    if ((status = dnnl_memory_desc_init_by_strides(&destination_md, 2, destination_dims, dnnl_f32, destination_strides))) return status;
    dnnl_matmul_desc_t descriptor;
    if ((status = dnnl_matmul_desc_init(&descriptor, &source_md, &weights_md, NULL, &destination_md))) return status;

    dnnl_primitive_attr_t attributes;
    if ((status = dnnl_primitive_attr_create(&attributes))) return status;
    dnnl_post_ops_t post_ops = NULL;
    // A user scratchpad per primitive: the library's default one is shared between primitives, which is
    // unsafe when ranks (threads) execute concurrently.
    status = dnnl_primitive_attr_set_scratchpad_mode(attributes, dnnl_scratchpad_mode_user);
    if (!status && alpha != 1.0f) status = dnnl_primitive_attr_set_output_scales(attributes, 1, 0, &alpha);
    if (!status && beta != 0.0f) {
        status = dnnl_post_ops_create(&post_ops);
        if (!status) status = dnnl_post_ops_append_sum(post_ops, beta);
        if (!status) status = dnnl_primitive_attr_set_post_ops(attributes, post_ops);
    }
    dnnl_primitive_desc_t primitive_desc = NULL;
    if (!status) status = dnnl_primitive_desc_create(&primitive_desc, &descriptor, attributes, engine, NULL);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    dnnl_primitive_attr_destroy(attributes);
    if (status) return status;

    convoy_dnnl_matmul *matmul = (convoy_dnnl_matmul *)calloc(1, sizeof(convoy_dnnl_matmul));
    const char *implementation = NULL;
    dnnl_primitive_desc_query(primitive_desc, dnnl_query_impl_info_str, 0, &implementation);
    if (implementation) strncpy(matmul->implementation, implementation, sizeof(matmul->implementation) - 1);
    const dnnl_memory_desc_t *scratchpad_md = dnnl_primitive_desc_query_md(primitive_desc, dnnl_query_scratchpad_md, 0);
    size_t scratchpad_bytes = scratchpad_md ? dnnl_memory_desc_get_size(scratchpad_md) : 0;
    status = dnnl_primitive_create(&matmul->primitive, primitive_desc);
    if (!status) status = dnnl_memory_create(&matmul->source, &source_md, engine, DNNL_MEMORY_NONE);
    if (!status) status = dnnl_memory_create(&matmul->weights, &weights_md, engine, DNNL_MEMORY_NONE);
    if (!status) status = dnnl_memory_create(&matmul->destination, &destination_md, engine, DNNL_MEMORY_NONE);
    if (!status && scratchpad_bytes > 0) {
        matmul->scratchpad_buffer = aligned_alloc(64, (scratchpad_bytes + 63) / 64 * 64);
        status = matmul->scratchpad_buffer ? dnnl_success : dnnl_out_of_memory;
        if (!status) status = dnnl_memory_create(&matmul->scratchpad, scratchpad_md, engine, matmul->scratchpad_buffer);
    }
    dnnl_primitive_desc_destroy(primitive_desc);
    if (status) { convoy_dnnl_matmul_destroy(matmul); return status; }
    *result = matmul;
    return dnnl_success;
}

#else
#error "Convoy's oneDNN shim supports the 2.x API (Debian's libdnnl-dev 2.6); add a DNNL_VERSION_MAJOR branch of convoy_dnnl_matmul_create for this version"
#endif

/// Runs a matmul made by convoy_dnnl_matmul_create on the given pointers; not thread-safe for one matmul
/// (it sets the memory objects' data handles), so each thread keeps its own.
static inline dnnl_status_t convoy_dnnl_matmul_execute(
    const convoy_dnnl_matmul *matmul, dnnl_stream_t stream, const void *a, const void *b, float *c) {
    dnnl_status_t status;
    if ((status = dnnl_memory_set_data_handle(matmul->source, (void *)a))) return status;
    if ((status = dnnl_memory_set_data_handle(matmul->weights, (void *)b))) return status;
    if ((status = dnnl_memory_set_data_handle(matmul->destination, c))) return status;
    dnnl_exec_arg_t arguments[4] = {
        {DNNL_ARG_SRC, matmul->source},
        {DNNL_ARG_WEIGHTS, matmul->weights},
        {DNNL_ARG_DST, matmul->destination},
        {DNNL_ARG_SCRATCHPAD, matmul->scratchpad},
    };
    int count = matmul->scratchpad ? 4 : 3;
    if ((status = dnnl_primitive_execute(matmul->primitive, stream, count, arguments))) return status;
    return dnnl_stream_wait(stream);
}

#endif
