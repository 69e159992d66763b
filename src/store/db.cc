#include "store/db.h"

#include <filesystem>
#include <regex>

namespace dumont::store {

int64_t Row::Int(size_t i) const {
  const auto& c = cols.at(i);
  if (!c) return 0;
  return std::stoll(*c);
}

double Row::Real(size_t i) const {
  const auto& c = cols.at(i);
  if (!c) return 0;
  return std::stod(*c);
}

std::string RedactUrl(const std::string& url) {
  static const std::regex kPass(R"(^([a-z]+://[^:/@]*:)[^@]*@)");
  std::string out = std::regex_replace(url, kPass, "$1***@");
  static const std::regex kParam(R"(password=[^&\s]*)");
  return std::regex_replace(out, kParam, "password=***");
}

Result<std::unique_ptr<Db>> OpenDb(const std::string& url) {
  if (url.rfind("sqlite://", 0) == 0) {
    std::string path = url.substr(9);
    if (path.empty()) return Err(Status::InvalidArgument("sqlite URL has no path: '" + url + "'"));
    if (path != ":memory:") {
      std::error_code ec;
      auto parent = std::filesystem::path(path).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
      if (ec) {
        return Err(Status::IOError("cannot create directory " + parent.string() + " for the database: " +
                                   ec.message()));
      }
    }
    return OpenSqlite(path);
  }
  if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0) {
    return OpenPostgres(url);
  }
  return Err(Status::InvalidArgument("database URL '" + RedactUrl(url) +
                                     "' must start with sqlite:// or postgresql://"));
}

}  // namespace dumont::store
