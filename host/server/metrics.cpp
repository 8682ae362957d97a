// Prometheus text rendering of the daemon's counters, gauges and histograms.
#include "host/server/metrics.h"

#include <cstdio>

namespace tessera::server {

namespace {

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

void Metrics::Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

Metrics::Metrics() {
  ttft_.bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  itl_.bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
  ttft_.counts.assign(ttft_.bounds.size() + 1, 0);
  itl_.counts.assign(itl_.bounds.size() + 1, 0);
}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::count_tokens(int prompt, int generated) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += uint64_t(prompt);
  generated_tokens_ += uint64_t(generated);
}

void Metrics::observe_ttft(double seconds) {
  std::lock_guard lock(mutex_);
  ttft_.observe(seconds);
}

void Metrics::observe_itl(double seconds) {
  std::lock_guard lock(mutex_);
  itl_.observe(seconds);
}

void Metrics::set_engine(EngineGauges gauges) {
  std::lock_guard lock(mutex_);
  engine_ = std::move(gauges);
}

EngineGauges Metrics::engine() const {
  std::lock_guard lock(mutex_);
  return engine_;
}

std::string Metrics::render(int in_flight) const {
  std::lock_guard lock(mutex_);
  std::string out;
  auto head = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  head("tessera_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
  for (const auto& [key, n] : requests_)
    out += "tessera_requests_total{endpoint=\"" + key.first + "\",status=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  head("tessera_prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
  out += "tessera_prompt_tokens_total " + std::to_string(prompt_tokens_) + "\n";
  head("tessera_generated_tokens_total", "counter", "Tokens generated.");
  out += "tessera_generated_tokens_total " + std::to_string(generated_tokens_) + "\n";
  head("tessera_requests_in_flight", "gauge", "Generation requests accepted and not yet answered.");
  out += "tessera_requests_in_flight " + std::to_string(in_flight) + "\n";
  head("tessera_queue_depth", "gauge", "Requests waiting in the engine for admission.");
  out += "tessera_queue_depth " + std::to_string(engine_.waiting) + "\n";
  head("tessera_running_sequences", "gauge", "Sequences in the running batch.");
  out += "tessera_running_sequences " + std::to_string(engine_.running) + "\n";
  head("tessera_kv_blocks_used", "gauge",
       "KV-cache blocks in use, per device and layer group (full or window_N).");
  for (const auto& g : engine_.kv)
    out += "tessera_kv_blocks_used{device=\"" + g.device + "\",layers=\"" + g.layers + "\"} " +
           std::to_string(g.used) + "\n";
  head("tessera_kv_blocks_free", "gauge",
       "KV-cache blocks free, per device and layer group (full or window_N).");
  for (const auto& g : engine_.kv)
    out += "tessera_kv_blocks_free{device=\"" + g.device + "\",layers=\"" + g.layers + "\"} " +
           std::to_string(g.total - g.used) + "\n";
  head("tessera_device_expert_busy_seconds_total", "counter",
       "Busy time of expert work per device (host-timed).");
  for (const auto& d : engine_.devices)
    out += "tessera_device_expert_busy_seconds_total{device=\"" + d.device + "\"} " +
           fmt(d.expert_seconds) + "\n";
  head("tessera_engine_steps_total", "counter", "Engine steps run.");
  out += "tessera_engine_steps_total " + std::to_string(engine_.steps) + "\n";
  head("tessera_engine_step_seconds_total", "counter", "Wall time of engine steps.");
  out += "tessera_engine_step_seconds_total " + fmt(engine_.step_seconds) + "\n";
  auto histogram = [&](const char* name, const char* help, const Histogram& h) {
    head(name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i < h.bounds.size(); ++i) {
      cum += h.counts[i];
      out += std::string(name) + "_bucket{le=\"" + fmt(h.bounds[i]) + "\"} " + std::to_string(cum) +
             "\n";
    }
    cum += h.counts.back();
    out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
    out += std::string(name) + "_sum " + fmt(h.sum) + "\n";
    out += std::string(name) + "_count " + std::to_string(h.count) + "\n";
  };
  histogram("tessera_time_to_first_token_seconds", "From request received to its first token.",
            ttft_);
  histogram("tessera_inter_token_latency_seconds", "Between consecutive tokens of a request.",
            itl_);
  return out;
}

}  // namespace tessera::server
