// Data-parallel communication on c10d, PyTorch's own distributed engine (the one under
// DDP): a TCPStore for the rendezvous and a Gloo (CPU) or NCCL (CUDA) process group for the
// collectives. The surface is small and opaque on purpose: the gloo headers we compile
// against (Debian's libgloo-dev) are older than the gloo inside libtorch, so no gloo type
// crosses this file, and only c10d's own entry points are called.
#include "ffi.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GCL_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <c10/util/Logging.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

struct GclGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

namespace {

// c10d logs every retry of the rendezvous as a warning with a C++ backtrace; the one error
// that ends the wait says it all, so while joining only fatal messages are logged.
struct QuietLogs {
  int saved = FLAGS_caffe2_log_level;
  QuietLogs() { FLAGS_caffe2_log_level = 3; }
  ~QuietLogs() { FLAGS_caffe2_log_level = saved; }
};

// Waits for a collective within the group's timeout; c10d throws on a peer's failure or on
// the timeout, with its own message.
void wait(GclGroup* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g->timeout)) throw std::runtime_error("a collective did not complete");
}

}  // namespace

// Joins the group: the TCPStore at host:port is served by rank 0 when `serve` (else by the
// launcher: torchrun's agent), every rank connects to it, then the backend (`nccl` = 0: Gloo
// over TCP; 1: NCCL on the current CUDA device) is built.
extern "C" int gcl_dist_init(const char* host, int port, int rank, int world, int serve, int nccl, int64_t timeout_ms, GclGroup** out) {
  return gcl::guarded([&] {
    QuietLogs quiet;
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = serve && rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>("gcl", tcp);
    c10::intrusive_ptr<c10d::Backend> backend;
    if (nccl) {
#ifdef GCL_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
#else
      throw std::runtime_error("this gcl was built without NCCL (scripts/setup.sh installs its headers where torch has CUDA)");
#endif
    } else {
      auto o = c10d::ProcessGroupGloo::Options::create_default(timeout);
      o->timeout = timeout;
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    }
    *out = new GclGroup{store, backend, timeout};
  });
}

extern "C" void gcl_dist_free(GclGroup* g) { delete g; }

// Sums `n` tensors over the group in place, one all-reduce each, all in flight at once
// (the buckets of a flat gradient: the first sends while the next is queued).
extern "C" int gcl_dist_allreduce(GclGroup* g, at::Tensor** ts, int n) {
  return gcl::guarded([&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->backend->allreduce(one, c10d::AllreduceOptions{}));
    }
    for (auto& w : works) wait(g, w);
  });
}

// Replaces `n` tensors with those of rank `root`, all in flight at once.
extern "C" int gcl_dist_broadcast(GclGroup* g, at::Tensor** ts, int n, int root) {
  return gcl::guarded([&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->backend->broadcast(one, o));
    }
    for (auto& w : works) wait(g, w);
  });
}

// Every rank waits here until all have arrived.
extern "C" int gcl_dist_barrier(GclGroup* g) {
  return gcl::guarded([&] { wait(g, g->backend->barrier(c10d::BarrierOptions{})); });
}
