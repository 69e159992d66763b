// One suite, every Store backend: SQLite (temp file) and PostgreSQL (private server from
// pg_harness.sh, fresh database per test).
#include <gtest/gtest.h>
#include <thread>

#include "store/store.h"
#include "test_util.h"

namespace dumont::store {
namespace {

class StoreConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "sqlite") {
      url_ = "sqlite://" + dir_ / "dumont.db";
    } else {
      if (!std::getenv("DUMONT_TEST_PG_STATE")) GTEST_SKIP() << "run through ctest to get the PostgreSQL fixture";
      url_ = testing::NewPgDatabase();
      ASSERT_FALSE(url_.empty()) << "the PostgreSQL fixture did not start (see pg_start in ctest output)";
    }
    Reopen();
  }
  void Reopen() {
    store_.reset();
    auto s = OpenStore(url_, 1000);
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
  }
  User MakeUser(const std::string& id, const std::string& email, const std::string& role = "user") {
    User u{id, email, "hash-" + id, role, 100};
    EXPECT_TRUE(store_->CreateUser(u).ok());
    return u;
  }

  testing::TempDir dir_;
  std::string url_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreConformance, MigratesAndReportsSchemaVersion) {
  EXPECT_EQ(store_->Backend(), GetParam());
  EXPECT_EQ(*store_->SchemaVersion(), LatestSchemaVersion());
  EXPECT_TRUE(store_->Ping().ok());
  Reopen();  // applying migrations twice is a no-op
  EXPECT_EQ(*store_->SchemaVersion(), LatestSchemaVersion());
}

TEST_P(StoreConformance, RefusesANewerSchema) {
  auto db = OpenDb(url_);
  ASSERT_TRUE(db);
  ASSERT_TRUE((*db)->Exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                          {LatestSchemaVersion() + 5, "from the future", int64_t{1}}));
  db->reset();
  store_.reset();
  auto s = OpenStore(url_, 1000);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Code::kFailedPrecondition);
  EXPECT_NE(s.error().message().find("newer"), std::string::npos);
}

TEST_P(StoreConformance, UsersRoundTripUniqueEmailAndSurviveReopen) {
  MakeUser("usr_a", "a@example.com", "admin");
  MakeUser("usr_b", "b@example.com");
  Status dup = store_->CreateUser({"usr_c", "a@example.com", "h", "user", 1});
  EXPECT_EQ(dup.code(), Code::kAlreadyExists);
  EXPECT_NE(dup.message().find("a@example.com"), std::string::npos);
  Reopen();
  auto a = store_->GetUserByEmail("a@example.com");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->id, "usr_a");
  EXPECT_EQ(a->role, "admin");
  EXPECT_EQ(a->password_hash, "hash-usr_a");
  EXPECT_EQ(store_->GetUser("nope").error().code(), Code::kNotFound);
  EXPECT_EQ(*store_->CountUsers(), 2);
  EXPECT_EQ(store_->ListUsers()->size(), 2u);
  EXPECT_TRUE(store_->SetUserRole("usr_b", "readonly").ok());
  EXPECT_EQ(store_->GetUser("usr_b")->role, "readonly");
  EXPECT_EQ(store_->SetUserRole("nope", "user").code(), Code::kNotFound);
  EXPECT_TRUE(store_->SetUserPassword("usr_b", "new").ok());
  EXPECT_EQ(store_->GetUser("usr_b")->password_hash, "new");
}

TEST_P(StoreConformance, QuotesAndUnicodeAreDataNotSql) {
  MakeUser("usr_q", "o'brien?@example.com");
  auto u = store_->GetUserByEmail("o'brien?@example.com");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->id, "usr_q");
  ASSERT_TRUE(store_->SetMeta("k'?", "välue ✓ '; DROP TABLE users; --").ok());
  EXPECT_EQ(**store_->GetMeta("k'?"), "välue ✓ '; DROP TABLE users; --");
  EXPECT_EQ(*store_->CountUsers(), 1);
}

TEST_P(StoreConformance, SessionsRotateOnceAndRevoke) {
  MakeUser("usr_a", "a@example.com");
  Session s{"ses_1", "usr_a", 10, 1000, std::nullopt, ""};
  RefreshToken t1{"h1", "ses_1", "usr_a", 10, 1000, std::nullopt};
  ASSERT_TRUE(store_->CreateSession(s, t1).ok());
  RefreshToken t2{"h2", "ses_1", "usr_a", 20, 1000, std::nullopt};
  auto r = store_->RotateRefreshToken("h1", t2, 20);
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
  EXPECT_EQ(*store_->GetRefreshToken("h1")->used_at, 20);
  RefreshToken t3{"h3", "ses_1", "usr_a", 30, 1000, std::nullopt};
  r = store_->RotateRefreshToken("h1", t3, 30);  // replay
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  EXPECT_EQ(store_->GetRefreshToken("h3").error().code(), Code::kNotFound);
  EXPECT_FALSE(store_->GetSession("ses_1")->revoked_at.has_value());
  ASSERT_TRUE(store_->RevokeSession("ses_1", "reuse", 40).ok());
  auto got = store_->GetSession("ses_1");
  EXPECT_EQ(*got->revoked_at, 40);
  EXPECT_EQ(got->revoke_reason, "reuse");
  ASSERT_TRUE(store_->RevokeSession("ses_1", "again", 50).ok());  // first revocation wins
  EXPECT_EQ(*store_->GetSession("ses_1")->revoked_at, 40);

  Session s2{"ses_2", "usr_a", 10, 1000, std::nullopt, ""};
  ASSERT_TRUE(store_->CreateSession(s2, {"h9", "ses_2", "usr_a", 10, 1000, std::nullopt}).ok());
  ASSERT_TRUE(store_->RevokeUserSessions("usr_a", "password changed", 60).ok());
  EXPECT_EQ(*store_->GetSession("ses_2")->revoked_at, 60);
}

TEST_P(StoreConformance, ConcurrentRotationOfOneTokenSucceedsOnce) {
  MakeUser("usr_a", "a@example.com");
  ASSERT_TRUE(store_->CreateSession({"ses_1", "usr_a", 1, 1000, std::nullopt, ""},
                                    {"h0", "ses_1", "usr_a", 1, 1000, std::nullopt})
                  .ok());
  std::atomic<int> wins{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; ++i) {
    ts.emplace_back([&, i] {
      auto r = store_->RotateRefreshToken("h0", {"n" + std::to_string(i), "ses_1", "usr_a", 2, 1000, std::nullopt}, 2);
      if (r && *r) ++wins;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(wins.load(), 1);
}

TEST_P(StoreConformance, ApiKeysBelongToOneUser) {
  MakeUser("usr_a", "a@example.com");
  MakeUser("usr_b", "b@example.com");
  ApiKey k{"key_1", "usr_a", "ci", "dk_abc", "kh1", 5, std::nullopt, std::nullopt};
  ASSERT_TRUE(store_->CreateApiKey(k).ok());
  ASSERT_TRUE(store_->CreateApiKey({"key_2", "usr_a", "laptop", "dk_def", "kh2", 6, std::nullopt, std::nullopt}).ok());
  EXPECT_EQ(store_->ListApiKeys("usr_a")->size(), 2u);
  EXPECT_TRUE(store_->ListApiKeys("usr_b")->empty());
  EXPECT_EQ(store_->GetApiKeyByHash("kh1")->name, "ci");
  EXPECT_EQ(store_->RevokeApiKey("key_1", "usr_b", 9).code(), Code::kNotFound);
  ASSERT_TRUE(store_->TouchApiKey("key_1", 8).ok());
  EXPECT_EQ(*store_->GetApiKeyByHash("kh1")->last_used_at, 8);
  ASSERT_TRUE(store_->RevokeApiKey("key_1", "usr_a", 9).ok());
  EXPECT_EQ(store_->RevokeApiKey("key_1", "usr_a", 10).code(), Code::kNotFound);
  auto list = store_->ListApiKeys("usr_a");
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ(list->front().id, "key_2");
  EXPECT_EQ(*store_->GetApiKeyByHash("kh1")->revoked_at, 9);
}

TEST_P(StoreConformance, MetaUpserts) {
  EXPECT_FALSE(store_->GetMeta("x")->has_value());
  ASSERT_TRUE(store_->SetMeta("x", "1").ok());
  ASSERT_TRUE(store_->SetMeta("x", "2").ok());
  Reopen();
  EXPECT_EQ(**store_->GetMeta("x"), "2");
}

TEST_P(StoreConformance, AMigrationMissingBelowTheNewestIsStillApplied) {
  // A database that got a higher-numbered migration before a lower one existed (branches add them
  // concurrently): the missing one is applied on the next start, not skipped.
  auto db = OpenDb(url_);
  ASSERT_TRUE(db);
  ASSERT_TRUE((*db)->ExecScript("DROP TABLE blacklist; DROP TABLE machine_attempts").ok());
  ASSERT_TRUE((*db)->Exec("DELETE FROM schema_migrations WHERE version = 3"));
  db->reset();
  Reopen();
  EXPECT_EQ(*store_->SchemaVersion(), LatestSchemaVersion());
  EXPECT_TRUE(store_->ListBlacklist()) << "migration 3 was not re-applied";
  auto again = OpenDb(url_);
  ASSERT_TRUE(again);
  auto n = (*again)->Query("SELECT COUNT(*) FROM schema_migrations");
  ASSERT_TRUE(n);
  EXPECT_EQ(static_cast<size_t>(n->at(0).Int(0)), Migrations().size());
}

TEST_P(StoreConformance, DeploysEventsAndMachineAttempts) {
  Deploy d;
  d.id = "dep_1";
  d.owner = "usr_a";
  d.instance_id = "ins_1";
  d.reason = "create";
  d.provider = "vast";
  d.request_json = R"({"strategy":{"batch_size":5}})";
  d.created_ms = 1000;
  ASSERT_TRUE(store_->CreateDeploy(d).ok());
  Deploy older = d;
  older.id = "dep_0";
  older.state = "failed";
  older.created_ms = 500;
  older.finished_ms = 600;
  ASSERT_TRUE(store_->CreateDeploy(older).ok());
  EXPECT_EQ(store_->CreateDeploy(d).code(), Code::kAlreadyExists);
  auto open = store_->OpenDeployOf("ins_1");
  ASSERT_TRUE(open && *open);
  EXPECT_EQ((*open)->id, "dep_1") << "failed deploys are not open";
  // Events get 1, 2, 3 per deploy.
  EXPECT_EQ(*store_->AddDeployEvent("dep_1", 1001, "deploy_started", "{}"), 1);
  EXPECT_EQ(*store_->AddDeployEvent("dep_1", 1002, "batch_started", R"({"batch":1,"note":"it's \"quoted\""})"), 2);
  EXPECT_EQ(*store_->AddDeployEvent("dep_0", 601, "deploy_failed", "{}"), 1);
  EXPECT_EQ(*store_->AddDeployEvent("dep_1", 1003, "deploy_succeeded", "{}"), 3);
  Reopen();
  auto after1 = store_->ListDeployEvents("dep_1", 1, 10);
  ASSERT_TRUE(after1);
  ASSERT_EQ(after1->size(), 2u);
  EXPECT_EQ((*after1)[0].seq, 2);
  EXPECT_EQ((*after1)[0].data_json, R"({"batch":1,"note":"it's \"quoted\""})");
  EXPECT_EQ((*after1)[1].type, "deploy_succeeded");
  EXPECT_EQ(store_->ListDeployEvents("dep_1", 0, 1)->size(), 1u) << "limit";

  d.state = "succeeded";
  d.winner_machine_id = "m2";
  d.loser_cost_usd = 0.25;
  d.total_cost_usd = 0.5;
  d.machines_json = R"([{"label":"dc-ins_1-1"}])";
  d.finished_ms = 2000;
  ASSERT_TRUE(store_->UpdateDeploy(d).ok());
  auto got = store_->GetDeployOwned("dep_1", "usr_a");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->state, "succeeded");
  EXPECT_EQ(got->winner_machine_id, "m2");
  EXPECT_DOUBLE_EQ(got->loser_cost_usd, 0.25);
  EXPECT_EQ(*got->finished_ms, 2000);
  EXPECT_EQ(got->request_json, d.request_json);
  EXPECT_EQ(store_->GetDeployOwned("dep_1", "usr_b").error().code(), Code::kNotFound);
  EXPECT_FALSE(*store_->OpenDeployOf("ins_1"));
  auto list = store_->ListDeploys("usr_a", 10);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ(list->front().id, "dep_1") << "newest first";
  EXPECT_TRUE(store_->ListDeploys("usr_b", 10)->empty());

  // Per-machine outcomes.
  ASSERT_TRUE(store_->AddAttempt({"att_1", "usr_a", "ins_1", "vast", "o1", "o1", "m1", 10, std::nullopt, std::nullopt, "pending", ""}).ok());
  ASSERT_TRUE(store_->AddAttempt({"att_2", "usr_a", "ins_1", "vast", "o2", "o2", "m2", 10, std::nullopt, std::nullopt, "pending", ""}).ok());
  ASSERT_TRUE(store_->FinishMachineAttempt("vast", "m1", "cancelled", "lost the race", 20).ok());
  ASSERT_TRUE(store_->FinishMachineAttempt("vast", "m2", "ready", "", 21).ok());
  ASSERT_TRUE(store_->FinishMachineAttempt("vast", "m2", "failed", "late", 30).ok()) << "no-op once finished";
  auto a1 = store_->ListAttempts("vast", "o1");
  EXPECT_EQ(a1->at(0).outcome, "cancelled");
  EXPECT_EQ(a1->at(0).failure_reason, "lost the race");
  auto a2 = store_->ListAttempts("vast", "o2");
  EXPECT_EQ(a2->at(0).outcome, "ready");
  EXPECT_EQ(*a2->at(0).ready_at, 21);
}

TEST_P(StoreConformance, CredentialsArePerOwnerAndProvider) {
  ASSERT_TRUE(store_->PutCredential({"usr_a", "vast", "sealed-1", "...abcd", 10}).ok());
  ASSERT_TRUE(store_->PutCredential({"usr_a", "runpod", "sealed-2", "...efgh", 11}).ok());
  ASSERT_TRUE(store_->PutCredential({"usr_b", "vast", "sealed-3", "...ijkl", 12}).ok());
  ASSERT_TRUE(store_->PutCredential({"usr_a", "vast", "sealed-4", "...mnop", 13}).ok()) << "replaces";
  Reopen();
  EXPECT_EQ(store_->GetCredential("usr_a", "vast")->sealed, "sealed-4");
  EXPECT_EQ(store_->GetCredential("usr_b", "vast")->sealed, "sealed-3");
  EXPECT_EQ(store_->GetCredential("usr_b", "runpod").error().code(), Code::kNotFound);
  auto mine = store_->ListCredentials("usr_a");
  ASSERT_EQ(mine->size(), 2u);
  EXPECT_EQ(mine->front().provider, "runpod");
  EXPECT_EQ(store_->ListAllCredentials()->size(), 3u);
  ASSERT_TRUE(store_->DeleteCredential("usr_a", "vast").ok());
  EXPECT_EQ(store_->DeleteCredential("usr_a", "vast").code(), Code::kNotFound);
  EXPECT_EQ(store_->ListCredentials("usr_a")->size(), 1u);
}

MarketSnapshot Sample(int64_t t, const std::string& provider, const std::string& gpu, double min,
                      std::optional<double> spot = std::nullopt) {
  return MarketSnapshot{t, provider, gpu, 24, min, min * 1.5, min * 2, 3, 5, 0.97, spot};
}

TEST_P(StoreConformance, MarketSnapshotsQueryLatestAndRetention) {
  ASSERT_TRUE(store_->AddMarketSnapshots({Sample(100, "vast", "RTX 4090", 0.31, 0.125),
                                          Sample(100, "vast", "A100 SXM4", 1.1),
                                          Sample(100, "runpod", "RTX 4090", 0.44),
                                          Sample(200, "vast", "RTX 4090", 0.33, 0.15),
                                          Sample(200, "vast", "A100 SXM4", 1.2),
                                          Sample(200, "runpod", "RTX 4090", 0.42),
                                          Sample(300, "vast", "RTX 4090", 0.35)})
                  .ok());
  EXPECT_TRUE(store_->AddMarketSnapshots({}).ok());
  Reopen();

  auto all = store_->ListMarketSnapshots({});
  ASSERT_TRUE(all) << all.error().ToString();
  ASSERT_EQ(all->size(), 7u);
  EXPECT_EQ(all->front().sampled_at, 100);  // oldest first
  EXPECT_EQ(all->back().sampled_at, 300);
  const MarketSnapshot& first = all->front();  // (100, runpod, RTX 4090): provider order within a time
  EXPECT_EQ(first.provider, "runpod");
  EXPECT_EQ(first.gpu, "RTX 4090");
  EXPECT_DOUBLE_EQ(first.min_price, 0.44);
  EXPECT_DOUBLE_EQ(first.avg_price, 0.66);
  EXPECT_DOUBLE_EQ(first.max_price, 0.88);
  EXPECT_DOUBLE_EQ(first.vram_gb, 24);
  EXPECT_EQ(first.offers, 3);
  EXPECT_EQ(first.available_gpus, 5);
  EXPECT_DOUBLE_EQ(first.avg_reliability, 0.97);
  EXPECT_FALSE(first.spot_min_price.has_value());
  EXPECT_DOUBLE_EQ(*(*all)[2].spot_min_price, 0.125);  // (100, vast, RTX 4090)

  auto vast4090 = store_->ListMarketSnapshots({.gpu = "RTX 4090", .provider = "vast"});
  ASSERT_EQ(vast4090->size(), 3u);
  EXPECT_DOUBLE_EQ((*vast4090)[1].min_price, 0.33);
  auto window = store_->ListMarketSnapshots({.since = 200, .until = 300});
  EXPECT_EQ(window->size(), 4u) << "since and until are inclusive";
  auto newest2 = store_->ListMarketSnapshots({.gpu = "RTX 4090", .limit = 2});
  ASSERT_EQ(newest2->size(), 2u);
  EXPECT_EQ((*newest2)[0].sampled_at, 200);  // the newest two, oldest first
  EXPECT_EQ((*newest2)[0].provider, "vast");
  EXPECT_EQ((*newest2)[1].sampled_at, 300);
  EXPECT_TRUE(store_->ListMarketSnapshots({.gpu = "H100"})->empty());

  // Same (provider, gpu, time) replaces.
  ASSERT_TRUE(store_->AddMarketSnapshots({Sample(300, "vast", "RTX 4090", 0.30, 0.1)}).ok());
  auto replaced = store_->ListMarketSnapshots({.since = 300});
  ASSERT_EQ(replaced->size(), 1u);
  EXPECT_DOUBLE_EQ(replaced->front().min_price, 0.30);
  EXPECT_DOUBLE_EQ(*replaced->front().spot_min_price, 0.1);

  auto latest = store_->LatestMarketSnapshots(INT64_MAX);
  ASSERT_TRUE(latest) << latest.error().ToString();
  ASSERT_EQ(latest->size(), 3u);  // ordered by gpu, provider
  EXPECT_EQ((*latest)[0].gpu, "A100 SXM4");
  EXPECT_EQ((*latest)[0].sampled_at, 200);
  EXPECT_EQ((*latest)[1].provider, "runpod");
  EXPECT_EQ((*latest)[1].sampled_at, 200);
  EXPECT_EQ((*latest)[2].provider, "vast");
  EXPECT_EQ((*latest)[2].sampled_at, 300);
  auto earlier = store_->LatestMarketSnapshots(199);
  ASSERT_EQ(earlier->size(), 3u);
  for (const auto& m : *earlier) EXPECT_EQ(m.sampled_at, 100);
  EXPECT_TRUE(store_->LatestMarketSnapshots(99)->empty());

  auto deleted = store_->DeleteMarketSnapshotsBefore(200);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(*deleted, 3);
  EXPECT_EQ(*store_->DeleteMarketSnapshotsBefore(200), 0);
  auto kept = store_->ListMarketSnapshots({});
  ASSERT_EQ(kept->size(), 4u);
  for (const auto& m : *kept) EXPECT_GE(m.sampled_at, 200);
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

TEST(OpenDb, ClearErrors) {
  auto r = OpenDb("mysql://x");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("sqlite://"), std::string::npos);
  auto pg = OpenDb("postgresql://u:secret@127.0.0.1:1/db");
  ASSERT_FALSE(pg);
  EXPECT_EQ(pg.error().code(), Code::kUnavailable);
  EXPECT_EQ(pg.error().message().find("secret"), std::string::npos) << "password leaked into an error";
  testing::TempDir dir;
  std::ofstream(dir / "junk.db") << std::string(8192, 'x');
  auto junk = OpenDb("sqlite://" + dir / "junk.db");
  ASSERT_FALSE(junk);
  EXPECT_NE(junk.error().message().find("junk.db"), std::string::npos);
  EXPECT_EQ(RedactUrl("postgresql://u:pw@h/db"), "postgresql://u:***@h/db");
}

}  // namespace
}  // namespace dumont::store
