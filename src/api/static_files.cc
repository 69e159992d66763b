#include <filesystem>
#include <fstream>
#include <sstream>

#include "api/app.h"

namespace dumont::api {

namespace {
std::string ContentType(const std::string& ext) {
  static const std::map<std::string, std::string> kTypes = {
      {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
      {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
      {".jpg", "image/jpeg"}, {".ico", "image/x-icon"}, {".woff2", "font/woff2"},
      {".woff", "font/woff"}, {".map", "application/json"}, {".txt", "text/plain; charset=utf-8"},
      {".webmanifest", "application/manifest+json"}};
  auto it = kTypes.find(ext);
  return it == kTypes.end() ? "application/octet-stream" : it->second;
}

std::optional<std::string> ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

std::optional<http::Response> ServeStatic(const std::string& dir, const http::Request& req) {
  namespace fs = std::filesystem;
  std::string rel = req.path;
  while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
  fs::path p = fs::path(rel).lexically_normal();
  for (const auto& part : p) {
    if (part == "..") return std::nullopt;  // never outside dir
  }
  fs::path root(dir);
  fs::path file = rel.empty() ? root / "index.html" : root / p;
  std::error_code ec;
  bool is_file = fs::is_regular_file(file, ec);
  if (!is_file) {
    // A client-side route (no extension) gets the app; a missing asset is a 404.
    if (p.has_extension()) return std::nullopt;
    file = root / "index.html";
  }
  auto body = ReadAll(file);
  if (!body) return std::nullopt;
  http::Response r = http::Response::Text(200, std::move(*body), ContentType(file.extension().string()));
  bool hashed_asset = rel.rfind("assets/", 0) == 0;
  r.headers.Set("Cache-Control", hashed_asset ? "public, max-age=31536000, immutable" : "no-cache");
  r.headers.Set("X-Content-Type-Options", "nosniff");
  if (file.extension() == ".html") {
    r.headers.Set("Content-Security-Policy",
                  "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'");
  }
  return r;
}

}  // namespace dumont::api
