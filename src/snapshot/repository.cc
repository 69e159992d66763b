#include "snapshot/repository.h"

#include <pwd.h>
#include <signal.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cerrno>
#include <chrono>
#include <charconv>
#include <cstring>
#include <ctime>

#include "common/random.h"
#include "snapshot/json_scan.h"
#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;

namespace {

std::string B64(std::string_view s) { return Base64UrlEncode(s); }
bool UnB64(const json& j, std::string* out) { return j.is_string() && Base64UrlDecode(j.get<std::string>(), out); }

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}
std::string Username() {
  if (auto* pw = getpwuid(getuid())) return pw->pw_name;
  return std::to_string(getuid());
}
int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// One index or pack header entry, {"c":..,"id":"..","l":..,"o":..,"t":..,"u":..}: the same bytes
// as nlohmann's dump of that object (keys sorted), written directly. A 7 GB backup writes ~80k of
// them twice (pack headers, index); building them as json values was ~2 % of its CPU, part of it
// under the repository lock.
void AppendEntry(std::string& out, const Id& id, const BlobLocation& l) {
  auto num = [&](uint64_t v) {
    char b[24];
    out.append(b, std::to_chars(b, b + sizeof b, v).ptr);
  };
  out += "{\"c\":";
  num(static_cast<uint64_t>(l.compression));
  out += ",\"id\":\"";
  out += IdHex(id);
  out += "\",\"l\":";
  num(l.length);
  out += ",\"o\":";
  num(l.offset);
  out += ",\"t\":";
  num(static_cast<uint64_t>(l.type));
  out += ",\"u\":";
  num(l.raw_length);
  out += '}';
}

// A JSON array of entries: a pack header, or one pack's "blobs" in an index file.
void AppendEntries(std::string& out, const std::vector<std::pair<Id, BlobLocation>>& entries) {
  out += '[';
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) out += ',';
    AppendEntry(out, entries[i].first, entries[i].second);
  }
  out += ']';
}

// An index file's JSON, {"packs":[{"blobs":[entry,...],"id":"<pack>"},...]}, written directly.
template <typename Packs>
std::string IndexText(const Packs& packs) {
  std::string out = "{\"packs\":[";
  bool first_pack = true;
  for (const auto& [pack, blobs] : packs) {
    if (!first_pack) out += ',';
    first_pack = false;
    out += "{\"blobs\":";
    AppendEntries(out, blobs);
    out += ",\"id\":\"" + IdHex(pack) + "\"}";
  }
  out += "]}";
  return out;
}

bool ParseEntry(const json& e, Id* id, BlobLocation* l) {
  if (!e.is_object() || !e.contains("id") || !e["id"].is_string() || !ParseId(e["id"].get<std::string>(), id)) return false;
  for (const char* k : {"t", "o", "l", "u", "c"}) {
    if (!e.contains(k) || !e[k].is_number_unsigned()) return false;
  }
  int t = e["t"], c = e["c"];
  if (t > 1 || c > static_cast<int>(kMaxCompression)) return false;
  l->type = static_cast<BlobType>(t);
  l->offset = e["o"];
  l->length = e["l"];
  l->raw_length = e["u"];
  l->compression = static_cast<Compression>(c);
  return l->length >= kSealOverhead;
}

// The fast path for index files (every command loads the whole index; nlohmann's DOM was about half
// of opening a repository). Same checks as ParseEntry; false for anything else, and the caller then
// parses the file with nlohmann (entries inserted before the failure are inserted again, unchanged).
bool FastParseIndex(std::string_view text, std::unordered_map<Id, BlobLocation, IdHash>* idx) {
  JsonScan j(text);
  std::vector<std::pair<Id, BlobLocation>> blobs;
  auto entry = [&] {
    Id id;
    BlobLocation l;
    unsigned seen = 0;
    bool ok = j.Object([&](std::string_view k) {
      if (k == "id") return !(seen & 1) && (seen |= 1, j.IdValue(&id));
      uint64_t v;
      if (!j.Int(&v)) return false;
      if (k == "t" && !(seen & 2) && v <= 1) return seen |= 2, l.type = static_cast<BlobType>(v), true;
      if (k == "c" && !(seen & 4) && v <= static_cast<uint64_t>(kMaxCompression)) {
        return seen |= 4, l.compression = static_cast<Compression>(v), true;
      }
      if (v > UINT32_MAX) return false;
      if (k == "o" && !(seen & 8)) return seen |= 8, l.offset = static_cast<uint32_t>(v), true;
      if (k == "l" && !(seen & 16)) return seen |= 16, l.length = static_cast<uint32_t>(v), true;
      if (k == "u" && !(seen & 32)) return seen |= 32, l.raw_length = static_cast<uint32_t>(v), true;
      return false;
    });
    if (!ok || seen != 63 || l.length < kSealOverhead) return false;
    blobs.emplace_back(id, l);
    return true;
  };
  auto pack = [&] {
    Id pack_id;
    bool have_id = false, have_blobs = false;
    blobs.clear();
    bool ok = j.Object([&](std::string_view k) {
      if (k == "id" && !have_id) return have_id = true, j.IdValue(&pack_id);
      if (k == "blobs" && !have_blobs) return have_blobs = true, j.Array(entry);
      return false;
    });
    if (!ok || !have_id || !have_blobs) return false;
    for (auto& [id, l] : blobs) {
      l.pack = pack_id;
      (*idx)[id] = l;
    }
    return true;
  };
  bool ok = j.Object([&](std::string_view k) { return k == "packs" && j.Array(pack); });
  return ok && j.AtEnd();
}

// Version 3: the checksum in a pack's trailer, the XXH3-128 of its blobs (canonical, big-endian).
XXH128_canonical_t BlobsChecksum(std::string_view blobs) {
  XXH128_canonical_t sum;
  XXH128_canonicalFromHash(&sum, XXH3_128bits(blobs.data(), blobs.size()));
  static_assert(sizeof sum.digest == kPackChecksumSize);
  return sum;
}

}  // namespace

std::string Rfc3339(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

struct Repository::PendingPack {
  PackBuffer data;
  std::vector<std::pair<Id, BlobLocation>> entries;
};

Repository::Repository(std::unique_ptr<Backend> b) : backend_(std::move(b)) {
  uploaders_ = std::make_unique<ThreadPool>(static_cast<size_t>(std::max(1, backend_->Connections())));
}

// ---- files fetched while the key is derived (StartFileFetch)

struct Repository::FileFetch {
  static constexpr FileType kTypes[2] = {FileType::kIndex, FileType::kSnapshot};
  static constexpr int64_t kMaxBytes = int64_t{256} << 20;  // fetched copies held at once, at most
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  bool done[2] = {false, false};
  std::map<std::string, std::string> files[2];  // name -> sealed bytes
};

Repository::~Repository() {
  if (fetch_) fetch_->stop = true;
  if (fetch_thread_.joinable()) fetch_thread_.join();
  uploaders_->Stop();
}

void Repository::StartFileFetch() {
  auto f = std::make_shared<FileFetch>();
  fetch_ = f;
  Backend* b = backend_.get();
  size_t parallel = static_cast<size_t>(std::clamp(b->Connections(), 1, 8));
  fetch_thread_ = std::thread([f, b, parallel] {
    int64_t budget = FileFetch::kMaxBytes;
    for (int i = 0; i < 2; ++i) {
      std::map<std::string, std::string> got;
      auto listed = f->stop ? std::nullopt : std::optional(b->List(FileFetch::kTypes[i]));
      if (listed && *listed) {
        std::vector<std::string> names;  // within the budget; the rest are loaded when needed
        for (const auto& fi : **listed) {
          if (fi.size > budget) break;
          budget -= fi.size;
          names.push_back(fi.name);
        }
        std::mutex got_mu;
        ParallelFor(names.size(), parallel, [&](size_t k) {
          if (f->stop) return;
          auto data = b->Load({FileFetch::kTypes[i], names[k]});
          if (!data) return;  // loaded again, and its error reported, by whoever needs it
          std::lock_guard l(got_mu);
          got.emplace(names[k], std::move(*data));
        });
      }
      {
        std::lock_guard l(f->mu);
        f->files[i] = std::move(got);
        f->done[i] = true;
      }
      f->cv.notify_all();
    }
  });
}

std::optional<std::string> Repository::TakeFetched(const Handle& h) {
  int i = h.type == FileType::kIndex ? 0 : h.type == FileType::kSnapshot ? 1 : -1;
  if (i < 0 || !fetch_) return std::nullopt;
  std::unique_lock l(fetch_->mu);
  fetch_->cv.wait(l, [&] { return fetch_->done[i]; });
  auto it = fetch_->files[i].find(h.name);
  if (it == fetch_->files[i].end()) return std::nullopt;
  std::string data = std::move(it->second);
  fetch_->files[i].erase(it);
  return data;
}

// ---- files: plaintext = 1 byte (0 raw, 1 zstd) + payload, sealed; name = SHA-256 of stored bytes.

Result<std::string> Repository::SaveJsonFile(FileType t, const json& j) {
  // Replace, not throw: names and paths that are not UTF-8 are also kept exactly in "*_raw" fields
  // (trees, manifests); the replaced copies are for display.
  return SaveJsonText(t, j.dump(-1, ' ', false, json::error_handler_t::replace));
}

Result<std::string> Repository::SaveJsonText(FileType t, std::string_view text) {
  Compression used;
  std::string body = Compress(text, CompressionMode::kZstd, &used);
  std::string plain;
  plain.reserve(body.size() + 9);
  plain.push_back(static_cast<char>(used));
  uint64_t raw = text.size();
  plain.append(reinterpret_cast<const char*>(&raw), 8);
  plain += body;
  std::string sealed = Seal(key_, plain);
  std::string name = IdHex(Sha256(sealed));
  DUMONT_RETURN_IF_ERROR(backend_->Save({t, name, true}, sealed));
  return name;
}

Result<json> Repository::LoadJsonFile(const Handle& h) {
  auto text = LoadJsonText(h);
  if (!text) return Err(text.error());
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded()) return Err(Status::Corruption(ObjectPath(h) + " does not hold valid JSON"));
  return j;
}

Result<std::string> Repository::LoadJsonText(const Handle& h) {
  std::string what = ObjectPath(h);
  auto fetched = TakeFetched(h);
  auto sealed = fetched ? Result<std::string>(std::move(*fetched)) : backend_->Load(h);
  if (!sealed) return Err(sealed.error().Annotate("reading " + what));
  if (h.type != FileType::kLock && IdHex(Sha256(*sealed)) != h.name) {
    return Err(Status::Corruption(what + " is damaged: its content does not match its name"));
  }
  auto plain = Unseal(key_, *sealed);
  if (!plain) return Err(plain.error().Annotate(what));
  if (plain->size() < 9) return Err(Status::Corruption(what + " is truncated"));
  uint64_t raw;
  std::memcpy(&raw, plain->data() + 1, 8);
  auto text = Decompress(std::string_view(*plain).substr(9), static_cast<Compression>((*plain)[0]), raw);
  if (!text) return Err(text.error().Annotate(what));
  return text;
}

// ---- init / open / keys

namespace {
Result<std::string> MakeKeyFile(const MasterKey& mk, std::string_view password, bool fast) {
  KdfParams p = DefaultKdfParams(fast);
  auto k = DeriveKey(password, p);
  if (!k) return Err(k.error());
  json master = {{"enc", B64(std::string_view(reinterpret_cast<const char*>(mk.enc.data()), 32))},
                 {"mac", B64(std::string_view(reinterpret_cast<const char*>(mk.mac.data()), 32))}};
  json kf = {{"version", 1},
             {"kdf", "argon2id"},
             {"opslimit", p.opslimit},
             {"memlimit", p.memlimit},
             {"lanes", p.lanes},
             {"salt", B64(p.salt)},
             {"created", Rfc3339(NowUnix())},
             {"hostname", Hostname()},
             {"username", Username()},
             {"data", B64(SealWith(k->data(), master.dump()))}};
  return kf.dump(2);
}
}  // namespace

Result<std::unique_ptr<Repository>> Repository::Init(std::unique_ptr<Backend> backend, std::string_view password,
                                                     const InitOptions& opts) {
  if (password.empty()) return Err(Status::InvalidArgument("the repository password must not be empty"));
  std::unique_ptr<Repository> r(new Repository(std::move(backend)));
  DUMONT_RETURN_IF_ERROR(r->backend_->Create());
  r->key_ = MasterKey::Random();
  auto kf = MakeKeyFile(r->key_, password, opts.fast_kdf);
  if (!kf) return Err(kf.error());
  std::string key_name = IdHex(Sha256(*kf));
  DUMONT_RETURN_IF_ERROR(r->backend_->Save({FileType::kKey, key_name, true}, *kf));
  r->key_name_ = key_name;
  r->config_.id = HexEncode(RandomBytes(16));
  r->config_.chunker = opts.chunker;
  std::string seed = RandomBytes(8);
  std::memcpy(&r->config_.gear_seed, seed.data(), 8);
  r->config_.created = Rfc3339(NowUnix());
  if (opts.version < kOldestRepoVersion || opts.version > kRepoVersion) {
    return Err(Status::InvalidArgument("cannot create a repository of format version " + std::to_string(opts.version)));
  }
  r->config_.version = opts.version;
  json cfg = {{"version", opts.version},
              {"id", r->config_.id},
              {"chunker", {{"min", opts.chunker.min_size}, {"avg_bits", opts.chunker.avg_bits}, {"max", opts.chunker.max_size}}},
              {"gear_seed", std::to_string(r->config_.gear_seed)},
              {"created", r->config_.created}};
  // The config is written last: a repository without config is not initialised (init can be re-run).
  DUMONT_RETURN_IF_ERROR(r->backend_->Save({FileType::kConfig, ""}, Seal(r->key_, cfg.dump())));
  return r;
}

Result<std::unique_ptr<Repository>> Repository::Open(std::unique_ptr<Backend> backend, std::string_view password,
                                                     bool load_index) {
  std::unique_ptr<Repository> r(new Repository(std::move(backend)));
  std::string where = r->backend_->Location();
  auto cfg_sealed = r->backend_->Load({FileType::kConfig, ""});
  if (!cfg_sealed) {
    if (cfg_sealed.error().code() == Code::kNotFound) {
      return Err(Status::NotFound("there is no repository at " + where + " (create one with `dumont snapshot init`)"));
    }
    return Err(cfg_sealed.error().Annotate("opening repository " + where));
  }
  if (load_index) r->StartFileFetch();  // while the key is derived
  auto keys = r->backend_->List(FileType::kKey);
  if (!keys) return Err(keys.error());
  if (keys->empty()) return Err(Status::Corruption("repository " + where + " has no key files (keys/ is empty)"));
  bool opened = false;
  for (const auto& kf_info : *keys) {
    auto text = r->backend_->Load({FileType::kKey, kf_info.name});
    if (!text) continue;
    json kf = json::parse(*text, nullptr, false);
    if (kf.is_discarded() || !kf.is_object() || kf.value("kdf", "") != "argon2id") continue;
    KdfParams p;
    std::string data;
    if (!kf["opslimit"].is_number_unsigned() || !kf["memlimit"].is_number_unsigned() || !UnB64(kf["salt"], &p.salt) ||
        !UnB64(kf["data"], &data)) {
      continue;
    }
    p.opslimit = kf["opslimit"];
    p.memlimit = kf["memlimit"];
    if (kf.contains("lanes")) {  // absent in key files written before it: one lane
      if (!kf["lanes"].is_number_unsigned() || kf["lanes"].get<uint64_t>() > kMaxKdfLanes) continue;
      p.lanes = kf["lanes"].get<uint32_t>();
    }
    auto k = DeriveKey(password, p);
    if (!k) continue;
    auto master_text = OpenWith(k->data(), data);
    if (!master_text) continue;
    json master = json::parse(*master_text, nullptr, false);
    std::string enc, mac;
    if (master.is_discarded() || !UnB64(master["enc"], &enc) || !UnB64(master["mac"], &mac) || enc.size() != 32 ||
        mac.size() != 32) {
      return Err(Status::Corruption("key file keys/" + kf_info.name + " decrypts but holds no valid master key"));
    }
    std::memcpy(r->key_.enc.data(), enc.data(), 32);
    std::memcpy(r->key_.mac.data(), mac.data(), 32);
    r->key_name_ = kf_info.name;
    opened = true;
    break;
  }
  if (!opened) {
    return Err(Status::Unauthenticated("wrong password for repository " + where +
                                       " (no key file opens with it; check DUMONT_REPO_PASSWORD or --password-file)"));
  }
  auto cfg_text = Unseal(r->key_, *cfg_sealed);
  if (!cfg_text) return Err(cfg_text.error().Annotate("repository config"));
  json cfg = json::parse(*cfg_text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object() || !cfg.contains("version") || !cfg["version"].is_number_integer()) {
    return Err(Status::Corruption("repository config is not valid"));
  }
  int version = cfg["version"];
  if (version < kOldestRepoVersion || version > kRepoVersion) {
    return Err(Status::FailedPrecondition("repository format version " + std::to_string(version) +
                                          " is not supported by this dumont (it reads versions " +
                                          std::to_string(kOldestRepoVersion) + " to " + std::to_string(kRepoVersion) +
                                          "); use a matching dumont"));
  }
  r->config_.version = version;
  try {
    r->config_.id = cfg.at("id");
    r->config_.chunker.min_size = cfg.at("chunker").at("min");
    r->config_.chunker.avg_bits = cfg.at("chunker").at("avg_bits");
    r->config_.chunker.max_size = cfg.at("chunker").at("max");
    r->config_.gear_seed = std::stoull(cfg.at("gear_seed").get<std::string>());
    r->config_.created = cfg.value("created", "");
  } catch (const std::exception& e) {
    return Err(Status::Corruption(std::string("repository config is missing fields: ") + e.what()));
  }
  const auto& c = r->config_.chunker;
  if (c.min_size < 64 || c.avg_bits < 8 || c.avg_bits > 28 || c.max_size < c.min_size || c.max_size > (64u << 20)) {
    return Err(Status::Corruption("repository config has invalid chunker parameters"));
  }
  if (load_index) DUMONT_RETURN_IF_ERROR(r->LoadIndex());
  return r;
}

Status Repository::AddKey(std::string_view password, bool fast_kdf) {
  if (password.empty()) return Status::InvalidArgument("the new password must not be empty");
  auto kf = MakeKeyFile(key_, password, fast_kdf);
  if (!kf) return kf.error();
  return backend_->Save({FileType::kKey, IdHex(Sha256(*kf)), true}, *kf);
}

Status Repository::ChangePassword(std::string_view password, bool fast_kdf) {
  if (password.empty()) return Status::InvalidArgument("the new password must not be empty");
  auto kf = MakeKeyFile(key_, password, fast_kdf);
  if (!kf) return kf.error();
  std::string name = IdHex(Sha256(*kf));
  // The new key is durable before the old one goes: a crash in between leaves both passwords working.
  DUMONT_RETURN_STATUS_IF_ERROR(backend_->Save({FileType::kKey, name, true}, *kf));
  std::string old = key_name_;
  key_name_ = name;
  return backend_->Remove({FileType::kKey, old});
}

Status Repository::RemoveKey(const std::string& name) {
  if (name == key_name_) return Status::FailedPrecondition("cannot remove the key in use");
  auto st = backend_->Stat({FileType::kKey, name});
  if (!st) return st.error();
  return backend_->Remove({FileType::kKey, name});
}

// ---- index

Status Repository::LoadIndex() {
  auto files = backend_->List(FileType::kIndex);
  if (!files) return files.error();
  std::unordered_map<Id, BlobLocation, IdHash> idx;
  std::vector<std::string> names;
  for (const auto& f : *files) {
    auto text = LoadJsonText({FileType::kIndex, f.name});
    if (!text) return text.error();
    if (FastParseIndex(*text, &idx)) {  // the index files this package writes
      names.push_back(f.name);
      continue;
    }
    json parsed = json::parse(*text, nullptr, false);
    if (parsed.is_discarded()) return Status::Corruption(ObjectPath({FileType::kIndex, f.name}) + " does not hold valid JSON");
    auto* j = &parsed;
    if (!j->contains("packs") || !(*j)["packs"].is_array()) {
      return Status::Corruption("index/" + f.name + " has no pack list");
    }
    for (const auto& p : (*j)["packs"]) {
      Id pack;
      if (!p.contains("id") || !p["id"].is_string() || !ParseId(p["id"].get<std::string>(), &pack) ||
          !p.contains("blobs") || !p["blobs"].is_array()) {
        return Status::Corruption("index/" + f.name + " has a malformed pack entry");
      }
      for (const auto& e : p["blobs"]) {
        Id id;
        BlobLocation l;
        if (!ParseEntry(e, &id, &l)) return Status::Corruption("index/" + f.name + " has a malformed blob entry");
        l.pack = pack;
        idx[id] = l;
      }
    }
    names.push_back(f.name);
  }
  std::lock_guard lock(mu_);
  index_ = std::move(idx);
  index_files_ = std::move(names);
  return Status::Ok();
}

size_t Repository::IndexedBlobs() {
  std::lock_guard lock(mu_);
  return index_.size();
}

std::map<Id, std::vector<std::pair<Id, BlobLocation>>> Repository::IndexByPack() {
  std::lock_guard lock(mu_);
  std::map<Id, std::vector<std::pair<Id, BlobLocation>>> out;
  for (const auto& [id, l] : index_) out[l.pack].emplace_back(id, l);
  for (auto& [p, v] : out) {
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.offset < b.second.offset; });
  }
  return out;
}

void Repository::ForgetPack(const Id& pack) {
  std::lock_guard lock(mu_);
  for (auto it = index_.begin(); it != index_.end();) {
    it = it->second.pack == pack ? index_.erase(it) : std::next(it);
  }
}

Status Repository::RewriteIndex(const std::map<Id, std::vector<std::pair<Id, BlobLocation>>>& keep,
                                const std::vector<std::string>* remove) {
  auto name = SaveJsonText(FileType::kIndex, IndexText(keep));
  if (!name) return name.error();
  std::vector<std::string> old;
  if (remove) {
    old = *remove;
  } else {
    std::lock_guard lock(mu_);
    old = index_files_;
  }
  for (const auto& o : old) {
    if (o != *name) DUMONT_RETURN_STATUS_IF_ERROR(backend_->Remove({FileType::kIndex, o}));
  }
  return LoadIndex();
}

// ---- blobs

bool Repository::HasBlob(const Id& id) {
  std::lock_guard lock(mu_);
  return index_.count(id) || pending_ids_.count(id);
}

std::optional<BlobLocation> Repository::Lookup(const Id& id) {
  std::lock_guard lock(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

Result<bool> Repository::SaveBlob(BlobType t, const Id& id, std::string_view plaintext, uint64_t* stored_bytes) {
  {
    std::lock_guard lock(mu_);
    if (!upload_error_.ok()) return Err(upload_error_);
    if (index_.count(id) || pending_ids_.count(id)) return false;
    pending_ids_.insert(id);
  }
  // Compressed and sealed in per-thread buffers, then copied once, into the pack.
  Compression used;
  std::string_view body = CompressView(plaintext, compression_, &used);
  thread_local BigBuffer seal_buf;
  size_t sealed_len = body.size() + kSealOverhead;
  char* seal_out = seal_buf.Get(sealed_len);
  SealTo(key_, body, BlobAad(id, used, plaintext.size()), seal_out);
  std::string_view sealed(seal_out, sealed_len);
  if (stored_bytes) *stored_bytes = sealed.size();
  std::unique_lock lock(mu_);
  // Trees and data go to separate packs: a snapshot's trees then sit together in a few packs that
  // PrefetchTrees reads with one request each.
  auto& open_pack = open_packs_[t == BlobType::kTree ? 1 : 0];
  if (!open_pack) {
    open_pack = std::make_shared<PendingPack>();
    if (t == BlobType::kData && !spare_packs_.empty()) {
      open_pack->data = std::move(spare_packs_.back());
      spare_packs_.pop_back();
    }
    open_pack->data.reserve(t == BlobType::kTree ? (1 << 20) : pack_target_ + (1 << 20));
  }
  BlobLocation l;
  l.type = t;
  l.offset = static_cast<uint32_t>(open_pack->data.size());
  l.length = static_cast<uint32_t>(sealed.size());
  l.raw_length = static_cast<uint32_t>(plaintext.size());
  l.compression = used;
  open_pack->data += sealed;
  open_pack->entries.emplace_back(id, l);
  if (open_pack->data.size() >= pack_target_) DUMONT_RETURN_IF_ERROR(SealAndQueueLocked(lock, open_pack));
  return true;
}

Status Repository::SealAndQueueLocked(std::unique_lock<std::mutex>& lock, std::shared_ptr<PendingPack>& open) {
  auto pack = std::move(open);
  open.reset();
  if (!pack) return Status::Ok();
  std::string header;
  AppendEntries(header, pack->entries);
  std::string sealed_header = Seal(key_, header);
  uint32_t hlen = static_cast<uint32_t>(sealed_header.size());
  const size_t body_len = pack->data.size();
  const int version = config_.version;
  pack->data += sealed_header;
  if (version < 3) pack->data.append(reinterpret_cast<const char*>(&hlen), 4);
  // Backpressure: at most Connections() packs uploading and at most kMaxUploadBytes of them, plus
  // the one being filled. With 32 S3 connections and 16 MiB packs the connection count alone
  // allowed 512 MiB, and a slow server filled it: a backup's RSS reached 1005 MB. 16 uploads of
  // 16 MiB in flight still keep a server busy (each is a whole PUT).
  const size_t by_bytes = std::max<size_t>(1, kMaxUploadBytes / std::max<size_t>(pack_target_, 1));
  int max_in_flight = static_cast<int>(std::min<size_t>(static_cast<size_t>(std::max(1, backend_->Connections())), by_bytes));
  cv_.wait(lock, [&] { return uploads_in_flight_ < max_in_flight || !upload_error_.ok(); });
  if (!upload_error_.ok()) return upload_error_;
  ++uploads_in_flight_;
  uploaders_->Submit([this, pack, body_len, hlen, version] {
    // The pack's id is computed once, outside the lock. Version 3 names a pack by the SHA-256 of its
    // header and trailer, and the trailer carries the XXH3-128 of the blobs (~15x cheaper than
    // SHA-256 over every byte, which was ~8 % of a first backup's CPU); the blobs' GCM tags still
    // authenticate every byte.
    Id pack_id;
    if (version >= 3) {
      XXH128_canonical_t sum = BlobsChecksum(std::string_view(pack->data).substr(0, body_len));
      pack->data.append(reinterpret_cast<const char*>(sum.digest), kPackChecksumSize);
      pack->data.append(reinterpret_cast<const char*>(&hlen), 4);
      pack_id = Sha256(std::string_view(pack->data).substr(body_len));
    } else {
      pack_id = Sha256(pack->data);
    }
    Status st = WritePack(pack_id, *pack, version < 3);
    {
      std::lock_guard l(mu_);
      --uploads_in_flight_;
      if (!st.ok()) {
        if (upload_error_.ok()) upload_error_ = st;
      } else {
        std::vector<std::pair<Id, BlobLocation>> blobs;
        for (auto [id, loc] : pack->entries) {
          loc.pack = pack_id;
          index_[id] = loc;
          pending_ids_.erase(id);
          blobs.emplace_back(id, loc);
        }
        unindexed_.emplace_back(pack_id, std::move(blobs));
      }
      if (pack->data.capacity() > pack_target_ && spare_packs_.size() < kSparePacks) {
        pack->data.clear();
        spare_packs_.push_back(std::move(pack->data));
      }
      cv_.notify_all();
    }
  });
  return Status::Ok();
}

Status Repository::WritePack(const Id& id, const PendingPack& p, bool name_is_sha256) {
  Status st = backend_->Save({FileType::kPack, IdHex(id), name_is_sha256}, std::string_view(p.data));
  return st.ok() ? st : st.Annotate("uploading pack " + IdHex(id));
}

Status Repository::WriteIndexLocked(std::unique_lock<std::mutex>& lock) {
  if (unindexed_.empty()) return Status::Ok();
  auto batch = std::move(unindexed_);
  unindexed_.clear();
  lock.unlock();
  auto name = SaveJsonText(FileType::kIndex, IndexText(batch));
  lock.lock();
  if (!name) return name.error();
  index_files_.push_back(*name);
  return Status::Ok();
}

Status Repository::Flush() {
  std::unique_lock lock(mu_);
  if (!upload_error_.ok()) return upload_error_;
  for (auto& open : open_packs_) DUMONT_RETURN_STATUS_IF_ERROR(SealAndQueueLocked(lock, open));
  cv_.wait(lock, [&] { return uploads_in_flight_ == 0; });
  if (!upload_error_.ok()) return upload_error_;
  return WriteIndexLocked(lock);
}

namespace {
// `sealed` is the pack's sealed header; `data_len` the bytes before it (where the blobs are).
Result<std::vector<PackHeaderEntry>> ParsePackHeader(const MasterKey& key, const std::string& name, std::string_view sealed,
                                                     uint64_t data_len) {
  auto text = Unseal(key, sealed);
  if (!text) return Err(text.error().Annotate("pack " + name + " header"));
  json h = json::parse(*text, nullptr, false);
  if (!h.is_array()) return Err(Status::Corruption("pack " + name + " header is not a list"));
  std::vector<PackHeaderEntry> out;
  for (const auto& e : h) {
    Id id;
    BlobLocation l;
    if (!ParseEntry(e, &id, &l) || static_cast<uint64_t>(l.offset) + l.length > data_len) {
      return Err(Status::Corruption("pack " + name + " header has a malformed entry"));
    }
    out.push_back({id, l.type, l.offset, l.length, l.raw_length, l.compression});
  }
  return out;
}

// The header length in a pack's trailer, checked against the pack's size. Errors name the pack.
Result<uint32_t> HeaderLength(const std::string& name, std::string_view trailer_end, uint64_t pack_size, int version) {
  const size_t trailer = PackTrailerSize(version);
  if (pack_size < trailer + kSealOverhead) return Err(Status::Corruption("pack " + name + " is truncated"));
  uint32_t hlen;
  std::memcpy(&hlen, trailer_end.data() + trailer_end.size() - 4, 4);
  if (hlen > pack_size - trailer || hlen < kSealOverhead) return Err(Status::Corruption("pack " + name + " has a bad header length"));
  return hlen;
}

// Version 3: a pack's name is the SHA-256 of its header and trailer (`tail`), so a reader of the
// header checks it without the key.
Status CheckTailName(const std::string& name, std::string_view tail) {
  Id id;
  if (!ParseId(name, &id) || Sha256(tail) != id) {
    return Status::Corruption("pack " + name + " is damaged: its header or trailer does not match its name");
  }
  return Status::Ok();
}
}  // namespace

Result<std::vector<PackHeaderEntry>> ReadPackHeader(const MasterKey& key, const std::string& name, std::string_view pack,
                                                    int version) {
  auto hlen = HeaderLength(name, pack, pack.size(), version);
  if (!hlen) return Err(hlen.error());
  uint64_t data_len = pack.size() - PackTrailerSize(version) - *hlen;
  if (version >= 3) DUMONT_RETURN_IF_ERROR(CheckTailName(name, pack.substr(data_len)));
  return ParsePackHeader(key, name, pack.substr(data_len, *hlen), data_len);
}

Result<std::vector<PackHeaderEntry>> LoadPackHeader(Backend& backend, const MasterKey& key, const std::string& name,
                                                    int64_t pack_size, int version) {
  const size_t trailer = PackTrailerSize(version);
  if (pack_size < static_cast<int64_t>(trailer + kSealOverhead)) return Err(Status::Corruption("pack " + name + " is truncated"));
  // One read of the tail usually holds the whole header (~120 bytes per blob); else a second one.
  int64_t tail_len = std::min<int64_t>(pack_size, 64 * 1024);
  auto tail = backend.Load({FileType::kPack, name}, pack_size - tail_len, tail_len);
  if (!tail) return Err(tail.error());
  if (tail->size() != static_cast<size_t>(tail_len)) return Err(Status::Corruption("pack " + name + " is truncated"));
  auto hlen = HeaderLength(name, *tail, static_cast<uint64_t>(pack_size), version);
  if (!hlen) return Err(hlen.error());
  uint64_t data_len = static_cast<uint64_t>(pack_size) - trailer - *hlen;
  if (*hlen + trailer <= tail->size()) {
    std::string_view header_and_trailer = std::string_view(*tail).substr(tail->size() - trailer - *hlen);
    if (version >= 3) DUMONT_RETURN_IF_ERROR(CheckTailName(name, header_and_trailer));
    return ParsePackHeader(key, name, header_and_trailer.substr(0, *hlen), data_len);
  }
  auto sealed = backend.Load({FileType::kPack, name}, static_cast<int64_t>(data_len), *hlen);
  if (!sealed) return Err(sealed.error());
  if (version >= 3) {
    std::string header_and_trailer = *sealed;
    header_and_trailer.append(*tail, tail->size() - trailer, trailer);
    DUMONT_RETURN_IF_ERROR(CheckTailName(name, header_and_trailer));
  }
  return ParsePackHeader(key, name, *sealed, data_len);
}

Status VerifyPackBytes(const Id& id, std::string_view pack, int version) {
  const std::string name = IdHex(id);
  if (version < 3) {
    if (Sha256(pack) != id) return Status::Corruption("pack " + name + " is damaged: its content does not match its name");
    return Status::Ok();
  }
  auto hlen = HeaderLength(name, pack, pack.size(), version);
  if (!hlen) return hlen.error();
  uint64_t data_len = pack.size() - PackTrailerSize(version) - *hlen;
  if (Sha256(pack.substr(data_len)) != id) {
    return Status::Corruption("pack " + name + " is damaged: its header or trailer does not match its name");
  }
  XXH128_canonical_t sum = BlobsChecksum(pack.substr(0, data_len));
  if (std::memcmp(sum.digest, pack.data() + data_len + *hlen, kPackChecksumSize) != 0) {
    return Status::Corruption("pack " + name + " is damaged: its blobs do not match the checksum in its trailer");
  }
  return Status::Ok();
}

std::string Repository::BlobAad(const Id& id, Compression c, uint64_t raw_length) const {
  if (!BlobsBound()) return {};
  // "dumont-blob" || id (32) || compression (1) || plaintext length (8, little-endian)
  std::string aad = "dumont-blob";
  aad.append(reinterpret_cast<const char*>(id.data()), id.size());
  aad.push_back(static_cast<char>(c));
  for (int i = 0; i < 8; ++i) aad.push_back(static_cast<char>(raw_length >> (8 * i)));
  return aad;
}

Result<std::string> Repository::OpenBlob(const Id& id, const BlobLocation& loc, std::string_view sealed) const {
  std::string pack = IdHex(loc.pack);
  auto body = Unseal(key_, sealed, BlobAad(id, loc.compression, loc.raw_length));
  if (!body) return Err(body.error().Annotate("blob " + IdHex(id) + " in pack " + pack));
  auto plain = Decompress(*body, loc.compression, loc.raw_length);
  if (!plain) return Err(plain.error().Annotate("blob " + IdHex(id) + " in pack " + pack));
  if (BlobId(*plain) != id) {
    return Err(Status::Corruption("blob " + IdHex(id) + " in pack " + pack + " does not match its id"));
  }
  return plain;
}

Result<std::string> Repository::LoadBlob(const Id& id) {
  {
    std::lock_guard l(tree_cache_mu_);
    if (auto it = tree_cache_.find(id); it != tree_cache_.end()) {
      std::string blob = std::move(it->second);
      tree_cache_.erase(it);
      return blob;
    }
  }
  auto loc = Lookup(id);
  if (!loc) return Err(Status::NotFound("blob " + IdHex(id) + " is not in the index"));
  std::string pack = IdHex(loc->pack);
  auto sealed = backend_->Load({FileType::kPack, pack}, loc->offset, loc->length);
  if (!sealed) return Err(sealed.error().Annotate("reading blob " + IdHex(id).substr(0, 12) + " from pack " + pack));
  return OpenBlob(id, *loc, *sealed);
}

void Repository::PrefetchTrees(const Id& root, int parallelism) {
  // The tree blobs of every pack, by offset. A pack whose tree blobs fill at least half of their
  // span (always, for the tree-only packs written since trees got their own packs) is read with one
  // request and all its trees are cached; other trees are read one request each.
  std::unordered_map<Id, std::vector<std::pair<Id, BlobLocation>>, IdHash> trees_by_pack;
  {
    std::lock_guard l(mu_);
    for (const auto& [id, loc] : index_) {
      if (loc.type == BlobType::kTree) trees_by_pack[loc.pack].emplace_back(id, loc);
    }
  }
  for (auto& [pack, v] : trees_by_pack) {
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.offset < b.second.offset; });
  }
  std::unordered_map<Id, bool, IdHash> packs_read;
  std::vector<Id> level = {root};
  std::unordered_map<Id, bool, IdHash> seen = {{root, true}};
  while (!level.empty()) {
    // Work for this level: whole packs (span reads) and single trees.
    std::vector<Id> span_packs, singles;
    {
      std::lock_guard l(tree_cache_mu_);
      for (const Id& id : level) {
        if (tree_cache_.count(id)) continue;
        auto loc = Lookup(id);
        if (!loc) continue;  // the walk reports it
        auto it = trees_by_pack.find(loc->pack);
        uint64_t lo = UINT64_MAX, hi = 0, bytes = 0;
        if (it != trees_by_pack.end()) {
          for (const auto& [tid, tl] : it->second) {
            lo = std::min<uint64_t>(lo, tl.offset);
            hi = std::max<uint64_t>(hi, uint64_t{tl.offset} + tl.length);
            bytes += tl.length;
          }
        }
        bool dense = it != trees_by_pack.end() && it->second.size() > 1 && bytes * 2 >= hi - lo && hi - lo <= (64u << 20);
        if (dense) {
          if (packs_read.emplace(loc->pack, true).second) span_packs.push_back(loc->pack);
        } else {
          singles.push_back(id);
        }
      }
    }
    std::vector<std::pair<Id, std::string>> got;
    std::mutex got_mu;
    size_t total = span_packs.size() + singles.size();
    ParallelFor(total, static_cast<size_t>(std::max(1, parallelism)), [&](size_t k) {
      std::vector<std::pair<Id, std::string>> mine;
      if (k < span_packs.size()) {
        const auto& trees = trees_by_pack[span_packs[k]];
        uint64_t lo = trees.front().second.offset, hi = 0;
        for (const auto& [tid, tl] : trees) hi = std::max<uint64_t>(hi, uint64_t{tl.offset} + tl.length);
        auto span = backend_->Load({FileType::kPack, IdHex(span_packs[k])}, static_cast<int64_t>(lo), static_cast<int64_t>(hi - lo));
        if (!span) return;  // LoadBlob retries each tree and reports errors
        for (const auto& [tid, tl] : trees) {
          auto plain = OpenBlob(tid, tl, std::string_view(*span).substr(tl.offset - lo, tl.length));
          if (plain) mine.emplace_back(tid, std::move(*plain));
        }
      } else {
        const Id& id = singles[k - span_packs.size()];
        auto plain = LoadBlob(id);
        if (plain) mine.emplace_back(id, std::move(*plain));
      }
      std::lock_guard l(got_mu);
      for (auto& m : mine) got.push_back(std::move(m));
    });
    std::vector<Id> below;
    std::lock_guard l(tree_cache_mu_);
    for (auto& [id, blob] : got) tree_cache_.emplace(id, std::move(blob));
    for (const Id& id : level) {
      auto it = tree_cache_.find(id);
      if (it == tree_cache_.end()) continue;
      auto nodes = DecodeTree(it->second, "");
      if (!nodes) continue;
      for (const auto& node : *nodes) {
        if (node.type == "dir" && node.subtree && seen.emplace(*node.subtree, true).second) below.push_back(*node.subtree);
      }
    }
    level = std::move(below);
  }
}

// ---- snapshots

namespace {
json ManifestJson(const SnapshotManifest& m) {
  json j = {{"time", m.time}, {"time_unix", m.time_unix}, {"time_ns", m.time_ns}, {"tree", IdHex(m.tree)}, {"paths", m.paths},
            {"hostname", m.hostname}, {"username", m.username}, {"tags", m.tags}, {"summary", m.summary}};
  if (m.parent) j["parent"] = IdHex(*m.parent);
  // Paths are bytes, like tree names: if one is not UTF-8, all are kept exactly in "paths_raw"
  // (base64url), so the next backup of the same paths finds this snapshot as its parent.
  if (!std::all_of(m.paths.begin(), m.paths.end(), [](const std::string& p) { return ValidUtf8(p); })) {
    json raw = json::array();
    for (const auto& p : m.paths) raw.push_back(B64(p));
    j["paths_raw"] = raw;
  }
  return j;
}
bool ParseManifest(const json& j, SnapshotManifest* m) {
  try {
    m->time = j.at("time");
    m->time_unix = j.at("time_unix");
    m->time_ns = j.value("time_ns", m->time_unix * 1'000'000'000);
    if (!ParseId(j.at("tree").get<std::string>(), &m->tree)) return false;
    m->paths = j.at("paths").get<std::vector<std::string>>();
    if (j.contains("paths_raw")) {
      const json& raw = j["paths_raw"];
      if (!raw.is_array() || raw.size() != m->paths.size()) return false;
      for (size_t i = 0; i < raw.size(); ++i) {
        if (!UnB64(raw[i], &m->paths[i])) return false;
      }
    }
    m->hostname = j.value("hostname", "");
    m->username = j.value("username", "");
    m->tags = j.value("tags", std::vector<std::string>{});
    m->summary = j.value("summary", json::object());
    if (j.contains("parent")) {
      Id p;
      if (!ParseId(j["parent"].get<std::string>(), &p)) return false;
      m->parent = p;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace

Result<Id> Repository::SaveSnapshot(const SnapshotManifest& m) {
  auto name = SaveJsonFile(FileType::kSnapshot, ManifestJson(m));
  if (!name) return Err(name.error());
  Id id;
  ParseId(*name, &id);
  return id;
}

Result<SnapshotManifest> Repository::LoadSnapshot(const Id& id) {
  auto j = LoadJsonFile({FileType::kSnapshot, IdHex(id)});
  if (!j) return Err(j.error());
  SnapshotManifest m;
  if (!ParseManifest(*j, &m)) return Err(Status::Corruption("snapshots/" + IdHex(id) + " is not a valid manifest"));
  return m;
}

Result<std::vector<std::pair<Id, SnapshotManifest>>> Repository::ListSnapshots() {
  auto files = backend_->List(FileType::kSnapshot);
  if (!files) return Err(files.error());
  std::vector<std::pair<Id, SnapshotManifest>> out;
  for (const auto& f : *files) {
    Id id;
    if (!ParseId(f.name, &id)) continue;
    auto m = LoadSnapshot(id);
    if (!m) return Err(m.error());
    out.emplace_back(id, std::move(*m));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second.time_ns != b.second.time_ns ? a.second.time_ns < b.second.time_ns : a.first < b.first;
  });
  return out;
}

Result<std::pair<Id, SnapshotManifest>> Repository::FindSnapshot(const std::string& ref) {
  auto all = ListSnapshots();
  if (!all) return Err(all.error());
  if (all->empty()) return Err(Status::NotFound("the repository has no snapshots yet"));
  if (ref == "latest") return all->back();
  if (ref.size() < 4) return Err(Status::InvalidArgument("snapshot id prefix '" + ref + "' is too short (4+ characters)"));
  std::vector<std::pair<Id, SnapshotManifest>> hits;
  for (auto& s : *all) {
    if (IdHex(s.first).rfind(ref, 0) == 0) hits.push_back(s);
  }
  if (hits.empty()) return Err(Status::NotFound("no snapshot matches '" + ref + "'"));
  if (hits.size() > 1) return Err(Status::InvalidArgument("snapshot prefix '" + ref + "' is ambiguous; give more characters"));
  return hits.front();
}

// ---- locks

namespace {
std::string SealedJsonPlain(const std::string& text) {
  std::string plain;
  plain.push_back(0);
  uint64_t raw = text.size();
  plain.append(reinterpret_cast<const char*>(&raw), 8);
  plain += text;
  return plain;
}
}  // namespace

Repository::Lock::Lock(Repository* r, std::string name, std::string body)
    : repo_(r), name_(std::move(name)), body_(json::parse(body)) {
  refresher_ = std::thread([this] { Refresh(); });
}

Repository::Lock::~Lock() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  refresher_.join();
  (void)repo_->backend_->Remove({FileType::kLock, name_});
}

// Re-saves the lock with the current time (Save replaces an object atomically on every backend).
// A failed refresh is retried at the next tick; the lock only goes stale after 30 min of failures.
void Repository::Lock::Refresh() {
  auto period = std::chrono::duration<double>(repo_->lock_refresh_s_);
  std::unique_lock l(mu_);
  while (!cv_.wait_for(l, period, [&] { return stop_; })) {
    body_["time_unix"] = NowUnix();
    std::string sealed = Seal(repo_->key_, SealedJsonPlain(body_.dump()));
    l.unlock();
    Status st = repo_->backend_->Save({FileType::kLock, name_}, sealed);
    l.lock();
    if (st.ok()) ++refreshes_;
  }
}

Status Repository::RemoveStaleLocks(bool all) {
  auto files = backend_->List(FileType::kLock);
  if (!files) return files.error();
  int64_t now = NowUnix();
  std::string host = Hostname();
  for (const auto& f : *files) {
    auto j = LoadJsonFile({FileType::kLock, f.name});
    bool stale = all || !j;
    if (j) {
      int64_t t = j->value("time_unix", int64_t{0});
      int pid = j->value("pid", 0);
      if (now - t > lock_stale_s_) stale = true;
      if (j->value("hostname", "") == host && pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) stale = true;
    }
    if (stale) DUMONT_RETURN_STATUS_IF_ERROR(backend_->Remove({FileType::kLock, f.name}));
  }
  return Status::Ok();
}

Result<std::unique_ptr<Repository::Lock>> Repository::LockRepo(bool exclusive) {
  DUMONT_RETURN_IF_ERROR(RemoveStaleLocks(false));
  auto conflicts = [&](const std::string& mine) -> Status {
    auto files = backend_->List(FileType::kLock);
    if (!files) return files.error();
    for (const auto& f : *files) {
      if (f.name == mine) continue;
      auto j = LoadJsonFile({FileType::kLock, f.name});
      if (!j) continue;
      if (exclusive || j->value("exclusive", false)) {
        return Status::Conflict("the repository is locked (" + std::string(j->value("exclusive", false) ? "exclusive" : "shared") +
                                ") by PID " + std::to_string(j->value("pid", 0)) + " on " + j->value("hostname", "?") +
                                " since " + Rfc3339(j->value("time_unix", int64_t{0})) +
                                "; if that process is gone, run `dumont snapshot unlock`");
      }
    }
    return Status::Ok();
  };
  DUMONT_RETURN_IF_ERROR(conflicts(""));
  json lock = {{"time_unix", NowUnix()}, {"exclusive", exclusive}, {"hostname", Hostname()},
               {"username", Username()}, {"pid", static_cast<int>(getpid())}};
  std::string name = HexEncode(RandomBytes(32));
  // Locks are named randomly (not by content) so two identical lock bodies never collide.
  std::string text = lock.dump();
  DUMONT_RETURN_IF_ERROR(backend_->Save({FileType::kLock, name}, Seal(key_, SealedJsonPlain(text))));
  Status again = conflicts(name);  // someone raced us: back off
  if (!again.ok()) {
    (void)backend_->Remove({FileType::kLock, name});
    return Err(again);
  }
  return std::make_unique<Lock>(this, name, text);
}

}  // namespace dumont::snapshot
