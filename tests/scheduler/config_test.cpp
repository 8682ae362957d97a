// Config parsing: the shipped examples parse; unknown keys, wrong types, missing devices and
// impossible budgets are errors naming the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "scheduler/config.h"

namespace tessera::sched {
namespace {

std::vector<DeviceInfo> fake_devices() {
  DeviceInfo gpu;
  gpu.id = "gpu0";
  gpu.type = DeviceType::kGpu;
  gpu.name = "NVIDIA H100 80GB HBM3";
  gpu.vendor = "NVIDIA Corporation";
  gpu.vendor_class = VendorClass::kNvidia;
  gpu.platform_name = "NVIDIA CUDA";
  gpu.platform_index = 0;
  gpu.device_index = 0;
  gpu.global_mem_bytes = 80ull << 30;
  DeviceInfo cpu;
  cpu.id = "cpu0";
  cpu.type = DeviceType::kCpu;
  cpu.name = "pthread-sapphirerapids";
  cpu.vendor = "GenuineIntel";
  cpu.vendor_class = VendorClass::kPocl;
  cpu.platform_name = "Portable Computing Language";
  cpu.platform_index = 1;
  cpu.device_index = 0;
  cpu.global_mem_bytes = 64ull << 30;
  return {gpu, cpu};
}

std::string error_of(const std::string& yaml) {
  try {
    auto c = parse_config(yaml, "test.yaml");
    c.select_devices(fake_devices());
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, ShippedExamplesParse) {
  const std::filesystem::path dir = std::filesystem::path(TESSERA_SOURCE_DIR) / "configs";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    EXPECT_NO_THROW(load_config(e.path().string())) << e.path();
  }
  EXPECT_GE(n, 4);
}

TEST(ConfigTest, SelectionByTypeVendorNamePlatformId) {
  auto devs = fake_devices();
  auto sel = [&](const std::string& y) {
    std::string ids;
    for (auto* d : parse_config(y, "t").select_devices(devs)) ids += d->id + " ";
    return ids;
  };
  EXPECT_EQ(sel(""), "gpu0 cpu0 ");
  EXPECT_EQ(sel("devices: {select: [{type: cpu}]}"), "cpu0 ");
  EXPECT_EQ(sel("devices: {select: {vendor: nvidia}}"), "gpu0 ");
  EXPECT_EQ(sel("devices: {select: {vendor: pocl}}"), "cpu0 ");
  EXPECT_EQ(sel("devices: {select: {name: '*h100*'}}"), "gpu0 ");
  EXPECT_EQ(sel("devices: {select: {platform: 1}}"), "cpu0 ");
  EXPECT_EQ(sel("devices: {select: {platform: cuda}}"), "gpu0 ");
  EXPECT_EQ(sel("devices: {select: [cpu0]}"), "cpu0 ");
  EXPECT_EQ(sel("devices: {select: {id: '1:0'}}"), "cpu0 ");
  EXPECT_EQ(sel("devices: {exclude: [{type: gpu}]}"), "cpu0 ");
}

TEST(ConfigTest, UnknownKeysAreNamed) {
  auto e = error_of("devices: {selekt: [{type: cpu}]}");
  EXPECT_NE(e.find("devices.selekt"), std::string::npos) << e;
  EXPECT_NE(e.find("select"), std::string::npos) << e;  // lists the valid keys
  e = error_of("placment: {}");
  EXPECT_NE(e.find("placment"), std::string::npos) << e;
  e = error_of("devices: {select: [{type: cpu, colour: red}]}");
  EXPECT_NE(e.find("devices.select[0].colour"), std::string::npos) << e;
}

TEST(ConfigTest, WrongTypesAreNamed) {
  auto e = error_of("balancer: {enabled: maybe}");
  EXPECT_NE(e.find("balancer.enabled"), std::string::npos) << e;
  e = error_of("batching: {max_sequences: lots}");
  EXPECT_NE(e.find("batching.max_sequences"), std::string::npos) << e;
  e = error_of("devices: {select: [{type: fpga}]}");
  EXPECT_NE(e.find("devices.select[0].type"), std::string::npos) << e;
  EXPECT_NE(e.find("accelerator"), std::string::npos) << e;
  e = error_of("kv_cache: {layers: {'0-x': q8_0}}");
  EXPECT_NE(e.find("kv_cache.layers.0-x"), std::string::npos) << e;
  e = error_of("kv_cache: {layers: {'3': {k_format: q9}}}");
  EXPECT_NE(e.find("kv_cache.layers.3.k_format"), std::string::npos) << e;
  e = error_of("kv_cache: {format: q2}");
  EXPECT_NE(e.find("kv_cache.format"), std::string::npos) << e;
  EXPECT_NE(e.find("turbo3"), std::string::npos) << e;
  e = error_of("devices: {budgets: {cpu0: lots}}");
  EXPECT_NE(e.find("devices.budgets.cpu0"), std::string::npos) << e;
  e = error_of("devices: [1, 2]");
  EXPECT_NE(e.find("devices"), std::string::npos) << e;
  e = error_of("{unclosed: [");
  EXPECT_NE(e.find("not valid YAML"), std::string::npos) << e;
}

TEST(ConfigTest, MissingDevicesListWhatExists) {
  auto e = error_of("devices: {select: [gpu3]}");
  EXPECT_NE(e.find("gpu3"), std::string::npos) << e;
  EXPECT_NE(e.find("gpu0"), std::string::npos) << e;
  EXPECT_NE(e.find("cpu0"), std::string::npos) << e;
  e = error_of("placement: {attention: gpu1}");
  EXPECT_NE(e.find("placement.attention"), std::string::npos) << e;
  e = error_of("devices: {select: [{type: cpu}]}\nplacement: {attention: gpu0}");
  EXPECT_NE(e.find("not among the selected"), std::string::npos) << e;
  e = error_of("placement: {experts: {shares: {acc0: 1}}}");
  EXPECT_NE(e.find("placement.experts.shares.acc0"), std::string::npos) << e;
}

TEST(ConfigTest, BudgetsAboveMemoryAreErrors) {
  auto e = error_of("devices: {budgets: {cpu0: 100GiB}}");
  EXPECT_NE(e.find("devices.budgets.cpu0"), std::string::npos) << e;
  EXPECT_NE(e.find("exceeds"), std::string::npos) << e;
  EXPECT_EQ(error_of("devices: {budgets: {cpu0: 32GiB, gpu0: 50%}}"), "");
}

TEST(ConfigTest, BudgetUnits) {
  EXPECT_EQ(parse_budget("40GiB", "k").bytes, 40ull << 30);
  EXPECT_EQ(parse_budget("512 MiB", "k").bytes, 512ull << 20);
  EXPECT_EQ(parse_budget("2GB", "k").bytes, 2000000000ull);
  EXPECT_EQ(parse_budget("1234", "k").bytes, 1234ull);
  EXPECT_DOUBLE_EQ(parse_budget("80%", "k").fraction, 0.8);
  EXPECT_EQ(parse_budget("50%", "k").resolve(1000), 500u);
  EXPECT_THROW(parse_budget("0", "k"), ConfigError);
  EXPECT_THROW(parse_budget("150%", "k"), ConfigError);
  EXPECT_THROW(parse_budget("12 parsecs", "k"), ConfigError);
  EXPECT_THROW(parse_budget("", "k"), ConfigError);
}

TEST(ConfigTest, PinsAndCommandLineOverrides) {
  auto c = parse_config(
      "placement: {experts: {pins: [{device: cpu0, layers: '0-7', experts: all}]}}", "t");
  ASSERT_EQ(c.experts_mode, "pins");
  ASSERT_EQ(c.expert_pins.size(), 1u);
  EXPECT_EQ(c.expert_pins[0].layer_last, 7);
  EXPECT_EQ(c.expert_pins[0].expert_last, -1);
  apply_override(c, "placement.attention=gpu0");
  apply_override(c, "balancer.enabled=false");
  apply_override(c, "devices.budgets.cpu0=8GiB");
  apply_override(c, "kv_cache.format=q8_0");
  EXPECT_EQ(c.attention, "gpu0");
  EXPECT_FALSE(c.balancer);
  EXPECT_EQ(c.budgets["cpu0"].bytes, 8ull << 30);
  EXPECT_EQ(c.kv_format, "q8_0");
  apply_override(c, "kv_cache.v_format=Q4_0");
  apply_override(c, "kv_cache.layers.0=f16");
  apply_override(c, "kv_cache.layers.22-23.k_format=f16");
  apply_override(c, "kv_cache.layers.22-23.v_format=q8_0");
  EXPECT_EQ(c.kv_v_format, "q4_0");
  EXPECT_EQ(c.kv_k_format, "");
  ASSERT_EQ(c.kv_layers.size(), 2u);
  EXPECT_EQ(c.kv_layers["0"].k_format, "f16");
  EXPECT_EQ(c.kv_layers["0"].v_format, "f16");
  EXPECT_EQ(c.kv_layers["22-23"].first, 22);
  EXPECT_EQ(c.kv_layers["22-23"].k_format, "f16");  // merged, not replaced
  EXPECT_EQ(c.kv_layers["22-23"].v_format, "q8_0");
  EXPECT_EQ(c.experts_mode, "pins");  // untouched by unrelated overrides
  apply_override(c, "placement.experts.shares.gpu0=3");
  apply_override(c, "placement.experts.shares.cpu0=1");
  EXPECT_EQ(c.experts_mode, "shares");
  EXPECT_EQ(c.expert_shares.size(), 2u);
  EXPECT_DOUBLE_EQ(c.expert_shares["gpu0"], 3.0);
  EXPECT_THROW(apply_override(c, "placement.atention=gpu0"), ConfigError);
  EXPECT_THROW(apply_override(c, "no-equals-sign"), ConfigError);
  EXPECT_THROW(apply_override(c, "balancer.enabled=perhaps"), ConfigError);
  EXPECT_THROW(parse_config("placement: {experts: {pins: [{layers: '1-2'}]}}", "t"), ConfigError);
  EXPECT_THROW(parse_config("placement: {experts: {pins: [{device: cpu0, layers: '5-2'}]}}", "t"),
               ConfigError);
}

TEST(ConfigTest, BatchingKeysAreSetOnlyWhenGiven) {
  auto c = parse_config("balancer: false", "t");
  EXPECT_FALSE(c.max_sequences);  // unset: the command's own default applies
  EXPECT_FALSE(c.max_batch_tokens);
  EXPECT_FALSE(c.prefill_chunk);
  c = parse_config("batching: {max_sequences: 4, max_batch_tokens: 64, prefill_chunk: 16}", "t");
  EXPECT_EQ(c.max_sequences, 4);
  EXPECT_EQ(c.max_batch_tokens, 64);
  EXPECT_EQ(c.prefill_chunk, 16);
  apply_override(c, "batching.max_batch_tokens=128");
  apply_override(c, "batching.prefill_chunk=32");
  EXPECT_EQ(c.max_batch_tokens, 128);
  EXPECT_EQ(c.prefill_chunk, 32);
  EXPECT_EQ(c.max_sequences, 4);
  EXPECT_NE(error_of("batching: {prefill_chunk: 0}").find("batching.prefill_chunk"),
            std::string::npos);
  EXPECT_NE(error_of("batching: {chunk: 8}").find("chunk"), std::string::npos);
}

TEST(ConfigTest, StreamedExpertsKeys) {
  auto c = parse_config("placement: {stream_experts: off, stream_experts_min_tokens: 64}", "t");
  EXPECT_EQ(c.stream_experts, "off");
  EXPECT_EQ(c.stream_experts_min_tokens, 64);
  apply_override(c, "placement.stream_experts=on");
  apply_override(c, "placement.attention=gpu0");  // leaves them alone
  EXPECT_EQ(c.stream_experts, "on");
  EXPECT_EQ(c.stream_experts_min_tokens, 64);
  EXPECT_EQ(parse_config("balancer: true", "t").stream_experts, "auto");
  EXPECT_NE(error_of("placement: {stream_experts: sometimes}")
                .find("placement.stream_experts: expected 'auto', 'on' or 'off', got 'sometimes'"),
            std::string::npos)
      << error_of("placement: {stream_experts: sometimes}");
  EXPECT_NE(error_of("placement: {stream_experts_min_tokens: 0}")
                .find("placement.stream_experts_min_tokens"),
            std::string::npos);
}

// Hard input (issue 12): each message names the key and says what is wrong, not a generic one.
std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, HardInputMessagesNameTheKeyAndTheProblem) {
  auto zero = what_of([] { parse_budget("0", "devices.budgets.cpu0"); });
  EXPECT_NE(zero.find("devices.budgets.cpu0: memory budget '0' must be at least 1 byte"),
            std::string::npos)
      << zero;
  EXPECT_EQ(zero.find("cannot read"), std::string::npos) << zero;
  EXPECT_NE(what_of([] { parse_budget("-5GiB", "k"); }).find("must be at least 1 byte"),
            std::string::npos);
  EXPECT_NE(what_of([] { parse_budget("0%", "k"); }).find("percentage in (0, 100]"),
            std::string::npos);
  EXPECT_NE(what_of([] { parse_budget("12 parsecs", "k"); }).find("cannot read"),
            std::string::npos);

  Config c;
  const auto yaml = what_of([&] { apply_override(c, "placement.experts={shares: [1"); });
  EXPECT_NE(yaml.find("<command line>: placement.experts: value '{shares: [1' is not valid YAML"),
            std::string::npos)
      << yaml;
  EXPECT_NE(what_of([&] { apply_override(c, "placement..attention=gpu0"); }).find("dotted key"),
            std::string::npos);

  const auto dir = what_of([] { load_config(std::filesystem::temp_directory_path().string()); });
  EXPECT_NE(dir.find("not a regular file"), std::string::npos) << dir;
  const auto missing = what_of([] { load_config("/nonexistent/tessera.yaml"); });
  EXPECT_NE(missing.find("no such file"), std::string::npos) << missing;
}

}  // namespace
TEST(ConfigTest, ServerSectionIsCheckedAndOverridable) {
  auto c = parse_config(
      "server:\n  host: 0.0.0.0\n  port: 9000\n  api_key: k\n  model_name: m\n  ctx: 2048\n"
      "  max_queue: 8\n  body_limit: 65536\n  request_timeout: 30\n  idle_timeout: 5.5\n"
      "  grace: 0\n  threads: 4\n  chat_template: harmony\n  log_format: json\n",
      "t");
  const auto& s = c.server;
  EXPECT_EQ(s.host, "0.0.0.0");
  EXPECT_EQ(s.port, 9000);
  EXPECT_EQ(s.api_key, "k");
  EXPECT_EQ(s.model_name, "m");
  EXPECT_EQ(s.ctx, 2048);
  EXPECT_EQ(s.max_queue, 8);
  EXPECT_EQ(s.body_limit, 65536);
  EXPECT_EQ(s.request_timeout, 30.0);
  EXPECT_EQ(s.idle_timeout, 5.5);
  EXPECT_EQ(s.grace, 0.0);
  EXPECT_EQ(s.threads, 4);
  EXPECT_EQ(s.chat_template, "harmony");
  EXPECT_EQ(s.log_format, "json");
  // --set server.KEY=VALUE changes that key only.
  apply_override(c, "server.port=9001");
  apply_override(c, "server.request_timeout=2.5");
  EXPECT_EQ(c.server.port, 9001);
  EXPECT_EQ(c.server.request_timeout, 2.5);
  EXPECT_EQ(c.server.api_key, "k");
  EXPECT_FALSE(parse_config("balancer: false", "t").server.port);  // unset: the flag's default
  // Unknown keys and bad values name the key.
  const std::pair<const char*, const char*> bad[] = {
      {"server: {prot: 80}", "server.prot"},
      {"server: {port: 70000}", "server.port"},
      {"server: {port: http}", "server.port"},
      {"server: {max_queue: -1}", "server.max_queue"},
      {"server: {body_limit: 10}", "server.body_limit"},
      {"server: {request_timeout: 0}", "server.request_timeout"},
      {"server: {idle_timeout: soon}", "server.idle_timeout"},
      {"server: {grace: -1}", "server.grace"},
      {"server: {threads: 0}", "server.threads"},
      {"server: {log_format: xml}", "server.log_format"},
      {"server: {api_key: ''}", "server.api_key"},
      {"server: {host: [a, b]}", "server.host"},
      {"server: 8080", "server"},
  };
  for (const auto& [yaml, key] : bad) {
    const std::string e = error_of(yaml);
    EXPECT_NE(e.find(key), std::string::npos) << yaml << " -> " << e;
  }
  EXPECT_THROW(apply_override(c, "server.threads=100"), ConfigError);
  EXPECT_THROW(apply_override(c, "server.colour=blue"), ConfigError);
}

}  // namespace tessera::sched
