// YAML device-selection configs: strict parsing (unknown keys and wrong types are errors that name
// the key) and validation against the devices that exist.
#include "scheduler/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

namespace tessera::sched {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool glob_match(const std::string& pattern, const std::string& text) {
  // Iterative * and ? matching with backtracking to the last star.
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  throw ConfigError(source + ": " + (key.empty() ? "" : key + ": ") + what);
}

// Checks that `node` is a map whose keys are all in `allowed`.
void check_keys(const YAML::Node& node, const std::string& source, const std::string& key,
                std::initializer_list<const char*> allowed) {
  if (!node.IsMap()) fail(source, key, "expected a mapping");
  for (const auto& kv : node) {
    const std::string k = kv.first.as<std::string>();
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; })) {
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      fail(source, key.empty() ? k : key + "." + k, "unknown key; valid keys here: " + list);
    }
  }
}

std::string scalar(const YAML::Node& n, const std::string& source, const std::string& key) {
  if (!n.IsScalar()) fail(source, key, "expected a scalar value");
  return n.as<std::string>();
}

bool boolean(const YAML::Node& n, const std::string& source, const std::string& key) {
  const std::string s = lower(scalar(n, source, key));
  if (s == "true" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "no" || s == "off") return false;
  fail(source, key, "expected true or false, got '" + s + "'");
}

int integer(const YAML::Node& n, const std::string& source, const std::string& key, int lo,
            int hi) {
  const std::string s = scalar(n, source, key);
  try {
    size_t used = 0;
    long v = std::stol(s, &used);
    if (used != s.size()) throw std::invalid_argument(s);
    if (v < lo || v > hi)
      fail(source, key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return int(v);
  } catch (const std::logic_error&) {
    fail(source, key, "expected an integer, got '" + s + "'");
  }
}

double number(const YAML::Node& n, const std::string& source, const std::string& key) {
  const std::string s = scalar(n, source, key);
  try {
    size_t used = 0;
    double v = std::stod(s, &used);
    if (used != s.size() || !std::isfinite(v)) throw std::invalid_argument(s);
    return v;
  } catch (const std::logic_error&) {
    fail(source, key, "expected a number, got '" + s + "'");
  }
}

// `server:` (tessera serve's flags): the checks the flags get, each error naming the key.
void parse_server(ServerSettings& s, const YAML::Node& n, const std::string& source) {
  check_keys(
      n, source, "server",
      {"host", "port", "api_key", "model_name", "ctx", "max_queue", "body_limit", "request_timeout",
       "idle_timeout", "grace", "threads", "chat_template", "log_format"});
  auto text = [&](const char* k, std::optional<std::string>& out) {
    if (!n[k]) return;
    out = scalar(n[k], source, std::string("server.") + k);
    if (out->empty()) fail(source, std::string("server.") + k, "is empty");
  };
  auto whole = [&](const char* k, std::optional<int>& out, int lo, int hi) {
    if (n[k]) out = integer(n[k], source, std::string("server.") + k, lo, hi);
  };
  auto seconds = [&](const char* k, std::optional<double>& out, bool zero_ok) {
    if (!n[k]) return;
    out = number(n[k], source, std::string("server.") + k);
    if (*out < 0 || (*out == 0 && !zero_ok))
      fail(source, std::string("server.") + k,
           std::string("must be ") + (zero_ok ? ">= 0" : "> 0") + " seconds");
  };
  text("host", s.host);
  text("api_key", s.api_key);
  text("model_name", s.model_name);
  text("chat_template", s.chat_template);
  text("log_format", s.log_format);
  if (s.log_format && *s.log_format != "text" && *s.log_format != "json")
    fail(source, "server.log_format", "must be text or json, got '" + *s.log_format + "'");
  whole("port", s.port, 0, 65535);
  whole("ctx", s.ctx, 0, 1 << 24);
  whole("max_queue", s.max_queue, 0, 1 << 20);
  whole("body_limit", s.body_limit, 1024, 1 << 30);
  whole("threads", s.threads, 1, 64);
  seconds("request_timeout", s.request_timeout, false);
  seconds("idle_timeout", s.idle_timeout, false);
  seconds("grace", s.grace, true);
}

DeviceType parse_type(const std::string& s, const std::string& source, const std::string& key) {
  const std::string t = lower(s);
  if (t == "gpu") return DeviceType::kGpu;
  if (t == "cpu") return DeviceType::kCpu;
  if (t == "accelerator" || t == "acc" || t == "npu") return DeviceType::kAccelerator;
  if (t == "custom") return DeviceType::kCustom;
  fail(source, key, "unknown device type '" + s + "'; valid: gpu, cpu, accelerator, custom");
}

DeviceSelector parse_selector(const YAML::Node& n, const std::string& source,
                              const std::string& key) {
  DeviceSelector s;
  if (n.IsScalar()) {  // shorthand: a device id
    s.id = n.as<std::string>();
    return s;
  }
  check_keys(n, source, key, {"type", "vendor", "name", "platform", "id"});
  if (n["type"])
    s.type = parse_type(scalar(n["type"], source, key + ".type"), source, key + ".type");
  if (n["vendor"]) s.vendor = scalar(n["vendor"], source, key + ".vendor");
  if (n["name"]) s.name = scalar(n["name"], source, key + ".name");
  if (n["platform"]) s.platform = scalar(n["platform"], source, key + ".platform");
  if (n["id"]) s.id = scalar(n["id"], source, key + ".id");
  return s;
}

std::vector<DeviceSelector> parse_selectors(const YAML::Node& n, const std::string& source,
                                            const std::string& key) {
  std::vector<DeviceSelector> out;
  if (n.IsScalar() || n.IsMap()) {
    out.push_back(parse_selector(n, source, key));
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i)
      out.push_back(parse_selector(n[i], source, key + "[" + std::to_string(i) + "]"));
  } else {
    fail(source, key, "expected a device selector or a list of them");
  }
  return out;
}

// "8-15", "3", "all" -> inclusive range; -1 means "to the end".
std::pair<int, int> parse_range(const std::string& s, const std::string& source,
                                const std::string& key) {
  if (lower(s) == "all") return {0, -1};
  const auto dash = s.find('-');
  try {
    if (dash == std::string::npos) {
      int v = std::stoi(s);
      if (v < 0) throw std::invalid_argument(s);
      return {v, v};
    }
    int a = std::stoi(s.substr(0, dash)), b = std::stoi(s.substr(dash + 1));
    if (a < 0 || b < a) throw std::invalid_argument(s);
    return {a, b};
  } catch (const std::logic_error&) {
    fail(source, key, "expected a range like '8-15', a number or 'all', got '" + s + "'");
  }
}

// host/kv/kv_format.h's names (the prod formats turbo3p / turbo4p are key-only: the engine's
// kv_formats_of refuses them for V, naming the key).
const std::set<std::string> kKvFormats = {"f16",      "q8_0",   "q4_0",     "turbo2",  "turbo2.5",
                                          "turbo3",   "turbo3.5", "turbo4", "turbo3p", "turbo4p"};

// A KV format name at `key`, lower-cased; fails naming the key and the valid names.
std::string kv_format_at(const YAML::Node& n, const std::string& source, const std::string& key) {
  const std::string f = lower(scalar(n, source, key));
  if (!kKvFormats.count(f)) {
    std::string list;
    for (const auto& x : kKvFormats) list += (list.empty() ? "" : ", ") + x;
    fail(source, key, "unknown format '" + f + "'; valid: " + list);
  }
  return f;
}

void parse_into(Config& c, const YAML::Node& root, const std::string& source) {
  if (!root || root.IsNull()) return;  // an empty config selects everything with defaults
  check_keys(root, source, "",
             {"devices", "placement", "kv_cache", "balancer", "batching", "server"});
  if (const auto d = root["devices"]) {
    check_keys(d, source, "devices", {"select", "exclude", "budgets"});
    if (d["select"]) c.select = parse_selectors(d["select"], source, "devices.select");
    if (d["exclude"]) c.exclude = parse_selectors(d["exclude"], source, "devices.exclude");
    if (const auto b = d["budgets"]) {
      if (!b.IsMap()) fail(source, "devices.budgets", "expected a mapping of device id to budget");
      for (const auto& kv : b) {
        const std::string id = kv.first.as<std::string>();
        c.budgets[id] = parse_budget(scalar(kv.second, source, "devices.budgets." + id),
                                     source + ": devices.budgets." + id);
      }
    }
  }
  if (const auto p = root["placement"]) {
    check_keys(
        p, source, "placement",
        {"attention", "experts", "cpu_moe_layers", "stream_experts", "stream_experts_min_tokens"});
    if (p["attention"]) c.attention = scalar(p["attention"], source, "placement.attention");
    if (p["stream_experts"]) {
      c.stream_experts = scalar(p["stream_experts"], source, "placement.stream_experts");
      if (c.stream_experts != "auto" && c.stream_experts != "on" && c.stream_experts != "off")
        fail(source, "placement.stream_experts",
             "expected 'auto', 'on' or 'off', got '" + c.stream_experts + "'");
    }
    if (p["stream_experts_min_tokens"])
      c.stream_experts_min_tokens = integer(p["stream_experts_min_tokens"], source,
                                            "placement.stream_experts_min_tokens", 1, 1 << 20);
    if (p["cpu_moe_layers"])
      c.cpu_moe_layers =
          integer(p["cpu_moe_layers"], source, "placement.cpu_moe_layers", 0, 1 << 20);
    if (const auto e = p["experts"]) {
      if (e.IsScalar()) {
        const std::string v = e.as<std::string>();
        if (v != "auto")
          fail(source, "placement.experts",
               "expected 'auto', {shares: ...} or {pins: ...}, got '" + v + "'");
        c.experts_mode = "auto";
      } else {
        check_keys(e, source, "placement.experts", {"shares", "pins"});
        if (e["shares"] && e["pins"])
          fail(source, "placement.experts", "give shares or pins, not both");
        if (const auto s = e["shares"]) {
          if (!s.IsMap())
            fail(source, "placement.experts.shares", "expected a mapping of device id to share");
          c.experts_mode = "shares";
          for (const auto& kv : s) {
            const std::string id = kv.first.as<std::string>();
            const double v = number(kv.second, source, "placement.experts.shares." + id);
            if (v < 0) fail(source, "placement.experts.shares." + id, "must not be negative");
            c.expert_shares[id] = v;
          }
        }
        if (const auto pins = e["pins"]) {
          if (!pins.IsSequence()) fail(source, "placement.experts.pins", "expected a list");
          c.experts_mode = "pins";
          for (size_t i = 0; i < pins.size(); ++i) {
            const std::string key = "placement.experts.pins[" + std::to_string(i) + "]";
            check_keys(pins[i], source, key, {"device", "layers", "experts"});
            if (!pins[i]["device"]) fail(source, key + ".device", "missing");
            ExpertPin pin;
            pin.device = scalar(pins[i]["device"], source, key + ".device");
            if (pins[i]["layers"])
              std::tie(pin.layer_first, pin.layer_last) = parse_range(
                  scalar(pins[i]["layers"], source, key + ".layers"), source, key + ".layers");
            if (pins[i]["experts"])
              std::tie(pin.expert_first, pin.expert_last) = parse_range(
                  scalar(pins[i]["experts"], source, key + ".experts"), source, key + ".experts");
            c.expert_pins.push_back(pin);
          }
        }
      }
    }
  }
  if (const auto k = root["kv_cache"]) {
    check_keys(k, source, "kv_cache", {"format", "k_format", "v_format", "layers", "budget"});
    if (k["format"]) c.kv_format = kv_format_at(k["format"], source, "kv_cache.format");
    if (k["k_format"]) c.kv_k_format = kv_format_at(k["k_format"], source, "kv_cache.k_format");
    if (k["v_format"]) c.kv_v_format = kv_format_at(k["v_format"], source, "kv_cache.v_format");
    if (const auto layers = k["layers"]) {
      // layers: {RANGE: FORMAT} or {RANGE: {format|k_format|v_format: FORMAT}}
      if (!layers.IsMap())
        fail(source, "kv_cache.layers", "expected a map of layer ranges to formats");
      for (const auto& it : layers) {
        const std::string range = it.first.as<std::string>();
        const std::string key = "kv_cache.layers." + range;
        Config::KvLayerFormats lf;
        std::tie(lf.first, lf.last) = parse_range(range, source, key);  // "all": last -1
        if (it.second.IsMap()) {
          check_keys(it.second, source, key, {"format", "k_format", "v_format"});
          if (it.second["format"])
            lf.k_format = lf.v_format = kv_format_at(it.second["format"], source, key + ".format");
          if (it.second["k_format"])
            lf.k_format = kv_format_at(it.second["k_format"], source, key + ".k_format");
          if (it.second["v_format"])
            lf.v_format = kv_format_at(it.second["v_format"], source, key + ".v_format");
        } else {
          lf.k_format = lf.v_format = kv_format_at(it.second, source, key);
        }
        c.kv_layers[range] = lf;
      }
    }
    if (k["budget"])
      c.kv_budget = parse_budget(scalar(k["budget"], source, "kv_cache.budget"),
                                 source + ": kv_cache.budget");
  }
  if (const auto b = root["balancer"]) {
    if (b.IsScalar()) {
      c.balancer = boolean(b, source, "balancer");
    } else {
      check_keys(b, source, "balancer", {"enabled"});
      if (b["enabled"]) c.balancer = boolean(b["enabled"], source, "balancer.enabled");
    }
  }
  if (const auto b = root["batching"]) {
    check_keys(b, source, "batching", {"max_sequences", "max_batch_tokens", "prefill_chunk"});
    if (b["max_sequences"])
      c.max_sequences = integer(b["max_sequences"], source, "batching.max_sequences", 1, 4096);
    if (b["max_batch_tokens"])
      c.max_batch_tokens =
          integer(b["max_batch_tokens"], source, "batching.max_batch_tokens", 1, 1 << 20);
    if (b["prefill_chunk"])
      c.prefill_chunk = integer(b["prefill_chunk"], source, "batching.prefill_chunk", 1, 1 << 20);
  }
  if (const auto v = root["server"]) parse_server(c.server, v, source);
}

}  // namespace

bool DeviceSelector::matches(const DeviceInfo& d) const {
  if (type && *type != d.type) return false;
  if (vendor) {
    const std::string v = lower(*vendor);
    if (lower(d.vendor).find(v) == std::string::npos && v != vendor_class_name(d.vendor_class))
      return false;
  }
  if (name && !glob_match(lower(*name), lower(d.name))) return false;
  if (platform) {
    const bool numeric =
        !platform->empty() && std::all_of(platform->begin(), platform->end(), ::isdigit);
    if (numeric ? std::stoi(*platform) != d.platform_index
                : lower(d.platform_name).find(lower(*platform)) == std::string::npos)
      return false;
  }
  if (id && *id != d.id &&
      *id != std::to_string(d.platform_index) + ":" + std::to_string(d.device_index))
    return false;
  return true;
}

std::string DeviceSelector::describe() const {
  std::string s;
  auto add = [&](const char* k, const std::string& v) {
    s += (s.empty() ? "" : " ") + std::string(k) + "=" + v;
  };
  if (type) add("type", device_type_name(*type));
  if (vendor) add("vendor", *vendor);
  if (name) add("name", *name);
  if (platform) add("platform", *platform);
  if (id) add("id", *id);
  return s.empty() ? "any" : s;
}

MemoryBudget parse_budget(const std::string& text, const std::string& key) {
  MemoryBudget b;
  std::string s = text;
  s.erase(std::remove_if(s.begin(), s.end(), ::isspace), s.end());
  auto unreadable = [&]() {
    return ConfigError(key + ": cannot read memory budget '" + text +
                       "'; write e.g. 40GiB, 512MiB, 2GB, 80% or a byte count");
  };
  const bool percent = !s.empty() && s.back() == '%';
  const std::string number_text = percent ? s.substr(0, s.size() - 1) : s;
  double v = 0;
  size_t used = 0;
  try {
    v = std::stod(number_text, &used);
  } catch (const std::logic_error&) {
    throw unreadable();
  }
  if (std::isnan(v)) throw unreadable();
  if (percent) {
    if (used != number_text.size()) throw unreadable();
    if (v <= 0 || v > 100)
      throw ConfigError(key + ": memory budget '" + text + "' must be a percentage in (0, 100]");
    b.fraction = v / 100.0;
    return b;
  }
  static const std::map<std::string, double> kUnits = {{"", 1},
                                                       {"b", 1},
                                                       {"k", 1e3},
                                                       {"kb", 1e3},
                                                       {"m", 1e6},
                                                       {"mb", 1e6},
                                                       {"g", 1e9},
                                                       {"gb", 1e9},
                                                       {"t", 1e12},
                                                       {"tb", 1e12},
                                                       {"kib", 1024.0},
                                                       {"mib", 1048576.0},
                                                       {"gib", 1073741824.0},
                                                       {"tib", 1099511627776.0}};
  const auto it = kUnits.find(lower(number_text.substr(used)));
  if (it == kUnits.end()) throw unreadable();
  const double bytes = v * it->second;
  if (bytes < 1)
    throw ConfigError(key + ": memory budget '" + text + "' must be at least 1 byte (0 or less " +
                      "leaves nothing to place)");
  if (!std::isfinite(bytes) || bytes >= 18446744073709551616.0)
    throw ConfigError(key + ": memory budget '" + text + "' is too large");
  b.bytes = uint64_t(bytes);
  return b;
}

std::string format_bytes(uint64_t bytes) {
  char buf[32];
  const double b = double(bytes);
  if (b >= 1073741824.0)
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / 1073741824.0);
  else if (b >= 1048576.0)
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / 1048576.0);
  else if (b >= 1024.0)
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  return buf;
}

Config parse_config(const std::string& yaml_text, const std::string& source) {
  Config c;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": not valid YAML: " + e.what());
  }
  try {
    parse_into(c, root, source);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": " + e.what());
  }
  return c;
}

Config load_config(const std::string& path) {
  // A directory opens as an empty stream (and a FIFO blocks): refuse anything but a regular file.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    throw ConfigError(path + ": cannot open config file (no such file)");
  if (!std::filesystem::is_regular_file(status))
    throw ConfigError(path + ": cannot open config file (not a regular file)");
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw ConfigError(path + ": cannot read config file");
  return parse_config(ss.str(), path);
}

void apply_override(Config& c, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("<command line>: expected KEY=VALUE, got '" + assignment + "'");
  // Build the nested YAML for the dotted key and parse it with the same strict rules.
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ks(key);
  for (std::string p; std::getline(ks, p, '.');) parts.push_back(p);
  const std::string source = "<command line>";  // parse_into's errors name the key after it
  if (parts.empty() || key.back() == '.' ||
      std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }))
    throw ConfigError(source + ": " + key + ": expected a dotted key such as placement.attention");
  Config patch;
  try {
    YAML::Node leaf = YAML::Load(value.empty() ? "\"\"" : value);
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
      YAML::Node parent;
      parent[*it] = leaf;
      leaf = parent;
    }
    parse_into(patch, leaf, source);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": " + key + ": value '" + value +
                      "' is not valid YAML: " + e.what());
  }
  // Merge: only the keys the override names change.
  const std::string top = parts[0];
  if (top == "devices") {
    if (!patch.select.empty()) c.select = patch.select;
    if (!patch.exclude.empty()) c.exclude = patch.exclude;
    for (auto& [id, b] : patch.budgets) c.budgets[id] = b;
  } else if (top == "placement") {
    if (key == "placement.attention") c.attention = patch.attention;
    if (key.rfind("placement.experts.shares.", 0) == 0) {
      // One device's share: merged into the shares given so far.
      if (c.experts_mode != "shares") c.expert_shares.clear();
      c.experts_mode = "shares";
      for (const auto& [id, v] : patch.expert_shares) c.expert_shares[id] = v;
    } else if (key.rfind("placement.experts", 0) == 0) {
      c.experts_mode = patch.experts_mode;
      c.expert_shares = patch.expert_shares;
      c.expert_pins = patch.expert_pins;
    }
    if (patch.cpu_moe_layers) c.cpu_moe_layers = patch.cpu_moe_layers;
    if (key == "placement.stream_experts") c.stream_experts = patch.stream_experts;
    if (patch.stream_experts_min_tokens)
      c.stream_experts_min_tokens = patch.stream_experts_min_tokens;
  } else if (top == "kv_cache") {
    if (key == "kv_cache.format") c.kv_format = patch.kv_format;
    if (key == "kv_cache.k_format") c.kv_k_format = patch.kv_k_format;
    if (key == "kv_cache.v_format") c.kv_v_format = patch.kv_v_format;
    // kv_cache.layers.RANGE[.k_format|.v_format|.format]: merged into that range's entry.
    for (const auto& [range, lf] : patch.kv_layers) {
      auto [it, fresh] = c.kv_layers.try_emplace(range, lf);
      if (fresh) continue;
      if (!lf.k_format.empty()) it->second.k_format = lf.k_format;
      if (!lf.v_format.empty()) it->second.v_format = lf.v_format;
    }
    if (patch.kv_budget) c.kv_budget = patch.kv_budget;
  } else if (top == "balancer") {
    c.balancer = patch.balancer;
  } else if (top == "server") {
    const ServerSettings& p = patch.server;
    ServerSettings& s = c.server;
    for (auto [from, to] : {std::pair{&p.host, &s.host},
                            {&p.api_key, &s.api_key},
                            {&p.model_name, &s.model_name},
                            {&p.chat_template, &s.chat_template},
                            {&p.log_format, &s.log_format}})
      if (*from) *to = *from;
    for (auto [from, to] : {std::pair{&p.port, &s.port},
                            {&p.ctx, &s.ctx},
                            {&p.max_queue, &s.max_queue},
                            {&p.body_limit, &s.body_limit},
                            {&p.threads, &s.threads}})
      if (*from) *to = *from;
    for (auto [from, to] : {std::pair{&p.request_timeout, &s.request_timeout},
                            {&p.idle_timeout, &s.idle_timeout},
                            {&p.grace, &s.grace}})
      if (*from) *to = *from;
  } else if (top == "batching") {
    if (key == "batching.max_sequences") c.max_sequences = patch.max_sequences;
    if (key == "batching.max_batch_tokens") c.max_batch_tokens = patch.max_batch_tokens;
    if (key == "batching.prefill_chunk") c.prefill_chunk = patch.prefill_chunk;
  }
}

std::vector<const DeviceInfo*> Config::select_devices(const std::vector<DeviceInfo>& all) const {
  std::string existing;
  for (const auto& d : all) existing += (existing.empty() ? "" : ", ") + d.id + " (" + d.name + ")";
  auto check_exists = [&](const std::vector<DeviceSelector>& sels, const char* key) {
    for (size_t i = 0; i < sels.size(); ++i) {
      if (std::none_of(all.begin(), all.end(),
                       [&](const DeviceInfo& d) { return sels[i].matches(d); }))
        throw ConfigError(std::string(key) + "[" + std::to_string(i) + "]: no device matches " +
                          sels[i].describe() + "; devices here: " + existing);
    }
  };
  check_exists(select, "devices.select");
  check_exists(exclude, "devices.exclude");
  std::vector<const DeviceInfo*> out;
  for (const auto& d : all) {
    const bool in = select.empty() || std::any_of(select.begin(), select.end(),
                                                  [&](auto& s) { return s.matches(d); });
    const bool out_ =
        std::any_of(exclude.begin(), exclude.end(), [&](auto& s) { return s.matches(d); });
    if (in && !out_) out.push_back(&d);
  }
  if (out.empty())
    throw ConfigError("devices: the selection leaves no device; devices here: " + existing);
  auto selected_ids = [&] {
    std::string s;
    for (auto* d : out) s += (s.empty() ? "" : ", ") + d->id;
    return s;
  };
  auto find_selected = [&](const std::string& id, const std::string& key) -> const DeviceInfo* {
    for (auto* d : out)
      if (d->id == id) return d;
    throw ConfigError(key + ": device '" + id + "' is not among the selected devices (" +
                      selected_ids() + "); devices here: " + existing);
  };
  for (const auto& [id, budget] : budgets) {
    const DeviceInfo* d = find_selected(id, "devices.budgets." + id);
    if (budget.bytes > d->global_mem_bytes)
      throw ConfigError("devices.budgets." + id + ": " + format_bytes(budget.bytes) +
                        " exceeds the device's memory (" + format_bytes(d->global_mem_bytes) + ")");
  }
  if (attention != "auto") find_selected(attention, "placement.attention");
  for (const auto& [id, share] : expert_shares) find_selected(id, "placement.experts.shares." + id);
  for (size_t i = 0; i < expert_pins.size(); ++i)
    find_selected(expert_pins[i].device,
                  "placement.experts.pins[" + std::to_string(i) + "].device");
  return out;
}

}  // namespace tessera::sched
