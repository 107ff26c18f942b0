// gradcomm/codec/sparse.hpp — sparsification: threshold, top-k (exact and approximate, as in
// Deep Gradient Compression), random-k, and DGC's memory around any of them.
//
//   gradcomm::topk_codec c({.ratio = 0.01});               // the 1 % largest |g|
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));
//   c.decode_add(wire, sum);                               // adds at the indices only
//   double b = gradcomm::sparse_bits_per_index(wire);     // index cost: 11 bits at 1 %
//
//   gradcomm::dgc_memory<gradcomm::approx_topk_codec> dgc(
//       gradcomm::approx_topk_codec({.ratio = 0.001}), {.momentum = 0.9f, .warmup_steps = 1000});
//   wire.resize(dgc.encode(g, wire));                     // the payload is approx_topk's
//
// One header a family (this one includes them all):
//   sparse_format.hpp  the sparse payload of threshold and top-k, encode_sparse, inspect_sparse
//   threshold.hpp      threshold_codec
//   topk.hpp           topk_codec, approx_topk_codec
//   randomk.hpp        randomk_codec, randomk_indices
//   dgc.hpp            dgc_memory around any of them
// and under detail/: sparse_math.hpp and <family>_math.hpp (GRADCOMM_HD per-element
// arithmetic: keys, gaps, random-k's draw, the threshold compare, the radix bin),
// sparse_cpu.hpp (the CPU loops several share: nonfinite scan, largest keys, sum of squares,
// compaction), topk_cpu.hpp and randomk_cpu.hpp (their selections), ef_state.hpp (the state
// framing dgc_memory shares with error_feedback).
//
// Encoders keep their scratch buffers (selected indices and values, sample keys): after the
// first call of a size, an encode allocates only when it selects more than ever before.
// Codecs with scratch are not for use by two threads at once (encode is not const). The
// top-k codecs also take the caller's scratch: encode(in, out, workspace) with
// workspace_bytes(n) bytes allocates nothing.
#pragma once

#include <gradcomm/codec/dgc.hpp>
#include <gradcomm/codec/randomk.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/codec/threshold.hpp>
#include <gradcomm/codec/topk.hpp>
