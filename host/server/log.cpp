// JSON log sink and structured events.
#include "host/server/log.h"

#include <spdlog/sinks/base_sink.h>

#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace tessera::server {

namespace {

std::atomic<bool> g_json{false};
constexpr char kFieldsMark = '\x1e';  // a message carrying fields: mark, msg, mark, JSON object

class JsonSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    const std::string_view payload(m.payload.data(), m.payload.size());
    boost::json::object o;
    const auto t = std::chrono::system_clock::to_time_t(m.time);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(m.time.time_since_epoch()).count() %
        1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, int(ms));
    o["time"] = buf;
    const auto level = spdlog::level::to_string_view(m.level);
    o["level"] = std::string_view(level.data(), level.size());
    const size_t second = payload.size() > 1 && payload[0] == kFieldsMark
                              ? payload.find(kFieldsMark, 1)
                              : std::string_view::npos;
    if (second != std::string_view::npos) {
      o["msg"] = payload.substr(1, second - 1);
      boost::system::error_code ec;
      auto fields = boost::json::parse(payload.substr(second + 1), ec);
      if (!ec && fields.is_object())
        for (const auto& kv : fields.get_object()) o[kv.key()] = kv.value();
    } else {
      o["msg"] = payload;
    }
    const std::string line = boost::json::serialize(o) + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }
};

}  // namespace

void use_json_logs() {
  auto logger = spdlog::default_logger();
  logger->sinks().clear();
  logger->sinks().push_back(std::make_shared<JsonSink>());
  g_json = true;
}

bool json_logs() {
  return g_json;
}

void log_event(spdlog::level::level_enum level, const std::string& msg,
               const boost::json::object& fields) {
  if (!spdlog::default_logger()->should_log(level)) return;
  if (g_json) {
    spdlog::log(level, "{}{}{}{}", kFieldsMark, msg, kFieldsMark, boost::json::serialize(fields));
    return;
  }
  std::string line = msg;
  for (const auto& kv : fields) {
    line += " ";
    line += std::string_view(kv.key());
    line += "=";
    if (kv.value().is_string())
      line += std::string_view(kv.value().get_string());
    else
      line += boost::json::serialize(kv.value());
  }
  spdlog::log(level, "{}", line);
}

}  // namespace tessera::server
