// Fuzz target: the parsers of server response bodies. Every input must come back as a value
// or a typed S3Error, never a crash, a sanitizer report or another exception.
//
// Built with -DS3TORCH_FUZZ=ON into build/fuzz (tests/unit/test_fuzz_native.py does it):
// with clang, a libFuzzer binary (ASan + UBSan); with gcc, the same target under
// -fsanitize=address,undefined linked to driver.cpp, which runs the seeds and random
// mutations of them for a bounded time.
#include "s3torch/errors.h"
#include "s3torch/log_redact.h"
#include "s3torch/objects.h"
#include "s3torch/xml.h"

#include <aws/common/encoding.h>
#include <aws/common/error.h>
#include <aws/s3/s3.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    aws_s3_library_init(aws_default_allocator());  // error names, as the extension has them
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string body(reinterpret_cast<const char *>(data), size);
    const s3torch::ErrorContext ctx{"ListObjectsV2", "bucket", "prefix/"};

    // The error document of a failed request, with each status class.
    for (int status : {0, 200, 301, 403, 404, 500, 503}) {
        s3torch::S3Error err =
            s3torch::error_from_result(AWS_ERROR_S3_INVALID_RESPONSE_STATUS, status, body, "req-id", "GetObject", ctx);
        if (std::string(err.what()).empty()) std::abort();
    }
    s3torch::xml_first_text(body, "Code");
    size_t elements = 0;
    s3torch::xml_walk(body, [&](const std::string &path, const std::string &text) {
        if (path.empty()) std::abort();  // every element has a name
        aws_utf8_decoder_options none{};
        if (aws_decode_utf8(aws_byte_cursor_from_array(text.data(), text.size()), &none) != AWS_OP_SUCCESS)
            std::abort();  // a visitor only ever sees UTF-8
        ++elements;
    });

    // Outside text shown: printable ASCII and valid UTF-8 of no control character, whatever came in.
    const std::string shown = s3torch::printable(body);
    aws_utf8_decoder_options none{};
    if (aws_decode_utf8(aws_byte_cursor_from_array(shown.data(), shown.size()), &none) != AWS_OP_SUCCESS) std::abort();
    for (unsigned char c : shown)
        if (c < 0x20 || c == 0x7F) std::abort();

    // A list page: a value or a typed S3Error.
    try {
        s3torch::ListPage page = s3torch::parse_list_body(body, ctx);
        for (const auto &o : page.objects) {
            if (o.size > static_cast<uint64_t>(INT64_MAX)) std::abort();  // sizes are validated
        }
    } catch (const s3torch::S3Error &e) {
        if (e.kind != s3torch::ErrorKind::Generic) std::abort();
    }

    // A GetObjectAttributes ObjectParts page: sizes in part order, bounded, or a typed S3Error.
    try {
        std::vector<uint64_t> sizes{5 << 20};  // a page after a first one of one part
        s3torch::parse_object_parts_body(body, ctx, sizes);
        if (sizes.size() > s3torch::kMaxObjectParts + 1) std::abort();
        for (uint64_t v : sizes)
            if (v > static_cast<uint64_t>(INT64_MAX)) std::abort();
    } catch (const s3torch::S3Error &e) {
        if (e.kind != s3torch::ErrorKind::Generic) std::abort();
    }

    // A DeleteObjects answer: the keys asked for that it does not say are gone, each once, or a
    // typed S3Error; whatever keys the answer names.
    try {
        const std::vector<std::string> asked{"a", "b&c", "k0", "k0"};
        std::vector<s3torch::S3Error> left = s3torch::parse_delete_body(body, asked, "req-id", ctx);
        if (left.size() > 3) std::abort();
        for (const auto &e : left)
            if (e.context.key != "a" && e.context.key != "b&c" && e.context.key != "k0") std::abort();
    } catch (const s3torch::S3Error &e) {
        if (e.kind != s3torch::ErrorKind::Generic) std::abort();
    }

    // Log lines carry server-sent text: the redaction pass must take any bytes.
    std::string redacted = s3torch::redact_log_text(body);
    if (redacted.size() > body.size() + 3 * (body.size() / 20 + 1)) std::abort();

    uint64_t n = 0;
    if (s3torch::parse_byte_count(body, n) && n > static_cast<uint64_t>(INT64_MAX)) std::abort();
    return 0;
}
