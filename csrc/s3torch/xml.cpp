#include "s3torch/xml.h"

#include <aws/common/byte_buf.h>
#include <aws/common/encoding.h>
#include <aws/common/xml_parser.h>

#include <cstring>
#include <vector>

namespace s3torch {

namespace {

// Deeper than any S3 document (ListBucketResult/Contents/Owner/ID is 4). Each level of a
// container is parsed again as a document of its own (on_node), so the parser's own depth
// limit never applies: without this one, a few KB of nested elements in an error body
// overflowed the stack (SIGSEGV), and each level copied the rest of the document.
constexpr size_t kMaxDepth = 16;

struct WalkState {
    const std::function<void(const std::string &, const std::string &)> *visit;
    std::vector<std::string> path;
    bool not_utf8 = false;  // a text was not UTF-8: the document is refused
    bool failed = false;    // too deep, or a container's body did not parse: refused too
    std::string root;       // the root element's name
};

std::string join(const std::vector<std::string> &parts) {
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) {
        if (i) out += '/';
        out += parts[i];
    }
    return out;
}

// A text handed to a visitor: UTF-8, as every S3 response is, so that it can become a Python
// str (a key, a message) without a UnicodeDecodeError where a typed error was due.
void visit_text(WalkState *st, const std::string &text) {
    aws_utf8_decoder_options none;
    AWS_ZERO_STRUCT(none);
    if (aws_decode_utf8(aws_byte_cursor_from_array(text.data(), text.size()), &none) != AWS_OP_SUCCESS) {
        st->not_utf8 = true;
        return;
    }
    (*st->visit)(join(st->path), text);
}

int on_node(struct aws_xml_node *node, void *user_data) {
    auto *st = static_cast<WalkState *>(user_data);
    if (st->failed) return AWS_OP_ERR;
    if (st->path.size() >= kMaxDepth) {
        st->failed = true;
        return aws_raise_error(AWS_ERROR_INVALID_XML);
    }
    aws_byte_cursor name = aws_xml_node_get_name(node);
    st->path.emplace_back(reinterpret_cast<const char *>(name.ptr), name.len);
    // aws_xml_node_as_body and aws_xml_node_traverse are mutually exclusive on a node, so
    // take the raw (still escaped) body: a leaf's raw body has no '<' (a '<' in text is
    // escaped as &lt;); a container's body is parsed again as a document of its children.
    aws_byte_cursor raw;
    AWS_ZERO_STRUCT(raw);
    if (aws_xml_node_as_body(node, &raw) == AWS_OP_SUCCESS) {
        if (raw.len == 0 || memchr(raw.ptr, '<', raw.len) == nullptr) {
            aws_byte_buf text;
            aws_byte_buf_init(&text, aws_default_allocator(), raw.len + 1);
            if (aws_byte_buf_append_unescaped_xml(aws_default_allocator(), raw, &text) == AWS_OP_SUCCESS) {
                visit_text(st, std::string(reinterpret_cast<const char *>(text.buffer), text.len));
            } else {
                visit_text(st, std::string(reinterpret_cast<const char *>(raw.ptr), raw.len));
            }
            aws_byte_buf_clean_up(&text);
        } else {
            (*st->visit)(join(st->path), std::string());
            std::string wrapped;
            wrapped.reserve(raw.len + 7);
            wrapped.append("<r>").append(reinterpret_cast<const char *>(raw.ptr), raw.len).append("</r>");
            aws_xml_parser_options opts;
            AWS_ZERO_STRUCT(opts);
            opts.doc = aws_byte_cursor_from_array(wrapped.data(), wrapped.size());
            opts.on_root_encountered = [](struct aws_xml_node *root, void *ud) -> int {
                return aws_xml_node_traverse(root, on_node, ud);
            };
            opts.user_data = st;
            if (aws_xml_parse(aws_default_allocator(), &opts) != AWS_OP_SUCCESS) st->failed = true;
        }
    } else {
        st->failed = true;
    }
    st->path.pop_back();
    return st->failed ? AWS_OP_ERR : AWS_OP_SUCCESS;
}

}  // namespace

bool xml_walk(const std::string &doc, const std::function<void(const std::string &, const std::string &)> &visit,
              std::string *root) {
    WalkState st{&visit, {}};
    aws_xml_parser_options opts;
    AWS_ZERO_STRUCT(opts);
    opts.doc = aws_byte_cursor_from_array(doc.data(), doc.size());
    opts.on_root_encountered = [](struct aws_xml_node *root, void *ud) -> int {
        auto *s = static_cast<WalkState *>(ud);
        aws_byte_cursor name = aws_xml_node_get_name(root);
        // A self-closing root (<DeleteResult/>): the parser keeps the '/' in its name, and it
        // has no children to traverse (traversing fails).
        const bool empty = name.len && name.ptr[name.len - 1] == '/';
        s->root.assign(reinterpret_cast<const char *>(name.ptr), name.len - (empty ? 1 : 0));
        if (empty) return AWS_OP_SUCCESS;
        s->path.push_back(s->root);
        int rc = aws_xml_node_traverse(root, on_node, ud);
        s->path.pop_back();
        return rc;
    };
    opts.user_data = &st;
    const bool ok = aws_xml_parse(aws_default_allocator(), &opts) == AWS_OP_SUCCESS && !st.not_utf8 && !st.failed;
    if (root) *root = ok ? st.root : std::string();
    return ok;
}

std::string xml_first_text(const std::string &doc, const char *name) {
    std::string found;
    bool done = false;
    std::string want = name;
    xml_walk(doc, [&](const std::string &path, const std::string &text) {
        if (done) return;
        size_t slash = path.rfind('/');
        std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
        if (leaf == want && !text.empty()) {
            found = text;
            done = true;
        }
    });
    return found;
}

bool xml_escape(const std::string &text, std::string &out) {
    aws_utf8_decoder_options none;
    AWS_ZERO_STRUCT(none);
    if (aws_decode_utf8(aws_byte_cursor_from_array(text.data(), text.size()), &none) != AWS_OP_SUCCESS) return false;
    std::string escaped;
    escaped.reserve(text.size() + 16);
    for (size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        switch (c) {
            case '&': escaped += "&amp;"; continue;
            case '<': escaped += "&lt;"; continue;
            case '>': escaped += "&gt;"; continue;
            case '"': escaped += "&quot;"; continue;
            case '\'': escaped += "&apos;"; continue;
            case '\t': escaped += "&#9;"; continue;
            case '\n': escaped += "&#10;"; continue;
            case '\r': escaped += "&#13;"; continue;
            default: break;
        }
        if (c < 0x20) return false;
        // U+FFFE and U+FFFF (EF BF BE, EF BF BF): not characters XML allows.
        if (c == 0xEF && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0xBF &&
            (static_cast<unsigned char>(text[i + 2]) & 0xFE) == 0xBE)
            return false;
        escaped += static_cast<char>(c);
    }
    out += escaped;
    return true;
}

}  // namespace s3torch
