// Credentials carried from one runtime of a process to the next, across fork().
//
// The runtime is torn down before every fork() (its threads would not exist in the child), and
// with it the shared providers and their caches: the parent after the fork and every child (each
// DataLoader worker, every epoch, unless the workers are persistent) fetched credentials again,
// under EKS IRSA an STS call each, against a quota the account shares. boto3's credentials are
// plain memory and live on in both. Now each shared provider remembers the last credentials it
// handed out; at the runtime's teardown (and when a provider leaves the cache of 8) they are
// kept under the provider's key (shared_providers.h: the settings, the environment and the files
// they came from), and the next provider of that key, in the parent or in a child whose key is
// still the same, answers with them while they are as fresh as the CRT's cache would hold them
// (until 5 minutes before they expire, and for at most kCredentialsRefreshMs after they were
// fetched), then fetches as before. Credentials S3 refused are forgotten: neither handed out
// again nor carried.
//
// A child whose runtime was abandoned (a fork with transfers in flight) carries nothing: its
// parent's providers are never touched there. Any thread.
#pragma once

#include <memory>
#include <string>

struct aws_credentials_provider;

namespace s3torch {

// What one provider last handed out. Shared by the provider and its cache entry.
class RememberedCredentials;

// `source` (the caller's reference is taken) wrapped in a provider that remembers what it hands
// out, starting from what a runtime before carried under `key` while that is fresh; a new
// reference, or nullptr when it cannot be made (`source` released). `*memory` is set to its memory.
aws_credentials_provider *remembering(aws_credentials_provider *source, const std::string &key,
                                      std::shared_ptr<RememberedCredentials> *memory);

// At a runtime's teardown, or when its provider leaves the cache: keep what `memory` holds,
// while fresh, for the next provider of its key.
void carry(const RememberedCredentials &memory);

// S3 refused what `memory`'s provider signed with: it hands out what its source fetches from now
// on, never carried credentials, and has nothing to carry (its cache entry is dropped too).
void forget_refused(RememberedCredentials &memory);

}  // namespace s3torch
