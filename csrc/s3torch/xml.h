// Minimal XML helpers over aws-c-common's parser, for S3 response bodies
// (error documents, ListObjectsV2 results), and the escaping of text sent in a request body.
#pragma once

#include <functional>
#include <string>

struct aws_xml_node;

namespace s3torch {

// Unescaped text of the first element named `name` anywhere in `doc`; "" if none or not XML.
std::string xml_first_text(const std::string &doc, const char *name);

// Walk every element of `doc` depth-first. The visitor gets the element's path of names
// ("ListBucketResult/Contents/Key") and its unescaped text (empty for elements with children).
// Returns false if the document does not parse, nests elements deeper than 16 (no S3 answer
// comes near), or a text in it is not UTF-8 (the visitor never sees one). A self-closing root
// (<DeleteResult/>) is a document of no elements. `root`, if given, gets the root element's
// name ("" when the walk fails).
bool xml_walk(const std::string &doc,
              const std::function<void(const std::string &path, const std::string &text)> &visit,
              std::string *root = nullptr);

// Append `text` to `out` as XML character data (&amp; &lt; &gt; &quot; &apos;, and tab, line
// feed and carriage return as character references, which a parser keeps as they are where it
// would normalize them raw). False, `out` unchanged, for a text XML 1.0 cannot hold: not UTF-8,
// another C0 control character, U+FFFE or U+FFFF. S3 keys may hold those; a request that names
// such a key must carry it elsewhere (the URL).
bool xml_escape(const std::string &text, std::string &out);

}  // namespace s3torch
