// The S3 backend: a repository in a bucket (under an optional key prefix) of any S3-compatible server
// (AWS, Ceph RGW, MinIO, ...), over libcurl with SigV4 signing. See backend.h for the contract.
//
// Requests: PutObject (objects up to multipart_threshold in one request, larger ones as a multipart
// upload of part_size parts; the object only appears when CompleteMultipartUpload succeeds, so Save
// stays atomic), GetObject with a Range header for ranged loads, HeadObject for Stat, DeleteObject
// for Remove (404 counts as success), ListObjectsV2 with continuation tokens for List, HeadBucket and
// CreateBucket for Create.
//
// Integrity: every request carries x-amz-content-sha256 = hex SHA-256 of its body, which is part of
// the SigV4 signature and which S3 and RGW verify against the body received (a mismatch is refused),
// so what is stored is what was sent. Reads are only checked for exact lengths here: the repository
// layer authenticates every blob it reads with AES-GCM, which catches any damaged byte.
//
// Errors: connection failures and 5xx are Unavailable, 429 and 503 SlowDown ResourceExhausted,
// timeouts DeadlineExceeded (all retryable; wrap the backend in WithRetries from backend_retry.h);
// 403 is PermissionDenied carrying S3's error code and message; 404 NotFound naming the object; a
// body shorter than the range asked for is Corruption.
//
// Thread-safe: operations share a pool of up to connections() libcurl handles (and their kept-alive
// connections); more concurrent operations than that still work, with short-lived handles.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "snapshot/backend.h"

namespace dumont::snapshot {

struct S3Options {
  std::string endpoint;  // "http://127.0.0.1:7480" or "https://s3.eu-west-1.amazonaws.com": scheme, host, port
  std::string bucket;
  std::string prefix;  // key prefix without leading or trailing '/', may be empty ("" or "team/repo1")
  std::string region = "us-east-1";
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // optional (AWS_SESSION_TOKEN), sent as x-amz-security-token

  // Path style (http://host/bucket/key) is the default: it works with every server and with IP
  // endpoints. Virtual-host style (http://bucket.host/key) is what AWS prefers for new buckets; it is
  // implemented but NOT covered by the tests, because the loopback RGW of the test harness cannot be
  // reached as bucket.127.0.0.1 (no wildcard DNS here).
  bool virtual_host_style = false;

  // Create() makes the bucket when HEAD says it is missing. Off: a missing bucket is NotFound.
  bool create_bucket = true;

  int connections = 32;  // Connections(): concurrent operations the caller may run

  // Objects larger than multipart_threshold are uploaded in parts of part_size bytes (the last one
  // smaller). 64 MiB / 64 MiB: packs (~16-64 MiB) go in one PUT, which is one round trip and the
  // cheapest for S3 request pricing; bigger objects are split so a failure repeats at most one part's
  // worth of sending and memory stays bounded on the server. S3 limits: parts >= 5 MiB (except the
  // last), <= 10000 parts, single PUT <= 5 GiB; part_size is raised automatically to stay under 10000
  // parts, and multipart_threshold is capped to 5 GiB.
  int64_t multipart_threshold = 64ll << 20;
  int64_t part_size = 64ll << 20;

  // Timeouts: connecting, and a transfer that moves less than low_speed_bytes per second for
  // low_speed_time is abandoned (DeadlineExceeded). There is no overall deadline: big objects on slow
  // links must be able to finish. request_timeout (0 = none) caps every request if you want one.
  int64_t connect_timeout_ms = 10000;
  int64_t low_speed_bytes = 1024;
  int64_t low_speed_time_s = 60;
  int64_t request_timeout_ms = 0;

  std::string ca_bundle;  // PEM file of trusted CAs for https (empty: libcurl's default)
  bool verify_tls = true;
};

// The repository location as shown in messages: "s3:http://host:port/bucket/prefix" (no secrets).
std::string S3LocationString(const S3Options& o);

// Parses "s3:http(s)://host[:port]/bucket[/prefix]" and reads the credentials from the environment:
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required; the error names the one missing),
// AWS_DEFAULT_REGION (else AWS_REGION, else "us-east-1"), AWS_SESSION_TOKEN (optional) and
// AWS_CA_BUNDLE (optional, used for https endpoints only). `getenv` is injectable for tests.
using EnvLookup = std::function<const char*(const char*)>;
Result<S3Options> ParseS3Location(std::string_view location);
Result<S3Options> ParseS3Location(std::string_view location, const EnvLookup& getenv);

std::unique_ptr<Backend> NewS3Backend(const S3Options& options);

}  // namespace dumont::snapshot
