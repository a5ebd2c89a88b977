// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are macros over addresses of global objects,
// which Swift cannot import. These static inline accessors expose them as ordinary functions.
#ifndef CONVOY_CMPI_SHIM_H
#define CONVOY_CMPI_SHIM_H
#include <mpi.h>

// Communicators.
static inline MPI_Comm convoy_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm convoy_mpi_comm_null(void) { return MPI_COMM_NULL; }

// Datatypes.
static inline MPI_Datatype convoy_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype convoy_mpi_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Datatype convoy_mpi_int(void) { return MPI_INT; }

// Reduction operations.
static inline MPI_Op convoy_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op convoy_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op convoy_mpi_min(void) { return MPI_MIN; }

// Error handling.
static inline int convoy_mpi_success(void) { return MPI_SUCCESS; }
static inline MPI_Errhandler convoy_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int convoy_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }

// Requests, statuses and special buffers.
static inline MPI_Request convoy_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *convoy_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline void *convoy_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline int convoy_mpi_undefined(void) { return MPI_UNDEFINED; }
static inline int convoy_mpi_any_source(void) { return MPI_ANY_SOURCE; }
static inline int convoy_mpi_status_source(const MPI_Status *status) { return status->MPI_SOURCE; }
static inline int convoy_mpi_status_tag(const MPI_Status *status) { return status->MPI_TAG; }
static inline int convoy_mpi_status_error(const MPI_Status *status) { return status->MPI_ERROR; }

// Thread support levels.
static inline int convoy_mpi_thread_single(void) { return MPI_THREAD_SINGLE; }
static inline int convoy_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int convoy_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int convoy_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }

/// The largest tag this MPI accepts (the MPI_TAG_UB attribute of MPI_COMM_WORLD; at least 32767).
static inline int convoy_mpi_tag_upper_bound(void) {
    int *value = 0;
    int found = 0;
    if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &value, &found) != MPI_SUCCESS || !found || !value) return 32767;
    return *value;
}

/// The MPI standard version the library implements (callable before MPI_Init).
static inline int convoy_mpi_version(int *major, int *minor) { return MPI_Get_version(major, minor); }

/// The library's own version string (callable before MPI_Init).
static inline int convoy_mpi_library_version(char *buffer, int *length) {
    return MPI_Get_library_version(buffer, length);
}
static inline int convoy_mpi_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
#endif
