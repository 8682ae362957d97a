// `tessera devices [--json] [--probe]`: every OpenCL device, its capabilities and measured speed.
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "devices/device.h"
#include "devices/probes.h"
#include "host/cli/command.h"
#include "host/cli/settings.h"

namespace tessera::cli {
namespace {

std::string features(const DeviceCaps& c) {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ',';
    s += name;
  };
  add(c.fp16, "fp16");
  add(c.fp64, "fp64");
  add(c.subgroups, "subgroups");
  add(c.int_dot_product, "dot");
  add(c.unified_memory, "unified");
  add(c.svm_fine_grain, "svm");
  return s.empty() ? "-" : s;
}

int run_devices(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description opts("tessera devices options");
  opts.add_options()("help,h", "show this help")("json", "print JSON instead of a table")(
      "probe", "re-measure every device even when cached measurements exist")(
      "no-measure", "show capabilities only; skip measurements that are not cached");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: tessera devices [--json] [--probe]\n" << opts;
    return 0;
  }
  auto registry = tessera::cli::discover_devices();
  ProbeCache cache = tessera::cli::probe_cache();
  std::vector<std::optional<ProbeResult>> probes;
  for (const auto& d : registry.devices()) {
    if (vm.count("no-measure") && !vm.count("probe")) {
      probes.push_back(cache.load(d->info()));
    } else {
      if (!vm.count("json") && !cache.load(d->info()))
        std::fprintf(stderr, "measuring %s ...\n", d->info().label().c_str());
      probes.push_back(cache.get(*d, vm.count("probe") > 0));
    }
  }

  if (vm.count("json")) {
    boost::json::array arr;
    for (size_t i = 0; i < registry.devices().size(); ++i) {
      const auto& info = registry.devices()[i]->info();
      boost::json::object o;
      o["id"] = info.id;
      o["platform_index"] = info.platform_index;
      o["device_index"] = info.device_index;
      o["type"] = device_type_name(info.type);
      o["vendor"] = info.vendor;
      o["vendor_class"] = vendor_class_name(info.vendor_class);
      o["name"] = info.name;
      o["platform"] = info.platform_name;
      o["platform_version"] = info.platform_version;
      o["driver_version"] = info.driver_version;
      o["opencl_c_version"] = info.opencl_c_version;
      o["global_mem_bytes"] = info.global_mem_bytes;
      o["max_alloc_bytes"] = info.max_alloc_bytes;
      o["local_mem_bytes"] = info.local_mem_bytes;
      o["compute_units"] = info.compute_units;
      o["max_work_group_size"] = info.max_work_group_size;
      o["max_work_item_sizes"] = {info.max_work_item_sizes[0], info.max_work_item_sizes[1],
                                  info.max_work_item_sizes[2]};
      o["max_global_items"] = info.max_global_items;
      o["max_loop_iterations"] = info.max_loop_iterations;  // 0: no limit
      o["fp16"] = info.caps.fp16;
      o["fp64"] = info.caps.fp64;
      o["subgroups"] = info.caps.subgroups;
      o["int_dot_product"] = info.caps.int_dot_product;
      o["unified_memory"] = info.caps.unified_memory;
      o["svm_fine_grain"] = info.caps.svm_fine_grain;
      if (probes[i]) {
        boost::json::object p;
        p["read_gbps"] = probes[i]->read_gbps;
        p["read_pattern"] = probes[i]->read_pattern;
        p["h2d_gbps"] = probes[i]->h2d_gbps;
        p["d2h_gbps"] = probes[i]->d2h_gbps;
        p["fp32_gflops"] = probes[i]->fp32_gflops;
        p["launch_latency_us"] = probes[i]->launch_latency_us;
        p["launch_stream_us"] = probes[i]->launch_stream_us;
        p["measured_at"] = probes[i]->measured_at;
        if (!probes[i]->note.empty()) p["note"] = probes[i]->note;
        o["probe"] = p;
      }
      arr.push_back(o);
    }
    std::cout << boost::json::serialize(arr) << "\n";
    return 0;
  }

  std::printf("%-6s %-5s %-10s %-34s %9s %4s %-22s %9s %8s %8s %9s %8s %8s\n", "id", "type",
              "vendor", "name", "memory", "CUs", "features", "read GB/s", "h2d GB/s", "d2h GB/s",
              "GFLOP/s", "launch", "stream");
  for (size_t i = 0; i < registry.devices().size(); ++i) {
    const auto& info = registry.devices()[i]->info();
    std::string name = info.name.size() > 34 ? info.name.substr(0, 31) + "..." : info.name;
    std::printf("%-6s %-5s %-10s %-34s %7.1fGB %4u %-22s", info.id.c_str(),
                device_type_name(info.type), vendor_class_name(info.vendor_class), name.c_str(),
                double(info.global_mem_bytes) / 1e9, info.compute_units,
                features(info.caps).c_str());
    if (probes[i]) {
      std::printf(" %9.1f %8.1f %8.1f %9.1f %6.1fus %6.1fus\n", probes[i]->read_gbps,
                  probes[i]->h2d_gbps, probes[i]->d2h_gbps, probes[i]->fp32_gflops,
                  probes[i]->launch_latency_us, probes[i]->launch_stream_us);
    } else {
      std::printf(" %9s %8s %8s %9s %8s %8s\n", "-", "-", "-", "-", "-", "-");
    }
  }
  for (const auto& d : registry.devices()) {
    const auto& info = d->info();
    std::printf("%s: %s | %s | driver %s | %s\n", info.id.c_str(), info.platform_name.c_str(),
                info.device_version.c_str(), info.driver_version.c_str(),
                info.opencl_c_version.c_str());
  }
  return 0;
}

const CommandRegistrar kRegistrar("devices",
                                  "list every OpenCL device with capabilities and measured speed",
                                  run_devices);

}  // namespace
}  // namespace tessera::cli
