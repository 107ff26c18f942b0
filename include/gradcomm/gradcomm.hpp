// gradcomm/gradcomm.hpp — everything the present compiler can build, in one include.
//
//   #include <gradcomm/gradcomm.hpp>
//   using codec = gradcomm::bf16_codec;
//   gradcomm::local_world world(4);
//
// Plain C++ always gets the core, the codecs, the local transport and the
// communicators. The CUDA parts (.cuh) come in only under nvcc, the NCCL and
// MPI transports only where the program links gradcomm::nccl / gradcomm::mpi, and
// PowerSGD only where it links gradcomm::eigen.
#pragma once

#include <gradcomm/core/bitpack.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/fp8_block.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/per_tensor.hpp>
#include <gradcomm/codec/powersgd.hpp>  // a stub without gradcomm::eigen
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/codec/vector_quant.hpp>
#include <gradcomm/codec/warmup.hpp>

#include <gradcomm/transport/local.hpp>
#include <gradcomm/transport/mpi.hpp>  // a stub without gradcomm::mpi
#include <gradcomm/transport/transport.hpp>

#include <gradcomm/comm/advise.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/comm/topology.hpp>

#if GRADCOMM_CUDA_COMPILER
#include <gradcomm/core/cuda/error.cuh>
#include <gradcomm/core/cuda/stream.cuh>
#endif
