// The daemon's structured logs: one event per line, `msg` and fields, as text (`msg k=v ...`) or
// as JSON objects (--log-format json, also for every other spdlog message of the process).
#pragma once

#include <spdlog/spdlog.h>
#include <boost/json/object.hpp>

#include <string>

namespace tessera::server {

// Replaces the default logger's sinks with one writing each message to stderr as a JSON object
// {"time", "level", "msg", ...fields}. Call once, before threads start.
void use_json_logs();
bool json_logs();

// Logs `msg` with `fields` at `level` in the current format. Thread-safe.
void log_event(spdlog::level::level_enum level, const std::string& msg,
               const boost::json::object& fields);

}  // namespace tessera::server
