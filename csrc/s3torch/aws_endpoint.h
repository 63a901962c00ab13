// AWS's endpoint for a bucket, by AWS's own S3 endpoint rules: the ruleset and partitions
// aws-c-s3 carries, the ones boto3 and every AWS SDK evaluate. They name the URL and how to
// sign for it:
// - a bucket's virtual host, or its path when the name cannot be a host (dots under TLS);
// - every partition: aws, aws-cn (.amazonaws.com.cn), aws-us-gov, the isolated regions, the
//   European Sovereign Cloud;
// - FIPS, dual-stack (IPv6) and Transfer Acceleration hosts;
// - access point ARNs (their own region and account in the host, signed for that region),
//   Object Lambda access points (signed as s3-object-lambda), Multi-Region Access Points
//   (SigV4A), Outposts; directory buckets (S3 Express One Zone);
// - and what they refuse (an ARN of another partition, FIPS with acceleration...), in their
//   own words.
// request.cpp asks them for every bucket on AWS's endpoints, and for ARNs on any endpoint;
// plain bucket names on an endpoint the user names keep s3torch's own addressing there.
#pragma once

#include <string>

namespace s3torch {

// The settings boto3 reads for AWS's endpoints; resolve_config fills them in.
struct AwsEndpointSettings {
    bool fips = false;           // $AWS_USE_FIPS_ENDPOINT, the profile's use_fips_endpoint
    bool dualstack = false;      // $AWS_USE_DUALSTACK_ENDPOINT, use_dualstack_endpoint
    bool accelerate = false;     // the profile's s3 use_accelerate_endpoint
    bool use_arn_region = true;  // $AWS_S3_USE_ARN_REGION, s3_use_arn_region
    bool disable_mrap = false;   // $AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS
};

enum class SigningAlgorithm { V4, V4A, S3Express };

// How a request is signed; empty name and region: as the client signs (its region, "s3").
struct Signing {
    SigningAlgorithm algorithm = SigningAlgorithm::V4;
    std::string name;    // "s3", "s3-object-lambda", "s3-outposts", "s3express"
    std::string region;  // a region; "*" for SigV4A
};

struct ResolvedEndpoint {
    std::string url;  // scheme://authority[/path]: the bucket's root
    Signing signing;
};

// Whether `bucket` is an ARN ("arn:..."): an access point, an Object Lambda access point, a
// Multi-Region Access Point or an Outposts access point, never a bucket's name.
bool is_arn(const std::string &bucket);

// The endpoint for `bucket` ("" for the region's own) in `region`, with `endpoint_url` ("" for
// AWS's) and path-style addressing when `force_path_style`. Throws InvalidArgument with the
// rules' message for what they refuse. Results are remembered (the rules take tens of
// microseconds); any thread.
ResolvedEndpoint resolve_aws_endpoint(const std::string &region, const std::string &bucket,
                                      const AwsEndpointSettings &settings, const std::string &endpoint_url,
                                      bool force_path_style);

}  // namespace s3torch
