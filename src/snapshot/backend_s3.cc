#include "snapshot/backend_s3.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <curl/curl.h>
#include <openssl/evp.h>

namespace dumont::snapshot {
namespace {

constexpr int64_t kMinPartSize = 5ll << 20;       // S3: every part but the last is >= 5 MiB
constexpr int64_t kMaxParts = 10000;              // S3: at most 10000 parts
constexpr int64_t kMaxSinglePut = 5ll << 30;      // S3: one PUT carries at most 5 GiB
constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Lower-case hex of 32 bytes, as SigV4 wants the payload hash (ParseId also takes upper case).
bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

std::string Sha256Hex(std::string_view data) {
  if (data.empty()) return kEmptySha256;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (unsigned i = 0; i < n; ++i) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  return out;
}

// SigV4 URI encoding: unreserved characters stay, everything else is %XX (upper-case hex).
std::string UriEncode(std::string_view s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

// The canonical query string SigV4 wants, which libcurl 7.88 does not build itself (it signs the query
// as written): parameters sorted by name, names and values encoded, and "name=" written out for empty
// values ("?uploads=" rather than "?uploads").
using Query = std::vector<std::pair<std::string, std::string>>;
std::string CanonicalQuery(Query q) {
  for (auto& [k, v] : q) {
    k = UriEncode(k, false);
    v = UriEncode(v, false);
  }
  std::sort(q.begin(), q.end());
  std::string out;
  for (const auto& [k, v] : q) {
    if (!out.empty()) out.push_back('&');
    out += k + "=" + v;
  }
  return out;
}

// --- Minimal XML reading: S3 answers are flat, small and machine-written. ---

std::string XmlUnescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out.push_back('&');
      continue;
    }
    std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") out.push_back('&');
    else if (ent == "lt") out.push_back('<');
    else if (ent == "gt") out.push_back('>');
    else if (ent == "quot") out.push_back('"');
    else if (ent == "apos") out.push_back('\'');
    else if (ent.size() > 1 && ent[0] == '#') {
      unsigned long cp = 0;
      bool hexnum = ent[1] == 'x' || ent[1] == 'X';
      std::string_view digits = ent.substr(hexnum ? 2 : 1);
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), cp, hexnum ? 16 : 10);
      if (ec != std::errc() || p != digits.data() + digits.size() || cp > 0x10FFFF) {
        out.append(s.substr(i, semi - i + 1));
      } else if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    } else {
      out.append(s.substr(i, semi - i + 1));
    }
    i = semi;
  }
  return out;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// Finds the next element <tag ...>content</tag> (or <tag/>) starting at *pos; sets *content to the
// raw content and *pos past the closing tag. "<Key>" does not match "<KeyCount>".
bool NextElement(std::string_view xml, std::string_view tag, size_t* pos, std::string_view* content) {
  size_t at = *pos;
  while (true) {
    at = xml.find(tag, at);
    if (at == std::string_view::npos) return false;
    if (at == 0 || xml[at - 1] != '<') {
      at += tag.size();
      continue;
    }
    size_t after = at + tag.size();
    if (after >= xml.size()) return false;
    char c = xml[after];
    if (c != '>' && c != ' ' && c != '/' && c != '\t' && c != '\r' && c != '\n') {
      at = after;
      continue;
    }
    size_t open_end = xml.find('>', after);
    if (open_end == std::string_view::npos) return false;
    if (xml[open_end - 1] == '/') {  // <tag/>
      *content = {};
      *pos = open_end + 1;
      return true;
    }
    std::string closing = "</" + std::string(tag) + ">";
    size_t close = xml.find(closing, open_end + 1);
    if (close == std::string_view::npos) return false;
    *content = xml.substr(open_end + 1, close - open_end - 1);
    *pos = close + closing.size();
    return true;
  }
}

std::string FirstElement(std::string_view xml, std::string_view tag) {
  size_t pos = 0;
  std::string_view content;
  if (!NextElement(xml, tag, &pos, &content)) return "";
  return XmlUnescape(content);
}

bool ParseInt64(std::string_view s, int64_t* out) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size() && *out >= 0;
}

// --- HTTP over libcurl ---

struct Response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names, last value wins
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

size_t WriteBody(char* ptr, size_t size, size_t nmemb, void* userdata) {
  static_cast<Response*>(userdata)->body.append(ptr, size * nmemb);
  return size * nmemb;
}

size_t WriteHeader(char* ptr, size_t size, size_t nmemb, void* userdata) {
  auto* r = static_cast<Response*>(userdata);
  std::string_view line(ptr, size * nmemb);
  if (line.starts_with("HTTP/")) {  // a new response (after 100 Continue): forget earlier headers
    r->headers.clear();
    return size * nmemb;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * nmemb;
  std::string name(line.substr(0, colon));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
  r->headers[name] = std::string(value);
  if (name == "content-length") {  // reserve the body once instead of growing it
    int64_t n = 0;
    if (ParseInt64(value, &n) && n > 0 && n <= (1ll << 32)) r->body.reserve(static_cast<size_t>(n));
  }
  return size * nmemb;
}

// Idle libcurl handles (each keeps its connection alive between operations).
class CurlPool {
 public:
  explicit CurlPool(size_t max_idle) : max_idle_(max_idle) {}
  ~CurlPool() {
    for (CURL* c : idle_) curl_easy_cleanup(c);
  }
  CURL* Get() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!idle_.empty()) {
        CURL* c = idle_.back();
        idle_.pop_back();
        return c;
      }
    }
    return curl_easy_init();
  }
  void Put(CURL* c, bool reusable) {
    if (reusable) {
      curl_easy_reset(c);  // keeps the live connection
      std::lock_guard<std::mutex> l(mu_);
      if (idle_.size() < max_idle_) {
        idle_.push_back(c);
        return;
      }
    }
    curl_easy_cleanup(c);
  }

 private:
  std::mutex mu_;
  std::vector<CURL*> idle_;
  size_t max_idle_;
};

struct Request {
  std::string method = "GET";
  std::string url;
  std::string_view body;
  bool has_body = false;  // PUT/POST send a body (possibly empty)
  std::vector<std::string> headers;
  std::string body_sha256;  // hex SHA-256 of body when already known (else computed)
};

Status TransportError(CURLcode rc, const char* errbuf, const std::string& what) {
  std::string msg = what + ": " + curl_easy_strerror(rc);
  if (errbuf[0]) msg += std::string(" (") + errbuf + ")";
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
      return Status::DeadlineExceeded(msg);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return Status::InvalidArgument(msg);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
      return Status::FailedPrecondition(msg + "; check the endpoint's TLS certificate or AWS_CA_BUNDLE");
    case CURLE_OUT_OF_MEMORY:
      return Status::Internal(msg);
    default:  // could not resolve/connect, connection reset, partial transfer, TLS handshake, ...
      return Status::Unavailable(msg);
  }
}

class S3Backend final : public Backend {
 public:
  explicit S3Backend(S3Options o) : o_(std::move(o)), pool_(std::max(1, o_.connections)) {
    GlobalInit();
    while (!o_.endpoint.empty() && o_.endpoint.back() == '/') o_.endpoint.pop_back();
    size_t sep = o_.endpoint.find("://");
    scheme_ = sep == std::string::npos ? "https" : o_.endpoint.substr(0, sep);
    authority_ = sep == std::string::npos ? o_.endpoint : o_.endpoint.substr(sep + 3);
    while (!o_.prefix.empty() && o_.prefix.back() == '/') o_.prefix.pop_back();
    while (!o_.prefix.empty() && o_.prefix.front() == '/') o_.prefix.erase(0, 1);
    root_ = o_.prefix.empty() ? "" : o_.prefix + "/";
    sigv4_ = "aws:amz:" + o_.region + ":s3";
    if (o_.part_size < kMinPartSize) o_.part_size = kMinPartSize;
    o_.multipart_threshold = std::clamp<int64_t>(o_.multipart_threshold, 0, kMaxSinglePut);
    location_ = S3LocationString(o_);
  }

  std::string Location() const override { return location_; }
  int Connections() const override { return std::max(1, o_.connections); }

  Status Create() override {
    Request head;
    head.method = "HEAD";
    head.url = BucketUrl({});
    auto r = Perform(head, "checking bucket " + o_.bucket);
    if (!r) return r.error();
    if (r->status == 404) {
      if (!o_.create_bucket) return Status::NotFound("bucket " + o_.bucket + " does not exist (" + location_ + ")");
      DUMONT_RETURN_STATUS_IF_ERROR(CreateBucket());
    } else if (r->status / 100 != 2) {
      return HttpError(*r, head, "checking bucket " + o_.bucket);
    }
    auto st = Stat(Handle{FileType::kConfig, ""});
    if (st) return Status::AlreadyExists("a repository already exists at " + location_ + " (its config is there)");
    if (st.error().code() != Code::kNotFound) return st.error();
    return Status::Ok();
  }

  Status Save(const Handle& h, std::string_view data) override {
    std::string key = Key(h);
    if (static_cast<int64_t>(data.size()) > o_.multipart_threshold) return SaveMultipart(key, data);
    Request put;
    put.method = "PUT";
    put.url = ObjectUrl(key, {});
    put.body = data;
    put.has_body = true;
    put.headers.push_back("Content-Type: application/octet-stream");
    // Packs, index, snapshot and key files are named by the SHA-256 of their bytes, which is the
    // payload hash SigV4 sends: hashing a 16 MiB pack again cost ~7 % of a backup's CPU. The
    // server checks it against the body, so a name that does not match its content is refused
    // (XAmzContentSHA256Mismatch) instead of stored.
    if (h.name_is_sha256 && IsSha256Hex(h.name)) put.body_sha256 = h.name;
    std::string what = "saving " + key;
    auto r = Perform(put, what);
    if (!r) return r.error();
    if (r->status / 100 != 2) return HttpError(*r, put, what);
    return Status::Ok();
  }

  Result<std::string> Load(const Handle& h, int64_t offset, int64_t length) override {
    std::string body;
    DUMONT_RETURN_IF_ERROR(LoadInto(h, offset, length, &body));
    return body;
  }

  Status LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) override {
    std::string key = Key(h);
    if (offset < 0 || length < 0) {
      return Status::InvalidArgument("loading " + key + ": negative offset or length");
    }
    Request get;
    get.url = ObjectUrl(key, {});
    bool ranged = offset > 0 || length > 0;
    if (ranged) {
      std::string range = "Range: bytes=" + std::to_string(offset) + "-";
      if (length > 0) range += std::to_string(offset + length - 1);
      get.headers.push_back(range);
    }
    std::string what = "loading " + key;
    out->clear();
    auto r = Perform(get, what, out);
    if (!r) return r.error();
    // The body is *out's storage on loan; it goes back on every path below.
    struct GiveBack {
      Response& r;
      std::string* out;
      ~GiveBack() {
        if (out) *out = std::move(r.body);
      }
    } give_back{*r, out};
    auto short_read = [&](int64_t got, const std::string& size_note) {
      return Status::Corruption(what + " from " + location_ + ": asked for " +
                                    (length > 0 ? std::to_string(length) + " bytes" : "the rest") +
                                    " at offset " + std::to_string(offset) + ", got " +
                                    std::to_string(got) + " bytes" + size_note);
    };
    if (r->status == 416) {  // the range starts at or past the end of the object
      int64_t total = -1;
      std::string cr = r->Header("content-range");  // "bytes */TOTAL"
      size_t slash = cr.rfind('/');
      if (slash != std::string::npos) ParseInt64(std::string_view(cr).substr(slash + 1), &total);
      if (total < 0) {  // RGW sends no Content-Range with 416: ask for the size
        auto size = StatKey(key);
        if (!size) return size.error();
        total = *size;
      }
      if (length == 0 && total == offset) return r->body.clear(), Status::Ok();
      return short_read(0, total >= 0 ? " (the object has " + std::to_string(total) + " bytes)" : "");
    }
    if (r->status / 100 != 2) return HttpError(*r, get, what);
    if (r->status == 200) {  // whole object (no Range asked, or the server ignored it)
      if (!ranged) {
        int64_t want = 0;  // libcurl already fails a transfer cut short; this catches a lying server
        if (ParseInt64(r->Header("content-length"), &want) && want != static_cast<int64_t>(r->body.size())) {
          return Status::Corruption(what + ": got " + std::to_string(r->body.size()) +
                                    " bytes, Content-Length said " + std::to_string(want));
        }
        return Status::Ok();
      }
      int64_t size = static_cast<int64_t>(r->body.size());
      if (offset > size || (length > 0 && offset + length > size)) {
        return short_read(std::max<int64_t>(0, size - offset), " (the object has " + std::to_string(size) + " bytes)");
      }
      r->body.erase(0, static_cast<size_t>(offset));
      if (length > 0) r->body.resize(static_cast<size_t>(length));
      return Status::Ok();
    }
    if (r->status != 206) return Status::Internal(what + ": unexpected HTTP " + std::to_string(r->status));
    // 206: check the server sent the range we asked for ("bytes START-END/TOTAL") and all of it.
    std::string cr = r->Header("content-range");
    int64_t start = -1;
    if (cr.starts_with("bytes ")) {
      size_t dash = cr.find('-');
      if (dash != std::string::npos) ParseInt64(std::string_view(cr).substr(6, dash - 6), &start);
    }
    if (start != offset) {
      return Status::Corruption(what + ": asked for offset " + std::to_string(offset) +
                                ", the server answered Content-Range '" + cr + "'");
    }
    int64_t got = static_cast<int64_t>(r->body.size());
    if (length > 0 && got != length) return short_read(got, "");
    if (length == 0) {
      int64_t total = -1;
      size_t slash = cr.rfind('/');
      if (slash != std::string::npos && ParseInt64(std::string_view(cr).substr(slash + 1), &total) &&
          got != total - offset) {
        return short_read(got, " (the object has " + std::to_string(total) + " bytes)");
      }
    }
    return Status::Ok();
  }

  Result<FileInfo> Stat(const Handle& h) override {
    std::string key = Key(h);
    Request head;
    head.method = "HEAD";
    head.url = ObjectUrl(key, {});
    std::string what = "stat " + key;
    auto r = Perform(head, what);
    if (!r) return Err(r.error());
    if (r->status / 100 != 2) return Err(HttpError(*r, head, what));
    int64_t size = 0;
    if (!ParseInt64(r->Header("content-length"), &size)) {
      return Err(Status::Internal(what + ": the server sent no valid Content-Length"));
    }
    return FileInfo{h.name, size};
  }

  Status Remove(const Handle& h) override {
    std::string key = Key(h);
    Request del;
    del.method = "DELETE";
    del.url = ObjectUrl(key, {});
    std::string what = "removing " + key;
    auto r = Perform(del, what);
    if (!r) return r.error();
    if (r->status / 100 == 2 || (r->status == 404 && ErrorCode(*r) != "NoSuchBucket")) return Status::Ok();
    return HttpError(*r, del, what);
  }

  Result<std::vector<FileInfo>> List(FileType t) override {
    std::vector<FileInfo> out;
    if (t == FileType::kConfig) {  // a single object, not a directory
      auto st = Stat(Handle{FileType::kConfig, ""});
      if (st) out.push_back(FileInfo{"config", st->size});
      else if (st.error().code() != Code::kNotFound) return Err(st.error());
      return out;
    }
    std::string prefix = root_ + std::string(FileTypeName(t)) + "/";
    std::string token;
    std::string what = "listing " + prefix;
    for (int page = 0;; ++page) {
      Query q = {{"list-type", "2"}, {"max-keys", "1000"}, {"prefix", prefix}};
      if (!token.empty()) q.emplace_back("continuation-token", token);
      Request get;
      get.url = BucketUrl(q);
      auto r = Perform(get, what);
      if (!r) return Err(r.error());
      if (r->status / 100 != 2) return Err(HttpError(*r, get, what));
      std::string_view xml = r->body;
      if (xml.find("<ListBucketResult") == std::string_view::npos) {
        return Err(Status::Internal(what + ": the answer is not a ListBucketResult"));
      }
      size_t pos = 0;
      std::string_view contents;
      while (NextElement(xml, "Contents", &pos, &contents)) {
        std::string key = FirstElement(contents, "Key");
        std::string size_text = FirstElement(contents, "Size");
        int64_t size = 0;
        if (key.empty() || !ParseInt64(size_text, &size)) {
          return Err(Status::Internal(what + ": malformed <Contents> in the ListObjectsV2 answer"));
        }
        if (!key.starts_with(prefix)) continue;
        std::string name = key.substr(prefix.size());
        if (t == FileType::kPack) {  // data/ab/abcd...: the name is the last component
          size_t slash = name.rfind('/');
          if (slash != std::string::npos) name = name.substr(slash + 1);
        } else if (name.find('/') != std::string::npos) {
          continue;  // not one of ours
        }
        if (name.empty()) continue;  // a "directory" marker
        out.push_back(FileInfo{std::move(name), size});
      }
      if (FirstElement(xml, "IsTruncated") != "true") break;
      std::string next = FirstElement(xml, "NextContinuationToken");
      if (next.empty() || next == token) {
        return Err(Status::Internal(what + ": truncated ListObjectsV2 answer without a new continuation token"));
      }
      token = std::move(next);
    }
    return out;
  }

 private:
  std::string Key(const Handle& h) const { return root_ + ObjectPath(h); }

  std::string HostUrl() const {
    if (o_.virtual_host_style) return scheme_ + "://" + o_.bucket + "." + authority_;
    return scheme_ + "://" + authority_ + "/" + o_.bucket;
  }
  std::string BucketUrl(const Query& q) const {
    std::string url = HostUrl() + (o_.virtual_host_style ? "/" : "");
    if (!q.empty()) url += "?" + CanonicalQuery(q);
    return url;
  }
  std::string ObjectUrl(const std::string& key, const Query& q) const {
    std::string url = HostUrl() + "/" + UriEncode(key, true);
    if (!q.empty()) url += "?" + CanonicalQuery(q);
    return url;
  }

  static std::string ErrorCode(const Response& r) { return FirstElement(r.body, "Code"); }

  Status CreateBucket() {
    Request put;
    put.method = "PUT";
    put.url = BucketUrl({});
    put.has_body = true;
    std::string body;
    if (o_.region != "us-east-1") {
      body = "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>" +
             XmlEscape(o_.region) + "</LocationConstraint></CreateBucketConfiguration>";
      put.headers.push_back("Content-Type: application/xml");
    }
    put.body = body;
    std::string what = "creating bucket " + o_.bucket;
    auto r = Perform(put, what);
    if (!r) return r.error();
    if (r->status / 100 == 2) return Status::Ok();
    if (r->status == 409) {  // someone (maybe a concurrent Create of ours) made it: is it usable?
      Request head;
      head.method = "HEAD";
      head.url = BucketUrl({});
      auto h = Perform(head, what);
      if (h && h->status / 100 == 2) return Status::Ok();
      return Status::AlreadyExists(what + ": the bucket name is taken by another account (" + ErrorCode(*r) + ")");
    }
    return HttpError(*r, put, what);
  }

  Status SaveMultipart(const std::string& key, std::string_view data) {
    std::string what = "saving " + key + " (multipart)";
    int64_t size = static_cast<int64_t>(data.size());
    int64_t part = std::max(o_.part_size, (size + kMaxParts - 1) / kMaxParts);

    Request init;
    init.method = "POST";
    init.url = ObjectUrl(key, {{"uploads", ""}});
    init.has_body = true;
    init.headers.push_back("Content-Type: application/octet-stream");
    auto r = Perform(init, what);
    if (!r) return r.error();
    if (r->status / 100 != 2) return HttpError(*r, init, what);
    std::string upload_id = FirstElement(r->body, "UploadId");
    if (upload_id.empty()) return Status::Internal(what + ": CreateMultipartUpload answered without an UploadId");

    Status st = UploadParts(key, upload_id, data, part, what);
    if (!st.ok()) {  // best effort: free the parts already stored (an abandoned upload is invisible)
      Request abort;
      abort.method = "DELETE";
      abort.url = ObjectUrl(key, {{"uploadId", upload_id}});
      (void)Perform(abort, what);
      return st;
    }
    // The object is complete; check the server agrees on its size (Ceph answers the completion with
    // an empty ETag, so there is nothing else in the answer to check).
    auto info = StatKey(key);
    if (!info) return info.error().Annotate(what + ": after completing");
    if (*info != size) {
      return Status::Corruption(what + ": the completed object has " + std::to_string(*info) + " bytes, sent " +
                                std::to_string(size));
    }
    return Status::Ok();
  }

  Status UploadParts(const std::string& key, const std::string& upload_id, std::string_view data, int64_t part,
                     const std::string& what) {
    std::string complete = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
    int number = 1;
    for (size_t off = 0; off < data.size(); off += static_cast<size_t>(part), ++number) {
      Request put;
      put.method = "PUT";
      put.url = ObjectUrl(key, {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}});
      put.body = data.substr(off, static_cast<size_t>(part));
      put.has_body = true;
      std::string pwhat = what + " part " + std::to_string(number);
      auto r = Perform(put, pwhat);
      if (!r) return r.error();
      if (r->status / 100 != 2) return HttpError(*r, put, pwhat);
      std::string etag = r->Header("etag");
      if (etag.empty()) return Status::Internal(pwhat + ": UploadPart answered without an ETag");
      complete += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" + XmlEscape(etag) +
                  "</ETag></Part>";
    }
    complete += "</CompleteMultipartUpload>";
    Request post;
    post.method = "POST";
    post.url = ObjectUrl(key, {{"uploadId", upload_id}});
    post.body = complete;
    post.has_body = true;
    post.headers.push_back("Content-Type: application/xml");
    auto r = Perform(post, what + " completing");
    if (!r) return r.error();
    if (r->status / 100 != 2) return HttpError(*r, post, what + " completing");
    // S3 may answer 200 and put the error in the body (the completion runs long).
    if (r->body.find("<Error>") != std::string::npos) {
      Response err = *r;
      err.status = 500;
      return HttpError(err, post, what + " completing");
    }
    return Status::Ok();
  }

  Result<int64_t> StatKey(const std::string& key) {
    Request head;
    head.method = "HEAD";
    head.url = ObjectUrl(key, {});
    auto r = Perform(head, "stat " + key);
    if (!r) return Err(r.error());
    if (r->status / 100 != 2) return Err(HttpError(*r, head, "stat " + key));
    int64_t size = 0;
    if (!ParseInt64(r->Header("content-length"), &size)) return Err(Status::Internal("stat " + key + ": no Content-Length"));
    return size;
  }

  // Runs one request. Errors only for transport failures; HTTP statuses are the caller's to judge.
  // With `body`, the response body is written into that string's storage (moved into the
  // Response; the caller takes it back).
  Result<Response> Perform(const Request& req, const std::string& what, std::string* body = nullptr) {
    CURL* c = pool_.Get();
    if (!c) return Err(Status::Internal("curl_easy_init failed"));
    Response resp;
    if (body) resp.body = std::move(*body), resp.body.clear();
    char errbuf[CURL_ERROR_SIZE] = {0};
    struct curl_slist* hdrs = nullptr;
    std::string sha = "x-amz-content-sha256: " + (req.body_sha256.empty() ? Sha256Hex(req.body) : req.body_sha256);
    hdrs = curl_slist_append(hdrs, sha.c_str());
    if (!o_.session_token.empty()) {
      hdrs = curl_slist_append(hdrs, ("x-amz-security-token: " + o_.session_token).c_str());
    }
    for (const auto& h : req.headers) hdrs = curl_slist_append(hdrs, h.c_str());
    // Never pass an empty "Name:" header to suppress one of libcurl's (Expect:, Content-Type:):
    // libcurl 7.88 puts it into the SigV4 signed headers but does not send it, and the signature no
    // longer matches. So bodies always carry an explicit Content-Type (not curl's form-urlencoded
    // default), and uploads over 1 MiB keep curl's "Expect: 100-continue" (useful anyway: a refused
    // request is answered before its body is sent).
    if (req.has_body && std::none_of(req.headers.begin(), req.headers.end(),
                                     [](const std::string& h) { return h.starts_with("Content-Type:"); })) {
      hdrs = curl_slist_append(hdrs, "Content-Type: application/octet-stream");
    }
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
    if (req.method == "HEAD") {
      curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (req.method != "GET") {
      curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }
    if (req.has_body) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data() ? req.body.data() : "");
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4_.c_str());
    curl_easy_setopt(c, CURLOPT_USERNAME, o_.access_key_id.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, o_.secret_access_key.c_str());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, WriteBody);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, WriteHeader);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &resp);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    // Bigger socket reads and writes than curl's 16 KiB / 64 KiB defaults: a restore moves GBs
    // through here, and a syscall costs ~1.3 us on the VMs we run on (curl caps both sizes).
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, 2L * 1024 * 1024);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o_.connect_timeout_ms));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, static_cast<long>(o_.low_speed_bytes));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(o_.low_speed_time_s));
    if (o_.request_timeout_ms > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(o_.request_timeout_ms));
    if (scheme_ == "https") {
      if (!o_.ca_bundle.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, o_.ca_bundle.c_str());
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, o_.verify_tls ? 1L : 0L);
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, o_.verify_tls ? 2L : 0L);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
    curl_slist_free_all(hdrs);
    // A handle whose transfer failed may hold a broken connection; start afresh.
    pool_.Put(c, rc == CURLE_OK);
    if (rc != CURLE_OK) return Err(TransportError(rc, errbuf, "S3 " + what + " at " + location_));
    return resp;
  }

  // Turns an HTTP error answer into a Status. HEAD answers carry no body, so for those the same URL
  // is fetched with GET (1 byte) to learn S3's error code and message.
  Status HttpError(const Response& r, const Request& req, const std::string& what) {
    std::string code = ErrorCode(r);
    std::string message = FirstElement(r.body, "Message");
    if (req.method == "HEAD" && code.empty() && r.status >= 400 && r.status < 500 && r.status != 404) {
      Request get;
      get.url = req.url;
      get.headers.push_back("Range: bytes=0-0");
      auto g = Perform(get, what);
      if (g && g->status == r.status) {
        code = ErrorCode(*g);
        message = FirstElement(g->body, "Message");
      }
    }
    std::string text = "S3 " + what + " at " + location_ + ": HTTP " + std::to_string(r.status);
    if (!code.empty()) text += " " + code;
    if (!message.empty()) text += ": " + message;
    std::string request_id = FirstElement(r.body, "RequestId");
    if (!request_id.empty()) text += " (request id " + request_id + ")";
    int retry_after = 0;
    int64_t ra = 0;
    if (ParseInt64(r.Header("retry-after"), &ra)) retry_after = static_cast<int>(std::min<int64_t>(ra, 3600));

    if (r.status == 404) {
      if (code == "NoSuchBucket") return Status::NotFound("bucket " + o_.bucket + " does not exist: " + text);
      if (code == "NoSuchUpload") return Status::NotFound(text);
      return Status::NotFound("object " + o_.bucket + "/" + UrlKey(req.url) + " not found: " + text);
    }
    if (r.status == 403) return Status::PermissionDenied(text);
    if (r.status == 401) return Status::Unauthenticated(text);
    if (r.status == 429 || (r.status == 503 && code == "SlowDown")) return Status::ResourceExhausted(text, retry_after);
    if (r.status >= 500) return Status::Unavailable(text);
    if (r.status == 408 || code == "RequestTimeout") return Status::DeadlineExceeded(text);
    // The body did not arrive as sent (checked against x-amz-content-sha256 / Content-Length): sending
    // it again can work.
    if (code == "XAmzContentSHA256Mismatch" || code == "BadDigest" || code == "IncompleteBody") {
      return Status::IOError(text);
    }
    if (r.status == 301 || r.status == 307 || code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed") {
      return Status::FailedPrecondition(text + " (is AWS_DEFAULT_REGION the bucket's region, and the endpoint right?)");
    }
    if (r.status == 409) return Status::Conflict(text);
    if (r.status == 412) return Status::FailedPrecondition(text);
    if (r.status == 416) return Status::Corruption(text);
    return Status::InvalidArgument(text);
  }

  // The object key of a URL this backend built (for messages).
  std::string UrlKey(const std::string& url) const {
    std::string base = HostUrl() + "/";
    std::string rest = url.starts_with(base) ? url.substr(base.size()) : url;
    size_t q = rest.find('?');
    if (q != std::string::npos) rest.resize(q);
    std::string out;  // undo the %XX encoding
    for (size_t i = 0; i < rest.size(); ++i) {
      unsigned v = 0;
      if (rest[i] == '%' && i + 2 < rest.size() &&
          std::from_chars(rest.data() + i + 1, rest.data() + i + 3, v, 16).ptr == rest.data() + i + 3) {
        out.push_back(static_cast<char>(v));
        i += 2;
      } else {
        out.push_back(rest[i]);
      }
    }
    return out;
  }

  S3Options o_;
  CurlPool pool_;
  std::string scheme_, authority_, root_, sigv4_, location_;
};

bool ValidBucket(std::string_view b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
          c == '_')) {
      return false;
    }
  }
  auto alnum = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  return alnum(b.front()) && alnum(b.back()) && b.find("..") == std::string_view::npos;
}

}  // namespace

std::string S3LocationString(const S3Options& o) {
  std::string endpoint = o.endpoint;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  std::string s = "s3:" + endpoint + "/" + o.bucket;
  std::string prefix = o.prefix;
  while (!prefix.empty() && prefix.front() == '/') prefix.erase(0, 1);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (!prefix.empty()) s += "/" + prefix;
  return s;
}

Result<S3Options> ParseS3Location(std::string_view location) {
  return ParseS3Location(location, [](const char* name) -> const char* { return std::getenv(name); });
}

Result<S3Options> ParseS3Location(std::string_view location, const EnvLookup& getenv) {
  const std::string usage = " (expected s3:http(s)://host[:port]/bucket[/prefix])";
  auto bad = [&](const std::string& why) {
    return Err(Status::InvalidArgument("bad S3 location '" + std::string(location) + "': " + why + usage));
  };
  std::string_view s = location;
  if (!s.starts_with("s3:")) return bad("it does not start with s3:");
  s.remove_prefix(3);
  S3Options o;
  std::string scheme;
  if (s.starts_with("https://")) scheme = "https";
  else if (s.starts_with("http://")) scheme = "http";
  else return bad("the endpoint must start with http:// or https://");
  s.remove_prefix(scheme.size() + 3);
  if (s.find_first_of("?#") != std::string_view::npos) return bad("query strings and fragments are not allowed");
  if (s.find_first_of(" \t\r\n\\") != std::string_view::npos) return bad("it contains whitespace or a backslash");
  size_t slash = s.find('/');
  std::string_view authority = s.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : s.substr(slash + 1);
  if (authority.find('@') != std::string_view::npos) {
    return bad("credentials do not belong in the location; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  }
  if (authority.empty()) return bad("the host is missing");
  // host, [v6], host:port, [v6]:port
  std::string_view host = authority, port;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6] host");
    host = authority.substr(0, close + 1);
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return bad("junk after the [IPv6] host");
      port = rest.substr(1);
      if (port.empty()) return bad("empty port");
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return bad("empty port");
  }
  if (host.empty() || host == "[]") return bad("the host is missing");
  if (!port.empty()) {
    int64_t p = 0;
    if (!ParseInt64(port, &p) || p < 1 || p > 65535) return bad("the port must be a number from 1 to 65535");
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path.empty()) return bad("the bucket is missing");
  size_t bslash = path.find('/');
  std::string_view bucket = path.substr(0, bslash);
  std::string_view prefix = bslash == std::string_view::npos ? std::string_view() : path.substr(bslash + 1);
  if (!ValidBucket(bucket)) {
    return bad("'" + std::string(bucket) +
               "' is not a valid bucket name (3-63 letters, digits, '.', '-' or '_', starting and ending with a "
               "letter or digit)");
  }
  for (size_t i = 0; i <= prefix.size() && !prefix.empty();) {
    size_t j = prefix.find('/', i);
    if (j == std::string_view::npos) j = prefix.size();
    std::string_view seg = prefix.substr(i, j - i);
    if (seg.empty() || seg == "." || seg == "..") return bad("the prefix has an empty, '.' or '..' component");
    i = j + 1;
  }
  o.endpoint = scheme + "://" + std::string(authority);
  o.bucket = std::string(bucket);
  o.prefix = std::string(prefix);

  auto env = [&](const char* name) -> std::string {
    const char* v = getenv(name);
    return v ? std::string(v) : std::string();
  };
  o.access_key_id = env("AWS_ACCESS_KEY_ID");
  if (o.access_key_id.empty()) {
    return Err(Status::InvalidArgument("S3 location " + S3LocationString(o) +
                                       ": the environment variable AWS_ACCESS_KEY_ID is not set"));
  }
  o.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
  if (o.secret_access_key.empty()) {
    return Err(Status::InvalidArgument("S3 location " + S3LocationString(o) +
                                       ": the environment variable AWS_SECRET_ACCESS_KEY is not set"));
  }
  o.region = env("AWS_DEFAULT_REGION");
  if (o.region.empty()) o.region = env("AWS_REGION");
  if (o.region.empty()) o.region = "us-east-1";
  for (char c : o.region) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return Err(Status::InvalidArgument("AWS_DEFAULT_REGION '" + o.region + "' is not a region name"));
    }
  }
  o.session_token = env("AWS_SESSION_TOKEN");
  if (scheme == "https") o.ca_bundle = env("AWS_CA_BUNDLE");
  if (std::string c = env("DUMONT_S3_CONNECTIONS"); !c.empty()) {
    int64_t n = 0;
    if (!ParseInt64(c, &n) || n < 1 || n > 256) {
      return Err(Status::InvalidArgument("DUMONT_S3_CONNECTIONS '" + c +
                                         "' must be a number of parallel S3 requests from 1 to 256 (default 32)"));
    }
    o.connections = static_cast<int>(n);
  }
  return o;
}

std::unique_ptr<Backend> NewS3Backend(const S3Options& options) { return std::make_unique<S3Backend>(options); }

}  // namespace dumont::snapshot
