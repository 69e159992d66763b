// OpenS3Backend: the s3: location form -> S3 backend wrapped in retries (backoff with jitter).
#include "snapshot/backend.h"
#include "snapshot/backend_retry.h"
#include "snapshot/backend_s3.h"

namespace dumont::snapshot {

Result<std::unique_ptr<Backend>> OpenS3Backend(const std::string& location) {
  auto opts = ParseS3Location(location);
  if (!opts) return Err(opts.error());
  return WithRetries(NewS3Backend(*opts));
}

}  // namespace dumont::snapshot
