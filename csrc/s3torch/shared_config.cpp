#include "s3torch/shared_config.h"

#include "s3torch/runtime.h"

#include <aws/common/string.h>
#include <aws/sdkutils/aws_profile.h>

#include <cctype>
#include <cstdlib>

namespace s3torch {

namespace {

std::string value_of(const aws_string *s) { return s ? std::string(aws_string_c_str(s)) : std::string(); }

const aws_profile_property *property_of(const aws_profile *profile, const char *name) {
    if (!profile) return nullptr;
    aws_string *key = aws_string_new_from_c_str(aws_default_allocator(), name);
    const aws_profile_property *p = aws_profile_get_property(profile, key);
    aws_string_destroy(key);
    return p;
}

std::string sub_property(const aws_profile_property *property, const char *sub) {
    if (!property) return "";
    aws_string *key = aws_string_new_from_c_str(aws_default_allocator(), sub);
    std::string out = value_of(aws_profile_property_get_sub_property(property, key));
    aws_string_destroy(key);
    return out;
}

std::string env(const char *name) {
    const char *v = std::getenv(name);
    return v ? v : "";
}

}  // namespace

bool is_true(const std::string &value) {
    std::string s(value);
    for (char &ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s == "true";
}

std::string profile_override(const std::string &given) { return given.empty() ? env("AWS_DEFAULT_PROFILE") : given; }

std::string profile_source(const std::string &given) {
    if (!given.empty()) return "";
    if (!env("AWS_DEFAULT_PROFILE").empty()) return "$AWS_DEFAULT_PROFILE";
    if (!env("AWS_PROFILE").empty()) return "$AWS_PROFILE";
    return "";
}

SharedConfig::SharedConfig(const std::string &profile) {
    init_crt_libraries();
    aws_allocator *alloc = aws_default_allocator();
    const std::string chosen = profile_override(profile);
    aws_byte_cursor given = aws_byte_cursor_from_array(chosen.data(), chosen.size());
    aws_string *name = aws_get_profile_name(alloc, chosen.empty() ? nullptr : &given);
    aws_string *path = aws_get_config_file_path(alloc, nullptr);
    aws_string *credentials = aws_get_credentials_file_path(alloc, nullptr);
    name_ = value_of(name);
    path_ = value_of(path);
    credentials_path_ = value_of(credentials);
    aws_string_destroy(credentials);
    if (name && path) profiles_ = aws_profile_collection_new_from_file(alloc, path, AWS_PST_CONFIG);
    if (profiles_) profile_ = aws_profile_collection_get_profile(profiles_, name);
    aws_string_destroy(name);
    aws_string_destroy(path);
}

SharedConfig::~SharedConfig() {
    if (profiles_) aws_profile_collection_destroy(profiles_);
}

std::string SharedConfig::get(const char *property) const {
    const aws_profile_property *p = property_of(profile_, property);
    return p ? value_of(aws_profile_property_get_value(p)) : "";
}

std::string SharedConfig::get(const char *property, const char *sub) const {
    return sub_property(property_of(profile_, property), sub);
}

std::string SharedConfig::service(const char *service, const char *sub) const {
    std::string section = get("services");
    if (section.empty() || !profiles_) return "";
    aws_string *key = aws_string_new_from_c_str(aws_default_allocator(), section.c_str());
    const aws_profile *services = aws_profile_collection_get_section(profiles_, AWS_PROFILE_SECTION_TYPE_SERVICES, key);
    aws_string_destroy(key);
    return sub_property(property_of(services, service), sub);
}

bool SharedConfig::flag(const char *property) const { return is_true(get(property)); }

}  // namespace s3torch
