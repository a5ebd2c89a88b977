// OpenBLAS's CBLAS interface (Debian: libopenblas-dev). The include path comes from pkg-config "openblas".
#include <cblas.h>

// DYNAMIC_ARCH builds (Debian's) pick their kernels once, in a constructor, from the CPU or OPENBLAS_CORETYPE.
// These two functions are exported but not declared in cblas.h: quit forgets the choice, init makes it again
// (reading OPENBLAS_CORETYPE then), so Convoy can choose the core itself before its first GEMM.
void gotoblas_dynamic_quit(void);
void gotoblas_dynamic_init(void);
