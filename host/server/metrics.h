// The daemon's Prometheus metrics: request counts, token counts, latency histograms and the
// engine's gauges (queue, running sequences, KV blocks, device busy time), rendered as text.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace tessera::server {

// What the engine thread reports after each step.
struct EngineGauges {
  int waiting = 0;  // requests queued in the engine, not yet admitted
  int running = 0;  // sequences in the running batch
  struct KvGroup {
    std::string device;       // a device holding layers of the group (one entry per device)
    std::string layers;       // "full" or "window_N"
    int used = 0, total = 0;  // block ids of the group (each a slot in every layer's pool there)
  };
  std::vector<KvGroup> kv;
  struct DeviceBusy {
    std::string device;
    double expert_seconds = 0;  // busy time of expert work on the device
  };
  std::vector<DeviceBusy> devices;
  uint64_t steps = 0;
  double step_seconds = 0;  // wall time of all steps
};

// Thread-safe: every method may be called from any thread.
class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, int status);
  void count_tokens(int prompt, int generated);
  void observe_ttft(double seconds);
  void observe_itl(double seconds);
  void set_engine(EngineGauges gauges);
  EngineGauges engine() const;
  // Prometheus text exposition format 0.0.4; `pending` is requests accepted by the server and
  // not yet handed to the engine thread's queue.
  std::string render(int in_flight) const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket (not cumulative), plus +Inf
    double sum = 0;
    uint64_t count = 0;
    void observe(double v);
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0;
  Histogram ttft_, itl_;
  EngineGauges engine_;
};

}  // namespace tessera::server
