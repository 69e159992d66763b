#include "auth/sealer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <sodium.h>

#include "common/random.h"

namespace dumont::auth {

namespace {
constexpr size_t kKeyBytes = crypto_aead_xchacha20poly1305_ietf_KEYBYTES;
constexpr size_t kNonceBytes = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
}  // namespace

Sealer Sealer::FromKey(const std::string& key32) { return Sealer(key32); }

Result<Sealer> Sealer::OpenOrCreate(const std::string& path) {
  if (sodium_init() < 0) return Err(Status::Internal("libsodium failed to initialise"));
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    std::string key = ss.str();
    if (key.size() != kKeyBytes) {
      return Err(Status::Corruption("secret key file " + path + " has " + std::to_string(key.size()) + " bytes, expected " +
                                  std::to_string(kKeyBytes) + "; restore it from a backup (sealed credentials cannot be "
                                  "opened without it)"));
    }
    return Sealer(std::move(key));
  }
  std::string key = RandomBytes(kKeyBytes);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return OpenOrCreate(path);  // another process created it meanwhile
    return Err(Status::Unavailable("cannot create secret key file " + path + ": " + std::strerror(errno)));
  }
  bool ok = ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    ::unlink(path.c_str());
    return Err(Status::Unavailable("cannot write secret key file " + path));
  }
  return Sealer(std::move(key));
}

std::string Sealer::Seal(const std::string& plaintext, const std::string& context) const {
  std::string out(kNonceBytes + plaintext.size() + crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  randombytes_buf(o, kNonceBytes);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      o + kNonceBytes, &clen, reinterpret_cast<const unsigned char*>(plaintext.data()), plaintext.size(),
      reinterpret_cast<const unsigned char*>(context.data()), context.size(), nullptr, o,
      reinterpret_cast<const unsigned char*>(key_.data()));
  out.resize(kNonceBytes + clen);
  return Base64UrlEncode(out);
}

Result<std::string> Sealer::Open(const std::string& sealed, const std::string& context) const {
  std::string raw;
  if (!Base64UrlDecode(sealed, &raw) || raw.size() < kNonceBytes + crypto_aead_xchacha20poly1305_ietf_ABYTES) {
    return Err(Status::Corruption("sealed value is malformed"));
  }
  std::string out(raw.size() - kNonceBytes, '\0');
  unsigned long long mlen = 0;
  const auto* r = reinterpret_cast<const unsigned char*>(raw.data());
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(reinterpret_cast<unsigned char*>(out.data()), &mlen, nullptr,
                                                 r + kNonceBytes, raw.size() - kNonceBytes,
                                                 reinterpret_cast<const unsigned char*>(context.data()), context.size(),
                                                 r, reinterpret_cast<const unsigned char*>(key_.data())) != 0) {
    return Err(Status::Corruption("sealed value does not open with this server's key (altered, moved to another "
                                "account, or the key file changed)"));
  }
  out.resize(mlen);
  return out;
}

}  // namespace dumont::auth
