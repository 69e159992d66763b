// Per-user provider credentials: sealed at rest (auth::Sealer, key in the data directory), opened only
// to build that user's provider client, never logged and never returned (the API shows a hint).
#include <algorithm>

#include "fleet/fleet.h"

namespace dumont::fleet {

using nlohmann::json;

namespace {
std::string Context(const std::string& owner, const std::string& provider) { return owner + "|" + provider; }

// "...a1b2" for a long secret; nothing for short ones (a hint must not give the secret away).
std::string Hint(const json& creds, const CredentialSpec& spec) {
  for (const auto& f : spec.required) {
    std::string v = creds.value(f, "");
    if (v.size() >= 12) return "..." + v.substr(v.size() - 4);
  }
  return "saved";
}
}  // namespace

void Fleet::RegisterProviderFactory(const std::string& name, CredentialSpec spec, ProviderFactory f) {
  factories_[name] = Factory{std::move(spec), std::move(f)};
}

Result<std::shared_ptr<provider::Provider>> Fleet::ProviderFor(const std::string& owner, const std::string& name) {
  if (factories_.count(name) && sealer_) {
    auto cred = store_.GetCredential(owner, name);
    if (cred) {
      std::lock_guard l(user_providers_mu_);
      auto& up = user_providers_[{owner, name}];
      if (up.p && up.sealed == cred->sealed) return up.p;
      auto plain = sealer_->Open(cred->sealed, Context(owner, name));
      if (!plain) return Err(plain.error().Annotate(name + " credentials"));
      auto creds = json::parse(*plain, nullptr, false);
      auto made = factories_[name].make(creds);
      if (!made) return Err(made.error().Annotate(name + " credentials"));
      up = UserProvider{cred->sealed, std::shared_ptr<provider::Provider>(std::move(*made))};
      return up.p;
    }
    if (cred.error().code() != Code::kNotFound) return Err(cred.error());
  }
  if (auto it = providers_.find(name); it != providers_.end()) return it->second;
  if (factories_.count(name)) {
    return Err(Status::FailedPrecondition("no " + factories_[name].spec.title + " credentials: save them in Settings, "
                                          "with `dumont credentials set " + name + " ...`, or PUT "
                                          "/api/v1/settings/providers/" + name));
  }
  std::string names;
  for (const auto& [n, _] : providers_) names += (names.empty() ? "" : ", ") + n;
  for (const auto& [n, _] : factories_) {
    if (!providers_.count(n)) names += (names.empty() ? "" : ", ") + n;
  }
  return Err(Status::InvalidField("provider", "unknown provider '" + name + "'; available: " + names));
}

std::vector<std::shared_ptr<provider::Provider>> Fleet::ProvidersFor(const std::string& owner) {
  std::vector<std::shared_ptr<provider::Provider>> out;
  std::set<std::string> names;
  for (const auto& [n, _] : providers_) names.insert(n);
  if (auto creds = store_.ListCredentials(owner)) {
    for (const auto& c : *creds) names.insert(c.provider);
  }
  for (const auto& n : names) {
    if (auto p = ProviderFor(owner, n)) out.push_back(*p);
  }
  return out;
}

Result<json> Fleet::ListCredentials(const std::string& owner) {
  auto saved = store_.ListCredentials(owner);
  if (!saved) return Err(saved.error());
  json arr = json::array();
  for (const auto& [name, f] : factories_) {
    auto it = std::find_if(saved->begin(), saved->end(), [&](const auto& c) { return c.provider == name; });
    json fields = json::array();
    for (const auto& r : f.spec.required) fields.push_back({{"name", r}, {"required", true}});
    for (const auto& o : f.spec.optional) fields.push_back({{"name", o}, {"required", false}});
    json e = {{"provider", name},
              {"title", f.spec.title},
              {"fields", fields},
              {"configured", it != saved->end()},
              {"server_default", providers_.count(name) > 0}};
    if (it != saved->end()) {
      e["hint"] = it->hint;
      e["updated_at"] = it->updated_at;
    }
    arr.push_back(e);
  }
  return json{{"providers", arr}};
}

Result<json> Fleet::PutCredentials(const std::string& owner, const std::string& provider, const json& body) {
  auto f = factories_.find(provider);
  if (f == factories_.end()) {
    std::string names;
    for (const auto& [n, _] : factories_) names += (names.empty() ? "" : ", ") + n;
    return Err(Status::NotFound("provider '" + provider + "' takes no credentials; known: " + names));
  }
  if (!sealer_) return Err(Status::Unavailable("credential storage is not configured on this server"));
  if (!body.is_object()) return Err(Status::InvalidArgument("body must be a JSON object"));
  const auto& spec = f->second.spec;
  json creds = json::object();
  for (const auto& [k, v] : body.items()) {
    bool known = std::count(spec.required.begin(), spec.required.end(), k) ||
                 std::count(spec.optional.begin(), spec.optional.end(), k);
    if (!known) return Err(Status::InvalidField(k, "unknown field '" + k + "' for " + spec.title));
    if (!v.is_string()) return Err(Status::InvalidField(k, k + " must be a string"));
    if (v.get<std::string>().size() > 16384) return Err(Status::InvalidField(k, k + " is longer than 16384 characters"));
    creds[k] = v;
  }
  for (const auto& r : spec.required) {
    if (creds.value(r, "").empty()) return Err(Status::InvalidField(r, r + " is required for " + spec.title));
  }
  // Building the client validates the shape (e.g. a service-account JSON) before anything is saved.
  auto made = f->second.make(creds);
  if (!made) return Err(made.error());
  store::ProviderCredential c{owner, provider, sealer_->Seal(creds.dump(), Context(owner, provider)),
                              Hint(creds, spec), clock_.NowUnix()};
  DUMONT_RETURN_IF_ERROR(store_.PutCredential(c));
  {
    std::lock_guard l(user_providers_mu_);
    user_providers_.erase({owner, provider});
  }
  return json{{"provider", provider}, {"configured", true}, {"hint", c.hint}, {"updated_at", c.updated_at}};
}

Status Fleet::DeleteCredentials(const std::string& owner, const std::string& provider) {
  DUMONT_RETURN_STATUS_IF_ERROR(store_.DeleteCredential(owner, provider));
  std::lock_guard l(user_providers_mu_);
  user_providers_.erase({owner, provider});
  return Status::Ok();
}

}  // namespace dumont::fleet
