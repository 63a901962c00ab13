// The AWS shared config file (~/.aws/config, else $AWS_CONFIG_FILE) as boto3 reads it, for the
// settings s3torch takes from it besides credentials (which the CRT's providers read
// themselves): a profile's endpoint, addressing style, FIPS and dual-stack flags, region, CA
// bundle, upload checksum setting, and whether it signs in through SSO.
#pragma once

#include <string>

struct aws_profile;
struct aws_profile_collection;

namespace s3torch {

class SharedConfig {
  public:
    // The profile `profile` names, else $AWS_DEFAULT_PROFILE, else $AWS_PROFILE, else "default"
    // (profile_override). A missing or unreadable file, or a profile it lacks, reads as empty:
    // every lookup returns "".
    explicit SharedConfig(const std::string &profile);
    ~SharedConfig();
    SharedConfig(const SharedConfig &) = delete;
    SharedConfig &operator=(const SharedConfig &) = delete;

    const std::string &profile_name() const { return name_; }
    const std::string &path() const { return path_; }
    // The credentials file the CRT reads beside it (~/.aws/credentials, $AWS_SHARED_CREDENTIALS_FILE).
    const std::string &credentials_path() const { return credentials_path_; }
    // "profile 'NAME' of PATH", for messages that say where a setting came from.
    std::string where() const { return "profile '" + name_ + "' of " + path_; }
    // A property of the profile: get("endpoint_url"); "" when absent.
    std::string get(const char *property) const;
    // A sub-property of a nested one: get("s3", "addressing_style").
    std::string get(const char *property, const char *sub) const;
    // A service's setting in the [services NAME] section the profile's `services` names:
    // service("s3", "endpoint_url").
    std::string service(const char *service, const char *sub) const;
    // A boolean property as boto3 reads it: "true", in any case.
    bool flag(const char *property) const;

  private:
    aws_profile_collection *profiles_ = nullptr;
    const aws_profile *profile_ = nullptr;
    std::string name_, path_, credentials_path_;
};

// The profile name to hand the CRT, as boto3 picks a profile: the one given, else
// $AWS_DEFAULT_PROFILE (botocore reads it before $AWS_PROFILE), else "" (the CRT's own choice:
// $AWS_PROFILE, else "default").
std::string profile_override(const std::string &given);

// Where the profile in use was named, for messages: "$AWS_DEFAULT_PROFILE" or "$AWS_PROFILE",
// "" when given or the default.
std::string profile_source(const std::string &given);

// "true" in any case, as boto3 reads a boolean setting.
bool is_true(const std::string &value);

}  // namespace s3torch
