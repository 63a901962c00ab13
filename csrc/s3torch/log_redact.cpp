#include "s3torch/log_redact.h"

#include <aws/common/logging.h>

#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <vector>

namespace s3torch {

namespace {

// Headers and query parameters whose values are secrets: the session token, an SSE-C key.
// Matched whole (a name followed by ':' or '='), so "...-customer-key-MD5" is kept.
const char *const kSecretNames[] = {"x-amz-security-token", "x-amz-server-side-encryption-customer-key",
                                    "x-amz-copy-source-server-side-encryption-customer-key"};

// The length of the secret name that starts at `pos` and is followed by ':' or '='; 0 if none.
size_t secret_name_at(const std::string &text, size_t pos) {
    for (const char *name : kSecretNames) {
        size_t n = 0;
        while (name[n] && pos + n < text.size() &&
               std::tolower(static_cast<unsigned char>(text[pos + n])) == static_cast<unsigned char>(name[n]))
            ++n;
        if (name[n] == 0 && pos + n < text.size() && (text[pos + n] == ':' || text[pos + n] == '=')) return n;
    }
    return 0;
}

// The logger's p_impl is the inner (standard) logger; the CRT calls these from any thread,
// and the inner logger serializes its own writes.
int redacting_log(aws_logger *logger, aws_log_level level, aws_log_subject_t subject, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    va_list again;
    va_copy(again, ap);
    int n = std::vsnprintf(nullptr, 0, format, ap);
    va_end(ap);
    std::vector<char> buf(n > 0 ? static_cast<size_t>(n) + 1 : 1, '\0');
    if (n > 0) std::vsnprintf(buf.data(), buf.size(), format, again);
    va_end(again);
    std::string line = redact_log_text(std::string(buf.data()));
    auto *inner = static_cast<aws_logger *>(logger->p_impl);
    return inner->vtable->log(inner, level, subject, "%s", line.c_str());
}

aws_log_level redacting_get_level(aws_logger *logger, aws_log_subject_t subject) {
    auto *inner = static_cast<aws_logger *>(logger->p_impl);
    return inner->vtable->get_log_level(inner, subject);
}

void redacting_clean_up(aws_logger *logger) {
    auto *inner = static_cast<aws_logger *>(logger->p_impl);
    inner->vtable->clean_up(inner);
}

int redacting_set_level(aws_logger *logger, aws_log_level level) {
    auto *inner = static_cast<aws_logger *>(logger->p_impl);
    return inner->vtable->set_log_level ? inner->vtable->set_log_level(inner, level) : AWS_OP_ERR;
}

aws_logger_vtable g_redacting_vtable = {redacting_log, redacting_get_level, redacting_clean_up, redacting_set_level};

}  // namespace

std::string redact_log_text(const std::string &text) {
    std::string out;
    out.reserve(text.size());
    size_t i = 0;
    while (i < text.size()) {
        const size_t n = secret_name_at(text, i);
        if (n == 0) {
            out += text[i++];
            continue;
        }
        size_t j = i + n;
        out.append(text, i, n);
        out += text[j++];  // ':' or '='
        while (j < text.size() && text[j] == ' ') out += text[j++];
        size_t end = j;
        while (end < text.size() && text[end] != '\n' && text[end] != '\r' && text[end] != '&' && text[end] != ' ' &&
               text[end] != ',' && text[end] != ';' && text[end] != '"')
            ++end;
        if (end > j) out += "***";
        i = end;
    }
    return out;
}

void init_redacting_logger(aws_logger *logger, aws_logger *inner, aws_allocator *alloc) {
    logger->vtable = &g_redacting_vtable;
    logger->allocator = alloc;
    logger->p_impl = inner;
}

}  // namespace s3torch
