// scale_layout.cuh: the 128x4 swizzled block-scale layout, shared by every kernel of the library.
//
// A scale matrix of R rows (M or N) and S scale columns (K / block size) is padded to
// round_up(R, 128) rows and S_pad = round_up(S, 4) columns and stored as 512-byte tiles of
// 128 rows x 4 columns, tiles ordered row-block-major. Inside a tile, row r sits in sub-block
// (r % 128) / 32 and lane r % 32: the 16 bytes of lane j hold the 4 columns of rows j, j + 32,
// j + 64, j + 96. This is torchao's to_blocked and dq_kernels.formats.to_blocked.
#pragma once

#include <cstdint>

namespace dq {

// Byte offset of the scale of (row, col) in a swizzled buffer whose padded column count is
// padded_cols (a multiple of 4). row, col >= 0.
__host__ __device__ inline int64_t swizzled_scale_offset(int64_t row, int64_t col, int64_t padded_cols) {
  return (row / 128) * (padded_cols / 4) * 512 + (col / 4) * 512 + (row % 32) * 16 + ((row % 128) / 32) * 4 +
         col % 4;
}

// round_up(scale_cols, 4): the padded column count of a swizzled buffer.
__host__ __device__ inline int64_t swizzled_padded_cols(int64_t scale_cols) { return (scale_cols + 3) / 4 * 4; }

}  // namespace dq
