#pragma once
#include <zlib.h>

// deflateInit2 is a macro, which Swift cannot call: this wraps it for a gzip-format stream
// (window bits 15 + 16 selects the gzip header and trailer).
static inline int spsh_deflate_init_gzip(z_streamp strm, int level) {
    return deflateInit2(strm, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
