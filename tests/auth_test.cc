#include <gtest/gtest.h>

#include "auth/auth_service.h"
#include "auth/crypto.h"
#include "auth/sealer.h"
#include <sys/stat.h>
#include "common/random.h"
#include "test_util.h"

namespace dumont::auth {
namespace {

const std::string kKey(32, 'k');

TEST(Jwt, RoundTripAndRejections) {
  nlohmann::json claims = {{"sub", "usr_1"}, {"sid", "ses_1"}, {"exp", 2000}};
  std::string t = SignJwt(claims, kKey);
  auto ok = VerifyJwt(t, kKey, 1000);
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ((*ok)["sub"], "usr_1");

  // Expired.
  auto expired = VerifyJwt(t, kKey, 2000);
  ASSERT_FALSE(expired);
  EXPECT_EQ(expired.error().code(), Code::kUnauthenticated);
  EXPECT_NE(expired.error().message().find("expired"), std::string::npos);
  // Wrong key.
  EXPECT_FALSE(VerifyJwt(t, std::string(32, 'x'), 1000));
  // Tampered payload (role escalation attempt) with the old signature.
  auto dot1 = t.find('.'), dot2 = t.rfind('.');
  std::string forged = t.substr(0, dot1 + 1) +
                       Base64UrlEncode(R"({"sub":"usr_admin","sid":"ses_1","exp":2000})") + t.substr(dot2);
  EXPECT_FALSE(VerifyJwt(forged, kKey, 1000));
  // alg none, with and without a signature.
  std::string none = Base64UrlEncode(R"({"alg":"none","typ":"JWT"})") + "." +
                     Base64UrlEncode(claims.dump()) + ".";
  auto r = VerifyJwt(none, kKey, 1000);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("algorithm"), std::string::npos);
  EXPECT_FALSE(VerifyJwt(none + "abc", kKey, 1000));
  // HS512 header is refused even if "signed".
  EXPECT_FALSE(VerifyJwt(Base64UrlEncode(R"({"alg":"HS512"})") + t.substr(dot1), kKey, 1000));
  // Structure.
  for (std::string bad : std::vector<std::string>{"", "a", "a.b", "a.b.c.d", "!!!.???.###", std::string(9000, 'a')}) {
    EXPECT_FALSE(VerifyJwt(bad, kKey, 1000)) << bad.substr(0, 20);
  }
  // No exp.
  EXPECT_FALSE(VerifyJwt(SignJwt({{"sub", "x"}}, kKey), kKey, 1000));
}

TEST(Sealer, OpensOnlyUnalteredInItsOwnContextWithItsKey) {
  testing::TempDir dir;
  std::string path = dir / "credentials.key";
  auto s = Sealer::OpenOrCreate(path);
  ASSERT_TRUE(s);
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the key file is private";
  std::string sealed = s->Seal("api-key-123", "usr_a|vast");
  EXPECT_EQ(sealed.find("api-key-123"), std::string::npos);
  EXPECT_NE(s->Seal("api-key-123", "usr_a|vast"), sealed) << "a fresh nonce each time";
  EXPECT_EQ(*s->Open(sealed, "usr_a|vast"), "api-key-123");
  auto again = Sealer::OpenOrCreate(path);  // the same key after a restart
  EXPECT_EQ(*again->Open(sealed, "usr_a|vast"), "api-key-123");
  EXPECT_EQ(s->Open(sealed, "usr_b|vast").error().code(), Code::kCorruption) << "moved to another account";
  std::string altered = sealed;
  altered[altered.size() / 2] = altered[altered.size() / 2] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(s->Open(altered, "usr_a|vast"));
  EXPECT_FALSE(Sealer::FromKey(std::string(32, 'k')).Open(sealed, "usr_a|vast")) << "another server's key";
  EXPECT_FALSE(s->Open("not base64!", "usr_a|vast"));
  std::ofstream(dir / "short.key") << "short";
  EXPECT_FALSE(Sealer::OpenOrCreate(dir / "short.key")) << "a damaged key file is an error, not a new key";
}

TEST(Password, Argon2idHashesVerifyAndEmbedParameters) {
  auto h = HashPassword("correct horse battery", HashCost::kFast);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->rfind("$argon2id$", 0), 0u);
  EXPECT_TRUE(VerifyPassword("correct horse battery", *h));
  EXPECT_FALSE(VerifyPassword("correct horse batterY", *h));
  auto h2 = HashPassword("correct horse battery", HashCost::kFast);
  EXPECT_NE(*h, *h2);  // salted
  EXPECT_FALSE(VerifyPassword("x", "not a hash"));
}

TEST(Validation, EmailAndPasswordMessagesNameTheField) {
  EXPECT_EQ(*NormalizeEmail("  Alice@Example.COM "), "alice@example.com");
  for (const char* bad : {"", "alice", "a@b", "a@@b.com", "a b@c.com", "@x.com", "a@-x.com", "a@x..com"}) {
    auto r = NormalizeEmail(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(*r.error().field(), "email");
  }
  EXPECT_TRUE(ValidatePassword("correct horse", "a@b.com").ok());
  for (const char* bad : {"short", "aaaaaaaaaaaa", "password123", "1234567890"}) {
    Status s = ValidatePassword(bad, "a@b.com");
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_EQ(*s.field(), "password");
  }
  EXPECT_FALSE(ValidatePassword(std::string(129, 'x') + "y", "").ok());
  EXPECT_FALSE(ValidatePassword("me@example.com", "me@example.com").ok());
}

class AuthServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = store::OpenStore("sqlite://" + dir_ / "db.sqlite", clock_.NowUnix());
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
    AuthOptions o;
    o.hash_cost = HashCost::kFast;
    o.max_failures_per_account = 3;
    o.max_failures_per_address = 5;
    o.window_s = 600;
    o.access_ttl_s = 3600;
    svc_ = std::make_unique<AuthService>(*store_, clock_, kKey, o);
  }
  testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<AuthService> svc_;
};

TEST_F(AuthServiceTest, RegisterLoginAuthenticate) {
  auto u = svc_->Register("Bob@Example.com", "correct horse");
  ASSERT_TRUE(u) << u.error().ToString();
  EXPECT_EQ(u->email, "bob@example.com");
  EXPECT_EQ(u->role, "user");
  auto dup = svc_->Register("bob@example.com", "correct horse 2");
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code(), Code::kAlreadyExists);

  auto t = svc_->Login("bob@example.com", "correct horse", "10.0.0.1");
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->expires_in, 3600);
  auto id = svc_->Authenticate(t->access_token);
  ASSERT_TRUE(id) << id.error().ToString();
  EXPECT_EQ(id->user_id, u->id);
  EXPECT_EQ(id->role, "user");

  clock_.Advance(std::chrono::seconds(3601));
  auto late = svc_->Authenticate(t->access_token);
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message().find("expired"), std::string::npos);
}

TEST_F(AuthServiceTest, RefreshRotatesAndReuseRevokesTheFamily) {
  ASSERT_TRUE(svc_->Register("c@example.com", "correct horse"));
  auto t1 = svc_->Login("c@example.com", "correct horse", "ip");
  ASSERT_TRUE(t1);
  auto t2 = svc_->Refresh(t1->refresh_token);
  ASSERT_TRUE(t2) << t2.error().ToString();
  EXPECT_NE(t2->refresh_token, t1->refresh_token);
  EXPECT_EQ(t2->session_id, t1->session_id);
  auto t3 = svc_->Refresh(t2->refresh_token);
  ASSERT_TRUE(t3);
  ASSERT_TRUE(svc_->Authenticate(t3->access_token));

  // An attacker replays the stolen first token: the whole family dies, including the newest tokens.
  auto replay = svc_->Refresh(t1->refresh_token);
  ASSERT_FALSE(replay);
  EXPECT_EQ(replay.error().code(), Code::kUnauthenticated);
  EXPECT_FALSE(svc_->Refresh(t3->refresh_token));
  EXPECT_FALSE(svc_->Authenticate(t3->access_token));

  // Another session of the same user is unaffected.
  auto other = svc_->Login("c@example.com", "correct horse", "ip");
  ASSERT_TRUE(other);
  EXPECT_TRUE(svc_->Refresh(other->refresh_token));
  EXPECT_FALSE(svc_->Refresh("drt_garbage"));
  EXPECT_FALSE(svc_->Refresh("not-a-token"));
}

TEST_F(AuthServiceTest, LogoutEndsTheSessionForAccessAndRefreshTokens) {
  ASSERT_TRUE(svc_->Register("d@example.com", "correct horse"));
  auto t = svc_->Login("d@example.com", "correct horse", "ip");
  auto id = svc_->Authenticate(t->access_token);
  ASSERT_TRUE(id);
  ASSERT_TRUE(svc_->Logout(*id, t->refresh_token).ok());
  EXPECT_FALSE(svc_->Authenticate(t->access_token));
  EXPECT_FALSE(svc_->Refresh(t->refresh_token));
}

TEST_F(AuthServiceTest, ThrottlesPerAccountAndPerAddressWithRetryAfter) {
  ASSERT_TRUE(svc_->Register("e@example.com", "correct horse"));
  for (int i = 0; i < 3; ++i) {
    auto r = svc_->Login("e@example.com", "wrong password!", "1.1.1.1");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), Code::kUnauthenticated);
  }
  // Even the right password is refused while locked, and the answer says when to retry.
  auto locked = svc_->Login("e@example.com", "correct horse", "2.2.2.2");
  ASSERT_FALSE(locked);
  EXPECT_EQ(locked.error().code(), Code::kResourceExhausted);
  ASSERT_TRUE(locked.error().retry_after_s());
  EXPECT_EQ(*locked.error().retry_after_s(), 600);
  clock_.Advance(std::chrono::seconds(601));
  EXPECT_TRUE(svc_->Login("e@example.com", "correct horse", "2.2.2.2"));

  // Per address: spraying many accounts from one address.
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(svc_->Login("nobody" + std::to_string(i) + "@example.com", "x1234567890", "6.6.6.6"));
  }
  auto r = svc_->Login("e@example.com", "correct horse", "6.6.6.6");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kResourceExhausted);
}

TEST_F(AuthServiceTest, ApiKeysAuthenticateUntilRevokedAndOnlyByTheirOwner) {
  auto a = svc_->Register("f@example.com", "correct horse");
  auto b = svc_->Register("g@example.com", "correct horse");
  auto k = svc_->CreateApiKey(a->id, "ci");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->second.rfind("dk_", 0), 0u);
  EXPECT_EQ(k->first.prefix, k->second.substr(0, 10));
  auto id = svc_->Authenticate(k->second);
  ASSERT_TRUE(id);
  EXPECT_EQ(id->user_id, a->id);
  EXPECT_EQ(id->api_key_id, k->first.id);
  EXPECT_EQ(svc_->RevokeApiKey(b->id, k->first.id).code(), Code::kNotFound);
  EXPECT_TRUE(svc_->Authenticate(k->second));
  EXPECT_TRUE(svc_->RevokeApiKey(a->id, k->first.id).ok());
  EXPECT_FALSE(svc_->Authenticate(k->second));
  EXPECT_EQ(svc_->RevokeApiKey(a->id, k->first.id).code(), Code::kNotFound);
  EXPECT_FALSE(svc_->CreateApiKey(a->id, ""));
}

TEST_F(AuthServiceTest, InitialAdminOnlyOnAnEmptyDatabase) {
  auto first = svc_->EnsureInitialAdmin();
  ASSERT_TRUE(first);
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->first, "admin@dumont.local");
  EXPECT_GE((*first)->second.size(), 20u);
  auto t = svc_->Login("admin@dumont.local", (*first)->second, "ip");
  ASSERT_TRUE(t);
  EXPECT_EQ(svc_->Authenticate(t->access_token)->role, "admin");
  auto second = svc_->EnsureInitialAdmin();
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->has_value());
}

TEST(SigningKey, CreatedOnceWithMode0600) {
  testing::TempDir dir;
  auto k1 = LoadOrCreateSigningKey(dir / "k");
  ASSERT_TRUE(k1);
  EXPECT_EQ(k1->size(), 32u);
  EXPECT_EQ(std::filesystem::status(dir / "k").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto k2 = LoadOrCreateSigningKey(dir / "k");
  EXPECT_EQ(*k1, *k2);
  std::filesystem::permissions(dir / "k", std::filesystem::perms::all);
  ASSERT_TRUE(LoadOrCreateSigningKey(dir / "k"));
  EXPECT_EQ(std::filesystem::status(dir / "k").permissions() & std::filesystem::perms::others_read,
            std::filesystem::perms::none);
  std::ofstream(dir / "bad") << "xyz\n";
  auto bad = LoadOrCreateSigningKey(dir / "bad");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), Code::kCorruption);
}

}  // namespace
}  // namespace dumont::auth
