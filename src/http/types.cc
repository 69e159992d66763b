#include "http/types.h"

#include <algorithm>
#include <cctype>

namespace dumont::http {
namespace {
std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}
}  // namespace

void Headers::Add(std::string_view name, std::string_view value) {
  items.emplace_back(Lower(name), std::string(value));
}

void Headers::Set(std::string_view name, std::string_view value) {
  std::string n = Lower(name);
  for (auto& [k, v] : items) {
    if (k == n) {
      v = std::string(value);
      return;
    }
  }
  items.emplace_back(std::move(n), std::string(value));
}

std::optional<std::string> Headers::Get(std::string_view name) const {
  std::string n = Lower(name);
  for (const auto& [k, v] : items) {
    if (k == n) return v;
  }
  return std::nullopt;
}

std::string PercentDecode(std::string_view in, bool* ok, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  *ok = true;
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
          !std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
        *ok = false;
        return out;
      }
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool ParseTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query) {
  auto q = target.find('?');
  std::string_view raw_path = target.substr(0, q);
  bool ok = true;
  *path = PercentDecode(raw_path, &ok, false);
  if (!ok) return false;
  query->clear();
  if (q == std::string_view::npos) return true;
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    auto eq = pair.find('=');
    std::string key = PercentDecode(pair.substr(0, eq), &ok, true);
    if (!ok) return false;
    std::string value =
        eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1), &ok, true);
    if (!ok) return false;
    (*query)[key] = value;
  }
  return true;
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
  }
  return "Unknown";
}

}  // namespace dumont::http
