// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are macros over addresses of global objects,
// which Swift cannot import. These static inline accessors expose them as ordinary functions.
// The communication layer (ConvoyComm) grows this shim; for now it carries what start-up diagnostics need.
#ifndef CONVOY_CMPI_SHIM_H
#define CONVOY_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm convoy_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype convoy_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Op convoy_mpi_sum(void) { return MPI_SUM; }
static inline int convoy_mpi_success(void) { return MPI_SUCCESS; }

/// The MPI standard version the library implements (callable before MPI_Init).
static inline int convoy_mpi_version(int *major, int *minor) { return MPI_Get_version(major, minor); }

/// The library's own version string (callable before MPI_Init).
static inline int convoy_mpi_library_version(char *buffer, int *length) {
    return MPI_Get_library_version(buffer, length);
}
static inline int convoy_mpi_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
#endif
