// A strict, allocation-free scanner for the JSON this package writes itself (trees, index files):
// objects, arrays, strings without escapes, integers. It is the fast path in front of nlohmann::json
// for the two documents every command reads in bulk. Anything it does not fully understand (an
// escape, a float, an unexpected token) makes it return false, and the caller falls back to the
// general parser, which also gives the precise error message.
#pragma once

#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>

#include "snapshot/crypto.h"

namespace dumont::snapshot {

class JsonScan {
 public:
  explicit JsonScan(std::string_view s) : s_(s) {}

  // Calls value(key) for every member of an object; value parses the member's value.
  template <typename Fn>
  bool Object(Fn value) {
    if (!Lit('{')) return false;
    Ws();
    if (Peek() == '}') return ++i_, true;
    for (;;) {
      std::string_view k;
      if (!Str(&k) || !Lit(':') || !value(k)) return false;
      Ws();
      char c = Next();
      if (c == '}') return true;
      if (c != ',') return false;
    }
  }

  // Calls element() for every element of an array; element parses one.
  template <typename Fn>
  bool Array(Fn element) {
    if (!Lit('[')) return false;
    Ws();
    if (Peek() == ']') return ++i_, true;
    for (;;) {
      if (!element()) return false;
      Ws();
      char c = Next();
      if (c == ']') return true;
      if (c != ',') return false;
    }
  }

  bool Str(std::string_view* out) {
    if (!Lit('"')) return false;
    size_t start = i_;
    while (i_ < s_.size()) {
      char c = s_[i_];
      if (c == '"') {
        *out = s_.substr(start, i_ - start);
        ++i_;
        return true;
      }
      if (c == '\\' || static_cast<unsigned char>(c) < 0x20) return false;  // escapes: general parser
      ++i_;
    }
    return false;
  }

  template <typename T>
  bool Int(T* out) {
    Ws();
    bool neg = Peek() == '-';
    if (neg) {
      if (!std::is_signed_v<T>) return false;
      ++i_;
    }
    size_t start = i_;
    unsigned __int128 v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      v = v * 10 + static_cast<unsigned>(s_[i_] - '0');
      if (v > (static_cast<unsigned __int128>(1) << 64)) return false;
      ++i_;
    }
    if (i_ == start || i_ - start > 20) return false;
    char c = Peek();
    if (c == '.' || c == 'e' || c == 'E') return false;
    if (neg) {
      if (v > static_cast<unsigned __int128>(std::numeric_limits<T>::max()) + 1) return false;
      *out = static_cast<T>(-static_cast<__int128>(v));
    } else {
      if (v > static_cast<unsigned __int128>(std::numeric_limits<T>::max())) return false;
      *out = static_cast<T>(v);
    }
    return true;
  }

  bool IdValue(Id* out) {
    std::string_view h;
    return Str(&h) && ParseId(h, out);
  }

  // True when only whitespace is left.
  bool AtEnd() {
    Ws();
    return i_ == s_.size();
  }

 private:
  char Peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  char Next() { return i_ < s_.size() ? s_[i_++] : '\0'; }
  void Ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool Lit(char c) {
    Ws();
    return Next() == c;
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace dumont::snapshot
