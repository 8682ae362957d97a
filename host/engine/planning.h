// From devices and a config to a Plan: the planner's inputs measured or read off the devices.
#pragma once

#include <string>
#include <vector>

#include "devices/device.h"
#include "devices/probes.h"
#include "scheduler/config.h"
#include "scheduler/planner.h"

namespace tessera::engine {

// The planner's view of `device`: probe figures when given (else conservative defaults by device
// type) and the budget the config sets (default 90% of the device's memory).
sched::DeviceCost device_cost(const Device& device, const ProbeResult* probe,
                              const sched::Config& config);

// Selects devices by `config`, measures them through `probes` (cached; nullptr: no measurement)
// and plans `footprint` on them.
sched::Plan plan_for(const DeviceRegistry& registry, const sched::Config& config,
                     const sched::ModelFootprint& footprint, const ProbeCache* probes);

// The config the command line describes: a YAML file (optional), then `--set KEY=VALUE` overrides,
// then `--device ID` (shorthand for selecting that one device). Throws sched::ConfigError.
sched::Config config_from_cli(const std::string& config_path, const std::vector<std::string>& sets,
                              const std::string& device);

}  // namespace tessera::engine
