// Minimal XML helpers over aws-c-common's parser, for S3 response bodies
// (error documents, ListObjectsV2 results).
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
// comes near), or a text in it is not UTF-8 (the visitor never sees one).
bool xml_walk(const std::string &doc,
              const std::function<void(const std::string &path, const std::string &text)> &visit);

}  // namespace s3torch
