#include "s3torch/aws_endpoint.h"

#include "s3torch/errors.h"
#include "s3torch/runtime.h"

#include <aws/common/json.h>
#include <aws/s3/s3_endpoint_resolver.h>
#include <aws/sdkutils/endpoints_rule_engine.h>

#include <pthread.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

namespace s3torch {

namespace {

// The rules, parsed once per process (about 1 ms) and never released: plain memory, which a
// fork()ed child inherits intact.
aws_endpoints_rule_engine *rules() {
    static aws_endpoints_rule_engine *engine = [] {
        init_crt_libraries();
        aws_endpoints_rule_engine *e = aws_s3_endpoint_resolver_new(aws_default_allocator());
        if (!e) throw error_from_crt(aws_last_error(), {"ResolveEndpoint", "", ""});
        return e;
    }();
    return engine;
}

aws_byte_cursor cursor(const std::string &s) { return aws_byte_cursor_from_array(s.data(), s.size()); }
std::string str(aws_byte_cursor c) { return std::string(reinterpret_cast<const char *>(c.ptr), c.len); }

std::string json_string(const aws_json_value *object, const char *key) {
    const aws_json_value *v = object ? aws_json_value_get_from_object_c_str(object, key) : nullptr;
    aws_byte_cursor c;
    if (!v || aws_json_value_get_string(v, &c)) return {};
    return str(c);
}

// The first auth scheme of the endpoint's properties that s3torch signs with.
Signing signing_of(aws_byte_cursor properties, const std::string &region) {
    Signing s;
    s.name = "s3";
    s.region = region;
    std::unique_ptr<aws_json_value, void (*)(aws_json_value *)> json(
        aws_json_value_new_from_string(aws_default_allocator(), properties), aws_json_value_destroy);
    const aws_json_value *schemes = json ? aws_json_value_get_from_object_c_str(json.get(), "authSchemes") : nullptr;
    const size_t n = schemes && aws_json_value_is_array(schemes) ? aws_json_get_array_size(schemes) : 0;
    for (size_t i = 0; i < n; ++i) {
        const aws_json_value *scheme = aws_json_get_array_element(schemes, i);
        const std::string name = json_string(scheme, "name");
        const std::string signing_name = json_string(scheme, "signingName");
        if (!signing_name.empty()) s.name = signing_name;
        if (name == "sigv4" || name == "sigv4-s3express") {
            s.algorithm = name == "sigv4" ? SigningAlgorithm::V4 : SigningAlgorithm::S3Express;
            const std::string r = json_string(scheme, "signingRegion");
            if (!r.empty()) s.region = r;
            return s;
        }
        if (name == "sigv4a") {
            s.algorithm = SigningAlgorithm::V4A;
            const aws_json_value *set = aws_json_value_get_from_object_c_str(scheme, "signingRegionSet");
            aws_byte_cursor first;
            s.region = "*";
            if (set && aws_json_get_array_size(set) == 1 &&
                aws_json_value_get_string(aws_json_get_array_element(set, 0), &first) == AWS_OP_SUCCESS)
                s.region = str(first);
            return s;
        }
    }
    return s;
}

ResolvedEndpoint resolve_uncached(const std::string &region, const std::string &bucket, const AwsEndpointSettings &st,
                                  const std::string &endpoint_url, bool force_path_style) {
    aws_allocator *alloc = aws_default_allocator();
    std::unique_ptr<aws_endpoints_request_context, void (*)(aws_endpoints_request_context *)> ctx(
        aws_endpoints_request_context_new(alloc),
        [](aws_endpoints_request_context *c) { aws_endpoints_request_context_release(c); });
    if (!ctx) throw error_from_crt(aws_last_error(), {"ResolveEndpoint", bucket, ""});
    auto add = [&](const char *name, const std::string &value) {
        if (aws_endpoints_request_context_add_string(alloc, ctx.get(), aws_byte_cursor_from_c_str(name), cursor(value)))
            throw error_from_crt(aws_last_error(), {"ResolveEndpoint", bucket, ""});
    };
    auto flag = [&](const char *name, bool value) {
        if (aws_endpoints_request_context_add_boolean(alloc, ctx.get(), aws_byte_cursor_from_c_str(name), value))
            throw error_from_crt(aws_last_error(), {"ResolveEndpoint", bucket, ""});
    };
    add("Region", region);
    if (!bucket.empty()) add("Bucket", bucket);
    if (!endpoint_url.empty()) add("Endpoint", endpoint_url);
    flag("UseFIPS", st.fips);
    flag("UseDualStack", st.dualstack);
    flag("Accelerate", st.accelerate);
    flag("ForcePathStyle", force_path_style);
    flag("UseArnRegion", st.use_arn_region);
    flag("DisableMultiRegionAccessPoints", st.disable_mrap);
    // Regional endpoints in us-east-1 too (s3.us-east-1.amazonaws.com), as AWS recommends and the
    // CRT's own clients do; boto3's "legacy" default names the global s3.amazonaws.com.
    flag("UseGlobalEndpoint", false);

    aws_endpoints_resolved_endpoint *raw = nullptr;
    if (aws_endpoints_rule_engine_resolve(rules(), ctx.get(), &raw))
        throw error_from_crt(aws_last_error(), {"ResolveEndpoint", bucket, ""});
    std::unique_ptr<aws_endpoints_resolved_endpoint, void (*)(aws_endpoints_resolved_endpoint *)> resolved(
        raw, [](aws_endpoints_resolved_endpoint *e) { aws_endpoints_resolved_endpoint_release(e); });
    const std::string where =
        bucket.empty() ? "region '" + region + "'" : "'" + bucket + "' in region '" + region + "'";
    if (aws_endpoints_resolved_endpoint_get_type(raw) == AWS_ENDPOINTS_RESOLVED_ERROR) {
        aws_byte_cursor why;
        AWS_ZERO_STRUCT(why);
        aws_endpoints_resolved_endpoint_get_error(raw, &why);
        throw_invalid("no S3 endpoint for " + where + ": " + str(why) + " (AWS's endpoint rules)");
    }
    aws_byte_cursor url;
    aws_byte_cursor properties;
    AWS_ZERO_STRUCT(url);
    AWS_ZERO_STRUCT(properties);
    aws_endpoints_resolved_endpoint_get_url(raw, &url);
    aws_endpoints_resolved_endpoint_get_properties(raw, &properties);
    ResolvedEndpoint out;
    out.url = str(url);
    while (!out.url.empty() && out.url.back() == '/') out.url.pop_back();
    out.signing = signing_of(properties, region);
    return out;
}

// What the rules answered, by everything they were asked.
struct Resolutions {
    using Key = std::tuple<std::string, std::string, std::string, int>;
    std::mutex mu;
    std::map<Key, ResolvedEndpoint> map;
};

constexpr size_t kMaxResolutions = 4096;

Resolutions &resolutions() {
    // Leaked, like the rules; the lock is held across fork() so a child never inherits it taken.
    static Resolutions *r = [] {
        auto *made = new Resolutions();
        pthread_atfork([] { resolutions().mu.lock(); }, [] { resolutions().mu.unlock(); },
                       [] { resolutions().mu.unlock(); });
        return made;
    }();
    return *r;
}

}  // namespace

bool is_arn(const std::string &bucket) { return bucket.rfind("arn:", 0) == 0; }

ResolvedEndpoint resolve_aws_endpoint(const std::string &region, const std::string &bucket,
                                      const AwsEndpointSettings &st, const std::string &endpoint_url,
                                      bool force_path_style) {
    const int flags = st.fips | st.dualstack << 1 | st.accelerate << 2 | st.use_arn_region << 3 | st.disable_mrap << 4 |
                      force_path_style << 5;
    Resolutions::Key key{region, bucket, endpoint_url, flags};
    Resolutions &seen = resolutions();
    {
        std::lock_guard<std::mutex> lock(seen.mu);
        auto it = seen.map.find(key);
        if (it != seen.map.end()) return it->second;
    }
    ResolvedEndpoint r = resolve_uncached(region, bucket, st, endpoint_url, force_path_style);
    std::lock_guard<std::mutex> lock(seen.mu);
    if (seen.map.size() >= kMaxResolutions) seen.map.clear();  // a process touching that many buckets starts over
    seen.map.emplace(std::move(key), r);
    return r;
}

}  // namespace s3torch
